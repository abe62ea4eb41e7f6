"""Native backends (PyTorch, TensorFlow SavedModel), `--format native`, and the TF Serving / TorchServe routes.

One real gateway (model control mode none) serves a repository holding a two-input ONNX model, a
TorchScript file with its config.yaml, a folder that mixes artifacts and a model whose config names
a backend its folder has no artifact for. The same digits models (torch, Keras, JAX) are pushed to
it twice, with ``format="native"`` and as ONNX twins; the native ones must be served by the torch and
tensorflow backends and answer like the framework in process and like their twins. A second gateway
runs with an environment in which importing tensorflow and torch fails: its models that need them
are UNAVAILABLE with what to install, its ONNX model serves.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

torch = pytest.importorskip("torch")
pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("jax")
triton_grpc = pytest.importorskip("tritonclient.grpc")


import gateway  # noqa: E402
from gateway.push_client import PushError  # noqa: E402
from tests.conftest import ADMIN_TOKEN, GatewayProcess, run_push, start_gateway, write_pair_model  # noqa: E402
from tests.framework_models import (  # noqa: E402
    keras_logits,
    masked_encoder,
    mlp_logits,
    sequence_params,
    train_jax_mlp,
    train_keras_cnn,
)
from tests.torch_models import DigitsMLP, ErfinvHead, NoisyModel, TokenBag, predict, train  # noqa: E402

pytestmark = [
    # Keras 3.15's own model.save() converts TF variables with np.array(x), which numpy 2 flags (not our code).
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    # TorchScript is deprecated in torch 2.13, but the torch backend still serves it: the tests write some.
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace(_method)?` is deprecated:DeprecationWarning"),
]

MAX_BATCH = 64
ATOL, RTOL = 1e-4, 1e-3
PLATFORMS = {"torch": "pytorch_libtorch", "keras": "tensorflow_savedmodel", "jax": "tensorflow_savedmodel"}
BACKENDS = {"torch": "torch", "keras": "tensorflow", "jax": "tensorflow"}

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Reference = Callable[[np.ndarray], np.ndarray]

TORCHSCRIPT_CONFIG = """\
max_batch_size: 64
inputs:
  - {name: input, datatype: FP32, dims: [64]}
outputs:
  - {name: logits, datatype: FP32, dims: [10]}
torch: {threads: 1, device: cpu}
"""


@pytest.fixture(scope="module")
def torch_mlp(digits_split: Digits) -> Any:
    x_train, _, y_train, _ = digits_split
    return train(DigitsMLP(), x_train, y_train)


@pytest.fixture(scope="module")
def native_gateway(tmp_path_factory: pytest.TempPathFactory, torch_mlp: Any) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("native-repository")
    write_pair_model(root / "pair" / "1" / "model.onnx")
    torchscript = root / "digits_torchscript"
    (torchscript / "1").mkdir(parents=True)
    torch.jit.trace(torch_mlp, torch.zeros(2, 64)).save(str(torchscript / "1" / "model.pt"))
    (torchscript / "config.yaml").write_text(TORCHSCRIPT_CONFIG)
    write_pair_model(root / "mixed" / "1" / "model.onnx")
    (root / "mixed" / "1" / "model.pt2").write_bytes(b"")
    write_pair_model(root / "wrong_backend" / "1" / "model.onnx")
    (root / "wrong_backend" / "config.yaml").write_text("backend: tensorflow\n")
    server = start_gateway(root, tmp_path_factory.mktemp("native-logs") / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def references(native_gateway: GatewayProcess, torch_mlp: Any, digits_split: Digits) -> dict[str, Reference]:
    """The digits models of the three frameworks, each pushed natively and as an ONNX twin; their in-process outputs."""
    x_train, x_test, y_train, _ = digits_split
    keras_cnn = train_keras_cnn(x_train, y_train)
    jax_params = train_jax_mlp(x_train, y_train)

    def classify(pixels: Any) -> Any:
        return mlp_logits(jax_params, pixels)

    models: dict[str, tuple[Any, Reference]] = {
        "torch": (torch_mlp, lambda x: predict(torch_mlp, x)),
        "keras": (keras_cnn, lambda x: keras_logits(keras_cnn, x)),
        "jax": (classify, lambda x: np.asarray(classify(x))),
    }
    for framework, (model, _) in models.items():
        for export_format in ("native", "onnx"):
            result = gateway.push(
                model,
                (x_test[:4],),
                name=f"digits_{framework}_{export_format}",
                server=native_gateway.http_url,
                token=ADMIN_TOKEN,
                export_format=export_format,
                verbose=False,
            )
            assert result.ready and result.parity is not None and result.parity.ok, result
            assert result.backend == ("onnxruntime" if export_format == "onnx" else BACKENDS[framework])
    return {framework: reference for framework, (_, reference) in models.items()}


# ----------------------------------------------------------------------------- helpers


def metadata(server: GatewayProcess, model: str) -> dict[str, Any]:
    response = server.http.get(f"/v2/models/{model}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def served_logits(server: GatewayProcess, model: str, x: np.ndarray) -> np.ndarray:
    """The digits model's logits for ``x`` over v2 REST, in batches of MAX_BATCH."""
    answer = metadata(server, model)
    ((input_name, datatype),) = [(tensor["name"], tensor["datatype"]) for tensor in answer["inputs"]]
    parts = []
    for start in range(0, len(x), MAX_BATCH):
        batch = x[start : start + MAX_BATCH]
        body = {
            "inputs": [
                {"name": input_name, "datatype": datatype, "shape": list(batch.shape), "data": batch.ravel().tolist()}
            ]
        }
        response = server.http.post(f"/v2/models/{model}/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        parts.append(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))
    return np.concatenate(parts)


def grpc_logits(server: GatewayProcess, model: str, input_name: str, x: np.ndarray) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(url=server.grpc_address)
    try:
        tensor = triton_grpc.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        return np.asarray(result.as_numpy("output"))
    finally:
        client.close()


def index(server: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in server.http.post("/v2/repository/index").json()}


# ----------------------------------------------------------------------------- native backends


def test_native_pushes_serve_like_the_framework_and_their_onnx_twins(
    native_gateway: GatewayProcess, references: dict[str, Reference], digits_split: Digits
) -> None:
    _, x_test, _, y_test = digits_split
    for framework, reference in references.items():
        native, twin = f"digits_{framework}_native", f"digits_{framework}_onnx"
        answer = metadata(native_gateway, native)
        assert answer["platform"] == PLATFORMS[framework], answer
        parameters = answer["parameters"]
        assert parameters["parity"]["passed"] is True and parameters["parity"]["outputs"][0]["inputs_tried"] == 17
        if framework == "torch":
            assert (parameters["artifact"], parameters["device"]) == ("model.pt2", "cpu"), parameters
        else:
            assert parameters["signature_name"] == "serving_default", parameters
        twin_answer = metadata(native_gateway, twin)
        assert twin_answer["platform"] == "onnxruntime_onnx"
        assert twin_answer["parameters"]["execution_providers"][-1] == "CPUExecutionProvider", twin_answer
        assert [t["name"] for t in answer["inputs"]] == [t["name"] for t in twin_answer["inputs"]]
        assert (
            answer["outputs"] == twin_answer["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        )

        expected = reference(x_test)
        logits = served_logits(native_gateway, native, x_test)
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=RTOL, err_msg=f"{native} against {framework}")
        np.testing.assert_allclose(
            logits,
            served_logits(native_gateway, twin, x_test),
            atol=ATOL,
            rtol=RTOL,
            err_msg=f"{native} against {twin}",
        )
        assert float((logits.argmax(axis=1) == y_test).mean()) > 0.9, native
        (input_name,) = [t["name"] for t in answer["inputs"]]
        np.testing.assert_allclose(
            grpc_logits(native_gateway, native, input_name, x_test[:5]), expected[:5], atol=ATOL, rtol=RTOL
        )


def test_two_inputs_sharing_a_dynamic_axis_natively(native_gateway: GatewayProcess) -> None:
    """A torch module and a JAX function with two inputs whose sequence axis is shared stay dynamic when exported
    natively; inputs that disagree on it are refused with the framework's reason."""
    token_bag = TokenBag().eval()
    params = sequence_params()

    def encode(x: Any, mask: Any) -> Any:
        return masked_encoder(params, x, mask)

    rng = np.random.default_rng(0)
    ids, ids_mask = rng.integers(0, 100, (2, 5)), np.ones((2, 5), dtype=np.int64)
    x, x_mask = rng.standard_normal((2, 6, 4)).astype(np.float32), np.ones((2, 6), dtype=np.float32)
    axes = {"sequence": {1: "sequence"}}
    for name, model, examples, dynamic_axes in [
        ("token_bag_native", token_bag, (ids, ids_mask), {"input_ids": axes["sequence"], "mask": axes["sequence"]}),
        ("encoder_native", encode, (x, x_mask), {"x": axes["sequence"], "mask": axes["sequence"]}),
    ]:
        result = gateway.push(
            model,
            examples,
            name=name,
            server=native_gateway.http_url,
            token=ADMIN_TOKEN,
            dynamic_axes=dynamic_axes,
            export_format="native",
            verbose=False,
        )
        assert result.ready and result.parity is not None and result.parity.ok, result
    for batch, length in [(1, 3), (4, 17)]:
        ids, ids_mask = rng.integers(0, 100, (batch, length)), (rng.random((batch, length)) > 0.3).astype(np.int64)
        answer = native_gateway.http.post(
            "/v1/models/token_bag_native:predict",
            json={"inputs": {"input_ids": ids.tolist(), "mask": ids_mask.tolist()}},
        )
        assert answer.status_code == 200, answer.text
        expected = predict(token_bag, ids, ids_mask)
        np.testing.assert_allclose(np.asarray(answer.json()["outputs"]), expected, atol=ATOL, rtol=RTOL)
        x, x_mask = rng.standard_normal((batch, length, 4)).astype(np.float32), np.ones((batch, length), np.float32)
        answer = native_gateway.http.post(
            "/v1/models/encoder_native:predict", json={"inputs": {"x": x.tolist(), "mask": x_mask.tolist()}}
        )
        assert answer.status_code == 200, answer.text
        pooled, scores = (np.asarray(value) for value in encode(x, x_mask))
        np.testing.assert_allclose(np.asarray(answer.json()["outputs"]["output_0"]), pooled, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(np.asarray(answer.json()["outputs"]["output_1"]), scores, atol=ATOL, rtol=RTOL)
    disagreeing = {"inputs": {"x": np.zeros((1, 3, 4)).tolist(), "mask": np.ones((1, 5)).tolist()}}
    refused = native_gateway.http.post("/v1/models/encoder_native:predict", json=disagreeing)
    assert refused.status_code == 400 and "TensorFlow: " in refused.json()["error"], refused.text
    assert "Graph execution error" not in refused.json()["error"], refused.text


def test_torchscript_is_served_with_the_signature_its_config_declares(
    native_gateway: GatewayProcess, torch_mlp: Any, digits_split: Digits
) -> None:
    _, x_test, _, _ = digits_split
    answer = metadata(native_gateway, "digits_torchscript")
    assert answer["platform"] == "pytorch_libtorch"
    parameters = {key: value for key, value in answer["parameters"].items() if key != "model_bytes"}
    assert parameters == {"artifact": "model.pt", "device": "cpu", "threads": 1}
    assert answer["parameters"]["model_bytes"] > 0
    assert answer["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert answer["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    np.testing.assert_allclose(
        served_logits(native_gateway, "digits_torchscript", x_test), predict(torch_mlp, x_test), atol=ATOL, rtol=RTOL
    )


def test_mixed_artifacts_and_a_backend_without_its_artifact_are_unavailable(native_gateway: GatewayProcess) -> None:
    entries = index(native_gateway)
    assert entries["mixed"]["state"] == "UNAVAILABLE"
    assert "several model artifacts" in entries["mixed"]["reason"], entries["mixed"]
    assert (
        "model.onnx (onnxruntime)" in entries["mixed"]["reason"] and "model.pt2 (torch)" in entries["mixed"]["reason"]
    )
    assert entries["wrong_backend"]["state"] == "UNAVAILABLE"
    assert "no SavedModel model.savedmodel/" in entries["wrong_backend"]["reason"], entries["wrong_backend"]
    response = native_gateway.http.post("/v2/models/mixed/infer", json={"inputs": []})
    assert response.status_code == 503 and "several model artifacts" in response.json()["error"]
    assert entries["pair"]["state"] == "READY" and entries["digits_torchscript"]["state"] == "READY"


def test_cli_suggests_native_when_onnx_fails_and_format_native_serves_it(
    native_gateway: GatewayProcess, digits_split: Digits, tmp_path: Path
) -> None:
    _, x_test, _, _ = digits_split
    model = ErfinvHead().eval()
    program = torch.export.export(
        model, (torch.from_numpy(x_test[:4]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "erfinv.pt2")
    target = ("--server", native_gateway.http_url, "--token", ADMIN_TOKEN)

    refused = run_push(str(tmp_path / "erfinv.pt2"), "--name", "erfinv", *target)
    assert refused.returncode == 1, refused.stderr
    assert "converting to ONNX, served by ONNX Runtime (the default; --format native" in refused.stderr
    assert "erf_inv" in refused.stderr and "--format native exports the torch model" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    pushed = run_push(str(tmp_path / "erfinv.pt2"), "--name", "erfinv", "--format", "native", *target)
    assert pushed.returncode == 0, pushed.stderr
    assert "exporting the torch model natively" in pushed.stderr and "checking parity with PyTorch" in pushed.stderr
    assert "served by: torch backend (PyTorch)" in pushed.stdout and "PASS" in pushed.stdout, pushed.stdout
    assert "input FP32 [batch, 64]" in pushed.stdout and "output FP32 [batch, 10]" in pushed.stdout
    np.testing.assert_allclose(
        served_logits(native_gateway, "erfinv", x_test[:70]), predict(model, x_test[:70]), atol=ATOL, rtol=RTOL
    )


def test_native_push_refuses_parity_failures_and_torchscript(tmp_path: Path, torch_mlp: Any) -> None:
    examples = (np.zeros((2, 64), dtype=np.float32),)
    with pytest.raises(PushError, match="parity check failed"):
        gateway.push(NoisyModel(), examples, name="noisy", repository=tmp_path, export_format="native", verbose=False)
    scripted = torch.jit.trace(torch_mlp, torch.zeros(2, 64))
    with pytest.raises(PushError, match=r"cannot be re-exported with torch\.export"):
        gateway.push(scripted, examples, name="scripted", repository=tmp_path, export_format="native", verbose=False)
    assert not (tmp_path / "noisy").exists() and not (tmp_path / "scripted").exists()


# ----------------------------------------------------------------------------- TF Serving routes


def test_tfserving_predict_in_row_and_columnar_formats(
    native_gateway: GatewayProcess, references: dict[str, Reference], digits_split: Digits
) -> None:
    _, x_test, _, _ = digits_split
    x = x_test[:3]
    expected = references["keras"](x)
    http = native_gateway.http
    rows = http.post("/v1/models/digits_keras_native:predict", json={"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(np.asarray(rows.json()["predictions"]), expected, atol=ATOL, rtol=RTOL)
    # Instances as objects, a version and the model's signature name.
    objects = http.post(
        "/v1/models/digits_keras_native/versions/1:predict",
        json={"signature_name": "serving_default", "instances": [{"pixels": row} for row in x.tolist()]},
    )
    assert objects.json() == rows.json()
    columns = http.post("/v1/models/digits_keras_native:predict", json={"inputs": {"pixels": x.tolist()}})
    assert columns.status_code == 200, columns.text
    np.testing.assert_allclose(np.asarray(columns.json()["outputs"]), expected, atol=ATOL, rtol=RTOL)
    single = http.post("/v1/models/digits_torch_native:predict", json={"inputs": x.tolist()})
    np.testing.assert_allclose(np.asarray(single.json()["outputs"]), references["torch"](x), atol=ATOL, rtol=RTOL)

    # Two inputs and two outputs: objects per instance, an object of outputs in the columnar format.
    a, b = [[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]
    pair_rows = http.post(
        "/v1/models/pair:predict", json={"instances": [{"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}]}
    )
    assert pair_rows.json() == {
        "predictions": [{"sum": [11.0, 22.0], "product": [10.0, 40.0]}, {"sum": [33.0, 44.0], "product": [90.0, 160.0]}]
    }
    pair_columns = http.post("/v1/models/pair:predict", json={"inputs": {"a": a, "b": b}})
    assert pair_columns.json() == {
        "outputs": {"sum": [[11.0, 22.0], [33.0, 44.0]], "product": [[10.0, 40.0], [90.0, 160.0]]}
    }


def test_tfserving_status_and_metadata(native_gateway: GatewayProcess) -> None:
    http = native_gateway.http
    available = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert http.get("/v1/models/digits_keras_native").json() == {"model_version_status": [available]}
    assert http.get("/v1/models/pair/versions/1").json() == {"model_version_status": [available]}
    missing = http.get("/v1/models/pair/versions/7")
    assert missing.status_code == 404 and "version 7" in missing.json()["error"]
    mixed = http.get("/v1/models/mixed").json()
    assert mixed["model_version_status"][0]["state"] == "END"
    assert "several model artifacts" in mixed["model_version_status"][0]["status"]["error_message"]

    answer = http.get("/v1/models/digits_keras_native/metadata").json()
    assert answer["model_spec"] == {"name": "digits_keras_native", "signature_name": "", "version": "1"}
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["pixels"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""},
        {"size": "64", "name": ""},
    ]
    assert list(signature["outputs"]) == ["output"]


def test_tfserving_errors_have_its_shape(native_gateway: GatewayProcess) -> None:
    http = native_gateway.http
    cases = [
        ("/v1/models/nope:predict", b'{"instances": [[1.0]]}', 404, "unknown model 'nope'"),
        ("/v1/models/pair:predict", b"{not json", 400, "malformed JSON"),
        ("/v1/models/pair:predict", b'{"instances": [], "inputs": {}}', 400, "exactly one of 'instances'"),
        ("/v1/models/pair:predict", b'{"instances": [[1.0, 2.0]]}', 400, "several inputs"),
        (
            "/v1/models/pair:predict",
            b'{"signature_name": "other", "inputs": {}}',
            400,
            "serves signature 'serving_default'",
        ),
        ("/v1/models/pair:predict", b'{"inputs": {"a": [[1, 2]], "c": [[1, 2]]}}', 400, "unknown input 'c'"),
        ("/v1/models/pair:predict", b'{"inputs": {"a": [[1, 2]], "b": [[1, 2, 3]]}}', 400, "shape [1, 3]"),
        ("/v1/models/pair:predict", b'{"inputs": {"a": [[1, 2], [3]], "b": [[1, 2]]}}', 400, "ragged"),
        ("/v1/models/pair/versions/x:predict", b'{"inputs": {}}', 400, "not a non-negative integer"),
        ("/v1/models/wrong_backend:predict", b'{"inputs": {}}', 503, "no SavedModel"),
    ]
    for path, body, status, message in cases:
        response = http.post(path, content=body)
        assert response.status_code == status, (path, body, response.text)
        assert list(response.json()) == ["error"] and message in response.json()["error"], (path, response.json())
        assert response.headers["X-Request-ID"]


# ----------------------------------------------------------------------------- TorchServe routes


def test_torchserve_ping_and_predictions(
    native_gateway: GatewayProcess, references: dict[str, Reference], digits_split: Digits
) -> None:
    _, x_test, _, _ = digits_split
    http = native_gateway.http
    assert http.get("/ping").json() == {"status": "Healthy"}
    x = x_test[:4]
    expected = references["torch"](x)
    for path, body in [
        ("/predictions/digits_torch_native", x.tolist()),
        ("/predictions/digits_torch_native/1", {"data": x.tolist()}),
        ("/predictions/digits_torch_native", {"instances": [{"input": row} for row in x.tolist()]}),
    ]:
        response = http.post(path, json=body)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.asarray(response.json()), expected, atol=ATOL, rtol=RTOL)
    pair = http.post("/predictions/pair", json=[{"a": [1, 2], "b": [3, 4]}])
    assert pair.json() == [{"sum": [4.0, 6.0], "product": [3.0, 8.0]}]


def test_torchserve_errors_have_its_shape(native_gateway: GatewayProcess) -> None:
    cases = [
        ("/predictions/nope", b"[[1.0]]", 404, "ModelNotFoundException", "unknown model 'nope'"),
        ("/predictions/pair/3", b"[[1.0]]", 404, "ModelNotFoundException", "no version 3"),
        ("/predictions/pair", b"not json", 400, "BadRequestException", "malformed JSON"),
        ("/predictions/pair", b'{"rows": []}', 400, "BadRequestException", "a JSON list of rows"),
        ("/predictions/digits_torch_native", b"[[1.0, 2.0]]", 400, "BadRequestException", "shape [1, 2]"),
        ("/predictions/mixed", b"[[1.0]]", 503, "ServiceUnavailableException", "several model artifacts"),
    ]
    for path, body, status, kind, message in cases:
        response = native_gateway.http.post(path, content=body)
        assert response.status_code == status, (path, response.text)
        answer = response.json()
        assert (answer["code"], answer["type"]) == (status, kind), answer
        assert message in answer["message"], answer


# ----------------------------------------------------------------------------- frameworks not installed


def test_backends_whose_framework_is_missing_say_what_to_install(
    tmp_path: Path, digits_source: Path, native_gateway: GatewayProcess
) -> None:
    """A gateway whose environment cannot import tensorflow or torch still serves ONNX."""
    fake = tmp_path / "no-frameworks"
    for package in ("tensorflow", "torch"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed (test)')\n")
    root = tmp_path / "repository"
    shutil.copytree(digits_source, root / "digits")
    shutil.copytree(native_gateway.repository / "digits_keras_native", root / "keras_native")
    shutil.copytree(native_gateway.repository / "digits_torch_native", root / "torch_native")
    server = start_gateway(root, tmp_path / "gateway.log", env={"PYTHONPATH": str(fake)})
    try:
        entries = index(server)
        assert entries["digits"]["state"] == "READY"
        for name, extra in (("keras_native", "tensorflow"), ("torch_native", "torch")):
            assert entries[name]["state"] == "UNAVAILABLE", entries[name]
            assert f"pip install 'model-gateway[{extra}]'" in entries[name]["reason"], entries[name]
            assert f"{extra} is not installed (test)" in entries[name]["reason"]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
        assert server.http.post("/v2/models/digits/infer", json=body).status_code == 200
        assert server.http.post("/v1/models/digits:predict", json={"instances": [[0.5] * 64]}).status_code == 200
    finally:
        server.stop()
