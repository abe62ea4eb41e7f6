"""Model intake for Keras, TensorFlow SavedModel and JAX: `gateway push` converts, proves parity and uploads.

One real gateway process (model control mode none, a fresh empty repository) receives every push,
from `gateway push` subprocesses (a ``.keras`` file, a SavedModel folder, JAX entry points) and from
the in-process ``gateway.push`` API (a Keras model, a JAX callable). The served outputs are compared
with the framework's own, over REST (JSON) and gRPC (tritonclient), on the whole digits test split in
batches of the default max_batch_size (64). Input and output names come from the served metadata.
A ``.keras`` file holding a Lambda layer must be refused without touching the repository.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("jax")
pytest.importorskip("jax2onnx")
pytest.importorskip("tritonclient.grpc")

import gateway
from tests.conftest import (
    ADMIN_TOKEN,
    GatewayProcess,
    metadata,
    run_push,
    served,
    snapshot,
    start_gateway,
)
from tests.framework_models import (
    keras_lambda_model,
    keras_logits,
    masked_encoder,
    mlp_logits,
    sequence_params,
    train_jax_mlp,
    train_keras_cnn,
)

# Keras 3.15's own model.save() converts TF variables with np.array(x), which numpy 2 flags (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

#: The default max_batch_size of a model without config.yaml: requests are sent in batches this large.
MAX_BATCH = 64
ATOL, RTOL = 1e-4, 1e-3

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def framework_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway in model control mode none over a fresh, empty repository."""
    root = tmp_path_factory.mktemp("framework-repository")
    server = start_gateway(root, tmp_path_factory.mktemp("framework-logs") / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keras_cnn(digits_split: Digits) -> Any:
    x_train, _, y_train, _ = digits_split
    return train_keras_cnn(x_train, y_train)


@pytest.fixture(scope="module")
def jax_params(digits_split: Digits) -> dict[str, np.ndarray]:
    x_train, _, y_train, _ = digits_split
    return train_jax_mlp(x_train, y_train)


# ----------------------------------------------------------------------------- helpers


def push_to(server: GatewayProcess, source: str | Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway push SOURCE --name NAME ARGS --server URL --token ADMIN_TOKEN`."""
    return run_push(str(source), "--name", name, *args, "--server", server.http_url, "--token", ADMIN_TOKEN)


def save_params(path: Path, params: dict[str, np.ndarray]) -> None:
    """Write parameters with ``np.savez`` (one array per name), for an entry point file to load."""
    np.savez(path, **params)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def digits_signature(server: GatewayProcess, model: str, version: str) -> tuple[str, str]:
    """The (input, output) names of a digits classifier from its metadata, which must be FP32 [-1, 64] -> [-1, 10]."""
    answer = metadata(server, model, version)
    (tensor_in,) = answer["inputs"]
    (tensor_out,) = answer["outputs"]
    assert (tensor_in["datatype"], tensor_in["shape"]) == ("FP32", [-1, 64]), answer
    assert (tensor_out["datatype"], tensor_out["shape"]) == ("FP32", [-1, 10]), answer
    return tensor_in["name"], tensor_out["name"]


def assert_serves_like(
    server: GatewayProcess,
    model: str,
    version: str,
    reference: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
) -> None:
    """Over REST and gRPC, in batches of MAX_BATCH, the served logits match ``reference(x)``; accuracy > 0.9."""
    input_name, output_name = digits_signature(server, model, version)
    expected = np.asarray(reference(x))
    assert expected.shape == (len(x), 10)
    rest_parts, grpc_parts = [], []
    for start in range(0, len(x), MAX_BATCH):
        rest, grpc_outputs = served(server, model, version, {input_name: x[start : start + MAX_BATCH]})
        rest_parts.append(rest[output_name])
        grpc_parts.append(grpc_outputs[output_name])
    for protocol, parts in (("REST", rest_parts), ("gRPC", grpc_parts)):
        logits = np.concatenate(parts)
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=RTOL, err_msg=f"{model} over {protocol}")
        assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all(), f"{model} over {protocol}"
        accuracy = float((logits.argmax(axis=1) == y).mean())
        assert accuracy > 0.9, f"{model} over {protocol}: accuracy {accuracy}"


def assert_pushed(pushed: subprocess.CompletedProcess[str], name: str, version: int, framework: str) -> None:
    """A successful CLI push: exit 0, the framework detected, parity passed, the summary printed."""
    assert pushed.returncode == 0, pushed.stderr
    assert f"exporting the {framework} model to ONNX" in pushed.stderr, pushed.stderr
    assert "checking parity" in pushed.stderr
    assert f"model {name} version {version} is ready" in pushed.stdout, pushed.stdout
    assert "PASS" in pushed.stdout and "curl -s " in pushed.stdout
    assert "Traceback" not in pushed.stderr


def assert_parity_recorded(server: GatewayProcess, model: str, version: str) -> None:
    parity = metadata(server, model, version)["parameters"]["parity"]
    assert parity["passed"] is True, parity
    assert parity["outputs"], parity
    for output in parity["outputs"]:
        assert output["inputs_tried"] >= 17 and output["within_tolerance"], parity


# ----------------------------------------------------------------------------- Keras and TensorFlow


def test_keras_file_is_detected_converted_and_served(
    framework_gateway: GatewayProcess, keras_cnn: Any, digits_split: Digits, tmp_path: Path
) -> None:
    _, x_test, _, y_test = digits_split
    file = tmp_path / "model.keras"
    keras_cnn.save(str(file))
    pushed = push_to(framework_gateway, file, "digits_keras")
    assert_pushed(pushed, "digits_keras", 1, "keras")
    input_name, output_name = digits_signature(framework_gateway, "digits_keras", "1")
    assert input_name == "pixels"  # the keras.Input's name survives saving and loading
    assert f"{input_name} FP32 [batch, 64]" in pushed.stdout and f"{output_name} FP32 [batch, 10]" in pushed.stdout
    assert_serves_like(framework_gateway, "digits_keras", "1", lambda x: keras_logits(keras_cnn, x), x_test, y_test)
    assert_parity_recorded(framework_gateway, "digits_keras", "1")


def test_saved_model_folder_is_detected_converted_and_served(
    framework_gateway: GatewayProcess, keras_cnn: Any, digits_split: Digits, tmp_path: Path
) -> None:
    _, x_test, _, y_test = digits_split
    folder = tmp_path / "saved_model"
    keras_cnn.export(str(folder), verbose=False)
    pushed = push_to(framework_gateway, folder, "digits_saved_model")  # no --framework: detected
    assert_pushed(pushed, "digits_saved_model", 1, "tensorflow")
    input_name, _ = digits_signature(framework_gateway, "digits_saved_model", "1")
    assert input_name == "pixels"
    assert_serves_like(
        framework_gateway, "digits_saved_model", "1", lambda x: keras_logits(keras_cnn, x), x_test, y_test
    )
    assert_parity_recorded(framework_gateway, "digits_saved_model", "1")


def test_keras_lambda_file_and_wrong_framework_are_refused(
    framework_gateway: GatewayProcess, tmp_path: Path, keras_cnn: Any
) -> None:
    lambda_file = tmp_path / "lambda.keras"
    keras_lambda_model().save(str(lambda_file))
    cnn_file = tmp_path / "cnn.keras"
    keras_cnn.save(str(cnn_file))
    before = snapshot(framework_gateway.repository)
    cases = {
        "lambda": (lambda_file, [], ["safe mode", "Lambda"]),
        "wrong_framework": (cnn_file, ["--framework", "jax"], ["--framework jax given", "keras model"]),
    }
    for name, (source, args, messages) in cases.items():
        pushed = push_to(framework_gateway, source, name, *args)
        assert pushed.returncode == 1, (name, pushed.stdout, pushed.stderr)
        assert "error: " in pushed.stderr, pushed.stderr
        for message in messages:
            assert message in pushed.stderr, (name, message, pushed.stderr)
        assert "Traceback" not in pushed.stderr, pushed.stderr
        assert pushed.stdout == "", pushed.stdout
        assert framework_gateway.http.get(f"/v2/models/{name}").status_code == 404
    assert snapshot(framework_gateway.repository) == before


# ----------------------------------------------------------------------------- JAX


def test_jax_entry_point_is_converted_and_served(
    framework_gateway: GatewayProcess, jax_params: dict[str, np.ndarray], digits_split: Digits, tmp_path: Path
) -> None:
    _, x_test, _, y_test = digits_split
    save_params(tmp_path / "mlp_params.npz", jax_params)
    np.save(tmp_path / "examples.npy", x_test[:3])
    (tmp_path / "jax_entry.py").write_text(
        "import numpy as np\n"
        "from tests.framework_models import mlp_logits\n\n\n"
        "def build():\n"
        f"    params = dict(np.load({str(tmp_path / 'mlp_params.npz')!r}))\n\n"
        "    def classify(pixels):\n"
        "        return mlp_logits(params, pixels)\n\n"
        f"    return classify, (np.load({str(tmp_path / 'examples.npy')!r}),)\n"
    )
    pushed = push_to(framework_gateway, f"{tmp_path / 'jax_entry.py'}:build", "digits_jax")
    assert_pushed(pushed, "digits_jax", 1, "jax")
    input_name, _ = digits_signature(framework_gateway, "digits_jax", "1")
    assert input_name == "pixels"  # the function's parameter name
    assert_serves_like(framework_gateway, "digits_jax", "1", lambda x: mlp_logits(jax_params, x), x_test, y_test)
    assert_parity_recorded(framework_gateway, "digits_jax", "1")


def test_jax_two_inputs_with_a_dynamic_sequence_axis(framework_gateway: GatewayProcess, tmp_path: Path) -> None:
    params = sequence_params()
    save_params(tmp_path / "encoder_params.npz", params)
    (tmp_path / "encoder_entry.py").write_text(
        "import numpy as np\n"
        "from tests.framework_models import masked_encoder\n\n\n"
        "def build():\n"
        f"    params = dict(np.load({str(tmp_path / 'encoder_params.npz')!r}))\n\n"
        "    def encode(x, mask):\n"
        "        return masked_encoder(params, x, mask)\n\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.standard_normal((2, 6, 4)).astype(np.float32)\n"
        "    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=np.float32)\n"
        "    return encode, (x, mask)\n"
    )
    pushed = push_to(
        framework_gateway,
        f"{tmp_path / 'encoder_entry.py'}:build",
        "masked_encoder",
        "--dynamic-axes",
        "x:1=sequence",
        "--dynamic-axes",
        "mask:1=sequence",
    )
    assert_pushed(pushed, "masked_encoder", 1, "jax")
    assert "x FP32 [batch, sequence, 4]" in pushed.stdout and "mask FP32 [batch, sequence]" in pushed.stdout
    answer = metadata(framework_gateway, "masked_encoder", "1")
    assert answer["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1, 4]},
        {"name": "mask", "datatype": "FP32", "shape": [-1, -1]},
    ]
    assert answer["outputs"] == [
        {"name": "output_0", "datatype": "FP32", "shape": [-1, 8]},
        {"name": "output_1", "datatype": "FP32", "shape": [-1, -1]},
    ]
    assert_parity_recorded(framework_gateway, "masked_encoder", "1")

    rng = np.random.default_rng(1)
    for batch, length in [(1, 1), (3, 17), (8, 4), (2, 40), (MAX_BATCH, 3)]:
        x = rng.standard_normal((batch, length, 4)).astype(np.float32)
        mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
        pooled, scores = (np.asarray(value) for value in masked_encoder(params, x, mask))
        assert pooled.shape == (batch, 8) and scores.shape == (batch, length)
        answers = served(framework_gateway, "masked_encoder", "1", {"x": x, "mask": mask})
        for protocol, outputs in zip(("REST", "gRPC"), answers, strict=True):
            where = f"{protocol} batch {batch} length {length}"
            np.testing.assert_allclose(outputs["output_0"], pooled, atol=ATOL, rtol=RTOL, err_msg=where)
            np.testing.assert_allclose(outputs["output_1"], scores, atol=ATOL, rtol=RTOL, err_msg=where)


# ----------------------------------------------------------------------------- the Python API


def test_python_api_pushes_a_keras_model_and_a_jax_callable(
    framework_gateway: GatewayProcess, keras_cnn: Any, jax_params: dict[str, np.ndarray], digits_split: Digits
) -> None:
    _, x_test, _, y_test = digits_split

    def classify(pixels: Any) -> Any:
        return mlp_logits(jax_params, pixels)

    models: dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]] = {
        "digits_keras_api": (keras_cnn, lambda x: keras_logits(keras_cnn, x)),
        "digits_jax_api": (classify, classify),
    }
    for name, (model, reference) in models.items():
        result = gateway.push(
            model, (x_test[:4],), name=name, server=framework_gateway.http_url, token=ADMIN_TOKEN, verbose=False
        )
        assert (result.name, result.version, result.ready) == (name, 1, True)
        assert result.parity is not None and result.parity.ok, result.parity
        assert all(output.inputs_tried >= 17 for output in result.parity.outputs)
        assert [tensor.describe() for tensor in result.inputs] == ["pixels FP32 [batch, 64]"]
        assert_serves_like(framework_gateway, name, "1", reference, x_test, y_test)
        answer = metadata(framework_gateway, name)
        assert answer["versions"] == ["1"]
        assert answer["parameters"]["parity"]["passed"] is True
        assert answer["parameters"]["parity"]["outputs"][0]["inputs_tried"] >= 17

    # The next push of the same name is version 2, which replaces version 1 (default policy: latest 1).
    server = framework_gateway.http_url
    result = gateway.push(
        classify, (x_test[:2],), name="digits_jax_api", server=server, token=ADMIN_TOKEN, verbose=False
    )
    assert result.version == 2 and result.parity is not None and result.parity.ok
    answer = metadata(framework_gateway, "digits_jax_api")
    assert answer["versions"] == ["2"] and answer["parameters"]["parity"]["passed"] is True
    assert_serves_like(framework_gateway, "digits_jax_api", "2", classify, x_test, y_test)
