"""Keras, TF SavedModel, .keras and JAX sources: train tiny digits models, export to ONNX, compare with ONNX Runtime.

No server: each test trains (or builds) a small model, exports it with the source's ``export_onnx``
into ``tmp_path``, runs the file with ONNX Runtime and compares with the source's own ``run``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
jax = pytest.importorskip("jax")
pytest.importorskip("jax2onnx")
pytest.importorskip("sklearn")
ort = pytest.importorskip("onnxruntime")

import jax.numpy as jnp  # noqa: E402
import onnx  # noqa: E402

from converters.jax_onnx import JaxSource  # noqa: E402
from converters.keras_onnx import KerasSource, load_keras_file  # noqa: E402
from converters.model import ConversionError, SourceModel  # noqa: E402
from converters.saved_model_onnx import SavedModelSource, load_saved_model  # noqa: E402
from examples.digits import load_digits_split  # noqa: E402
from tests.framework_models import mlp_logits, train_jax_mlp  # noqa: E402

# Keras 3.15's own model.save() converts TF variables with np.array(x), which numpy 2 flags (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

BATCH_SIZES = (1, 7, 64, 360)
ATOL = 1e-4
MIN_ACCURACY = 0.9


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_digits_split()


def graph_dims(path: Path) -> dict[str, list[Any]]:
    """Per graph input/output name: dims as int or dim_param."""
    model = onnx.load(str(path))
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }


def session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_classifier(source: SourceModel, path: Path, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Export ``source``, run the file on the test split in several batch sizes; compare and score."""
    source.export_onnx(path)
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "staging leftovers"
    (name,) = [spec.name for spec in source.input_specs]
    (output,) = source.output_names
    dims = graph_dims(path)
    assert dims[name] == ["batch", 64]
    assert dims[output] == ["batch", 10]

    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == [name]
    assert [o.name for o in sess.get_outputs()] == [output]
    reference = source.run({name: x_test})[output]
    assert reference.shape == (len(x_test), 10)
    for size in BATCH_SIZES:
        chunks = [sess.run([output], {name: x_test[i : i + size]})[0] for i in range(0, len(x_test), size)]
        got = np.concatenate(chunks)
        np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0, err_msg=f"batch size {size}")
    # The source itself at a small batch agrees with its full-batch run.
    np.testing.assert_allclose(source.run({name: x_test[:7]})[output], reference[:7], atol=ATOL, rtol=0)
    accuracy = float((reference.argmax(axis=1) == y_test).mean())
    assert accuracy > MIN_ACCURACY, accuracy


# ------------------------------------------------------------------------------------------------
# Keras / TensorFlow
# ------------------------------------------------------------------------------------------------


def train_keras(model: Any, x_train: np.ndarray, y_train: np.ndarray, epochs: int) -> Any:
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def keras_mlp(digits: tuple[np.ndarray, ...]) -> Any:
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    pixels = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu")(pixels)
    model = keras.Model(pixels, keras.layers.Dense(10)(hidden))
    return train_keras(model, x_train, y_train, epochs=10)


def test_keras_mlp(keras_mlp: Any, digits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    _, x_test, _, y_test = digits
    source = KerasSource(keras_mlp, [x_test[:2]])
    assert source.framework == "keras"
    assert [spec.describe() for spec in source.input_specs] == ["pixels float32 [batch, 64]"]
    assert source.output_names == ["output"]
    check_classifier(source, tmp_path / "model.onnx", x_test, y_test)


def test_keras_cnn(digits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    x_train, x_test, y_train, y_test = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), name="image"),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    train_keras(model, x_train, y_train, epochs=8)
    source = KerasSource(model, [x_test[:2]])
    assert [spec.name for spec in source.input_specs] == ["image"]
    check_classifier(source, tmp_path / "cnn.onnx", x_test, y_test)


def test_saved_model(keras_mlp: Any, digits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    _, x_test, _, y_test = digits
    folder = tmp_path / "saved"
    keras_mlp.export(str(folder), format="tf_saved_model", verbose=False)
    source = load_saved_model(folder)
    assert isinstance(source, SavedModelSource)
    assert source.framework == "tensorflow"
    assert [spec.describe() for spec in source.input_specs] == ["pixels float32 [batch, 64]"]
    assert source.output_names == ["output_0"]
    assert source.example_inputs is not None and source.example_inputs["pixels"].shape == (2, 64)
    check_classifier(source, tmp_path / "out" / "model.onnx", x_test, y_test)


def test_keras_file(keras_mlp: Any, digits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    _, x_test, _, y_test = digits
    file = tmp_path / "mlp.keras"
    keras_mlp.save(str(file))
    source = load_keras_file(file)
    assert [spec.describe() for spec in source.input_specs] == ["pixels float32 [batch, 64]"]
    assert source.example_inputs is not None and source.example_inputs["pixels"].shape == (2, 64)
    np.testing.assert_allclose(
        source.run({"pixels": x_test})["output"], keras.ops.convert_to_numpy(keras_mlp(x_test)), atol=1e-6, rtol=0
    )
    check_classifier(source, tmp_path / "model.onnx", x_test, y_test)


def masked_mean_keras() -> Any:
    x = keras.Input((None,), name="x")
    mask = keras.Input((None,), name="mask")
    masked = keras.layers.Multiply()([x, mask])
    total = keras.ops.sum(masked, axis=1, keepdims=True)
    count = keras.ops.maximum(keras.ops.sum(mask, axis=1, keepdims=True), 1.0)
    return keras.Model([x, mask], [total / count, masked])


def sequence_batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = []
    for batch, length in ((1, 1), (3, 5), (2, 17), (4, 64)):
        x = rng.normal(size=(batch, length)).astype(np.float32)
        mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
        batches.append({"x": x, "mask": mask})
    return batches


def check_masked_mean(source: SourceModel, path: Path) -> None:
    assert [spec.describe() for spec in source.input_specs] == [
        "x float32 [batch, sequence]",
        "mask float32 [batch, sequence]",
    ]
    assert source.output_names == ["output_0", "output_1"]
    source.export_onnx(path)
    dims = graph_dims(path)
    assert dims["x"] == ["batch", "sequence"]
    assert dims["mask"] == ["batch", "sequence"]
    assert dims["output_0"] == ["batch", 1]
    assert dims["output_1"] == ["batch", "sequence"]
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["x", "mask"]
    assert [o.name for o in sess.get_outputs()] == ["output_0", "output_1"]
    for batch in sequence_batches():
        expected = source.run(batch)
        got = dict(zip(source.output_names, sess.run(source.output_names, batch), strict=True))
        x, mask = batch["x"], batch["mask"]
        mean = (x * mask).sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        np.testing.assert_allclose(expected["output_0"], mean, atol=1e-5)
        for name in source.output_names:
            np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=0, err_msg=f"{name} {x.shape}")


SEQUENCE_AXES = {"x": {1: "sequence"}, "mask": {1: "sequence"}}


def test_keras_two_inputs_dynamic_sequence(tmp_path: Path) -> None:
    batch = sequence_batches()[1]
    source = KerasSource(masked_mean_keras(), [batch["x"], batch["mask"]], SEQUENCE_AXES)
    check_masked_mean(source, tmp_path / "masked.onnx")


def test_keras_file_dynamic_axes_from_declared_shapes(tmp_path: Path) -> None:
    file = tmp_path / "masked.keras"
    masked_mean_keras().save(str(file))
    # Undeclared dims get per-input labels by default...
    default = load_keras_file(file)
    assert [spec.describe() for spec in default.input_specs] == [
        "x float32 [batch, x_1]",
        "mask float32 [batch, mask_1]",
    ]
    assert default.example_inputs is not None and default.example_inputs["x"].shape == (2, 8)
    # ...and dynamic_axes names them (one shared label, so the lengths are tied).
    source = load_keras_file(file, dynamic_axes=SEQUENCE_AXES)
    check_masked_mean(source, tmp_path / "masked.onnx")


def test_keras_lambda_refused_in_safe_mode(tmp_path: Path) -> None:
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    file = tmp_path / "lambda.keras"
    model.save(str(file))
    with pytest.raises(ValueError, match="Lambda"):
        load_keras_file(file)


def test_keras_load_failures(tmp_path: Path) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot load Keras file"):
        load_keras_file(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_keras_file(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match=r"\.keras"):
        load_keras_file(tmp_path / "model.h5")


def test_saved_model_load_failures(keras_mlp: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a TF SavedModel"):
        load_saved_model(tmp_path)
    folder = tmp_path / "saved"
    keras_mlp.export(str(folder), format="tf_saved_model", verbose=False)
    with pytest.raises(ValueError, match="no signature 'predict'"):
        load_saved_model(folder, signature="predict")
    with pytest.raises(ValueError, match="fixed in the signature"):
        load_saved_model(folder, dynamic_axes={"pixels": {1: "features"}})
    with pytest.raises(ValueError, match="unknown inputs"):
        load_saved_model(folder, dynamic_axes={"nope": {1: "features"}})


class _Lgamma(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x: Any) -> Any:
        return {"y": tf.math.lgamma(x + 1.0)}


def test_saved_model_unsupported_op(tmp_path: Path) -> None:
    folder = tmp_path / "lgamma"
    module = _Lgamma()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.__call__})
    source = load_saved_model(folder)
    x = np.zeros((3, 4), np.float32)
    np.testing.assert_allclose(source.run({"x": x})["y"], np.zeros((3, 4)), atol=1e-5)  # lgamma(1) = 0
    with pytest.raises(ConversionError, match=r"Lgamma.*newer tf2onnx"):
        source.export_onnx(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_keras_unsupported_op(tmp_path: Path) -> None:
    # keras.ops.eigh lowers to TF's SelfAdjointEigV2, which tf2onnx cannot translate.
    x = keras.Input((3, 3), name="x")
    model = keras.Model(x, keras.ops.eigh(x)[0])
    source = KerasSource(model, [np.broadcast_to(np.eye(3, dtype=np.float32), (2, 3, 3))])
    with pytest.raises(ConversionError, match="SelfAdjointEigV2"):
        source.export_onnx(tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == []


# ------------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------------


def test_jax_mlp(digits: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    x_train, x_test, y_train, y_test = digits
    params = train_jax_mlp(x_train, y_train)

    def classify(pixels: Any) -> Any:
        return mlp_logits(params, pixels)

    source = JaxSource(classify, [x_test[:2]])
    assert source.framework == "jax"
    assert [spec.describe() for spec in source.input_specs] == ["pixels float32 [batch, 64]"]
    assert source.output_names == ["output"]
    check_classifier(source, tmp_path / "model.onnx", x_test, y_test)


def test_jax_two_inputs_dynamic_sequence(tmp_path: Path) -> None:
    def masked_mean(x: Any, mask: Any) -> tuple[Any, Any]:
        masked = x * mask
        total = masked.sum(axis=1, keepdims=True)
        return total / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0), masked

    batch = sequence_batches()[1]
    source = JaxSource(masked_mean, [batch["x"], batch["mask"]], SEQUENCE_AXES)
    check_masked_mean(source, tmp_path / "masked.onnx")


def test_jax_label_that_is_not_an_identifier(tmp_path: Path) -> None:
    source = JaxSource(lambda tokens: tokens * 2.0, [np.ones((2, 3), np.float32)], {"tokens": {1: "seq-len"}})
    path = tmp_path / "double.onnx"
    source.export_onnx(path)
    assert graph_dims(path)["tokens"] == ["batch", "seq-len"]
    assert graph_dims(path)["output"] == ["batch", "seq-len"]
    out = session(path).run(None, {"tokens": np.ones((4, 9), np.float32)})[0]
    np.testing.assert_allclose(out, np.full((4, 9), 2.0))


def test_jax_unsupported_primitive(tmp_path: Path) -> None:
    # jax.lax.composite has no jax2onnx plugin (jax2onnx 0.17 covers nearly every other primitive).
    doubled_tanh = jax.lax.composite(lambda x: jnp.tanh(x) * 2.0, name="gateway.doubled_tanh")
    source = JaxSource(lambda x: doubled_tanh(x), [np.ones((2, 4), np.float32)])
    np.testing.assert_allclose(source.run({"x": np.zeros((1, 4), np.float32)})["output"], np.zeros((1, 4)))
    with pytest.raises(ConversionError, match=r"primitive 'composite'.*newer jax2onnx"):
        source.export_onnx(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
