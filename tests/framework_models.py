"""Small Keras and JAX models for the framework push tests, trained in seconds on two CPU cores.

keras and jax are imported inside the functions, so an entry point file that imports this module
for its JAX function (in a ``gateway push`` subprocess) does not pay for TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

#: Width of the sequence model's per-position features and of its pooled output.
SEQUENCE_FEATURES = 4
SEQUENCE_HIDDEN = 8


# ----------------------------------------------------------------------------- Keras


def train_keras_cnn(x_train: np.ndarray, y_train: np.ndarray, epochs: int = 5) -> Any:
    """A functional Keras CNN on the digits: input ``pixels`` float32 [N, 64], reshaped to 8x8x1; 10 logits."""
    import keras

    keras.utils.set_random_seed(0)
    pixels = keras.Input((64,), name="pixels")
    image = keras.layers.Reshape((8, 8, 1))(pixels)
    features = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    features = keras.layers.MaxPooling2D(2)(features)
    logits = keras.layers.Dense(10)(keras.layers.Flatten()(features))
    model = keras.Model(pixels, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def keras_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """The Keras model's own outputs for ``x`` (inference mode) as numpy."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def keras_lambda_model() -> Any:
    """A Keras model holding a Lambda layer (arbitrary Python code): safe mode refuses to load it."""
    import keras

    pixels = keras.Input((64,), name="pixels")
    doubled = keras.layers.Lambda(lambda t: t * 2.0)(pixels)
    return keras.Model(pixels, keras.layers.Dense(10)(doubled))


# ----------------------------------------------------------------------------- JAX


def mlp_logits(params: dict[str, Any], pixels: Any) -> Any:
    """The JAX MLP: relu(pixels @ w1 + b1) @ w2 + b2."""
    import jax

    return jax.nn.relu(pixels @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def train_jax_mlp(x_train: np.ndarray, y_train: np.ndarray, epochs: int = 20) -> dict[str, np.ndarray]:
    """Minibatch SGD with jax.grad on cross-entropy; returns the trained parameters as numpy arrays."""
    import jax
    import jax.numpy as jnp

    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    params = {
        "w1": jax.random.normal(key1, (64, 64)) * 0.2,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(key2, (64, 10)) * 0.2,
        "b2": jnp.zeros(10),
    }

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        log_probs = jax.nn.log_softmax(mlp_logits(p, x))
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))

    @jax.jit
    def step(p: dict[str, Any], x: Any, y: Any) -> dict[str, Any]:
        grads = jax.grad(loss)(p, x, y)
        updated: dict[str, Any] = jax.tree_util.tree_map(lambda w, g: w - 0.3 * g, p, grads)
        return updated

    rng = np.random.default_rng(0)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - 63, 64):
            index = order[start : start + 64]
            params = step(params, x[index], y[index])
    return {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}


def sequence_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters of :func:`masked_encoder`."""
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.standard_normal((SEQUENCE_FEATURES, SEQUENCE_HIDDEN)) * 0.5).astype(np.float32),
        "b": (rng.standard_normal(SEQUENCE_HIDDEN) * 0.1).astype(np.float32),
        "v": (rng.standard_normal((SEQUENCE_HIDDEN, 1)) * 0.5).astype(np.float32),
    }


def masked_encoder(params: dict[str, Any], x: Any, mask: Any) -> tuple[Any, Any]:
    """Two inputs with a shared sequence axis: x [batch, sequence, 4], mask [batch, sequence].

    Returns the masked mean of tanh(x @ w + b) over the sequence ([batch, 8]) and one masked score
    per position ([batch, sequence]).
    """
    import jax.numpy as jnp

    hidden = jnp.tanh(x @ params["w"] + params["b"])
    pooled = (hidden * mask[..., None]).sum(axis=1) / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    scores = (hidden @ params["v"])[..., 0] * mask
    return pooled, scores
