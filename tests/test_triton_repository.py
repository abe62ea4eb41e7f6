"""A Triton model repository served as it is: config.pbtxt per platform, through tritonclient (HTTP and gRPC).

One real gateway (explicit model control mode) serves a repository laid out for Triton, each model
with a hand-written config.pbtxt: an ONNX model made here (three versions, a specific version policy,
dynamic batching, two CPU instances), an ONNX model whose config reshapes its tensors, a TorchScript
model saved here (Triton's ``<name>__<index>`` tensor names, listed out of order), a Keras model
exported here as a SavedModel, and beside them a config.yaml model, a model with a field the gateway
cannot honour, one asking for GPU instances on this CPU-only machine and one with both config files.
The fixture loads every model with tritonclient's ``load_model``; the tests call the models and
Triton's model configuration extension with tritonclient, and load with a config override.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
triton_http = pytest.importorskip("tritonclient.http")
triton_grpc = pytest.importorskip("tritonclient.grpc")

import onnx  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import ADMIN_HEADERS, GatewayProcess, start_gateway, write_identity_model  # noqa: E402

pytestmark = [
    # Keras 3's export converts TF variables with np.array(x), which numpy 2 flags (not our code).
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    # TorchScript is deprecated in torch 2.13, but Triton repositories hold it: the test writes one.
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:DeprecationWarning"),
]

SCALED_CONFIG = """\
# Triton's own syntax: list brackets, enums by name, a comment.
name: "scaled"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 500 }
instance_group [ { count: 2, kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

RESHAPED_CONFIG = """\
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } } ]
output [
  { name: "row_sums" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "same" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } }
]
"""

TORCHSCRIPT_CONFIG = """\
platform: "pytorch_libtorch"
max_batch_size: 4
input [
  { name: "SCALE__1" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "X__0" data_type: TYPE_FP32 dims: [ 3 ] }
]
output [
  { name: "SUM__1" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "PRODUCT__0" data_type: TYPE_FP32 dims: [ 3 ] }
]
instance_group [ { kind: KIND_CPU } ]
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""

SAVEDMODEL_CONFIG = """\
platform: "tensorflow_savedmodel"
max_batch_size: 4
input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output_0" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

UNSUPPORTED_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 4
response_cache { enable: true }
"""

GPU_CONFIG = """\
platform: "onnxruntime_onnx"
instance_group [ { count: 1 kind: KIND_GPU } ]
"""

#: Weights of the Keras model (Dense 4 -> 2).
KERAS_KERNEL = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
KERAS_BIAS = np.array([1.0, -1.0], dtype=np.float32)


class Pair(torch.nn.Module):
    """TorchScript: (x [b, 3], scale [b, 1]) -> (x * scale, sum of x along dim 1)."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * scale, x.sum(dim=1, keepdim=True)


def write_onnx(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> None:
    graph = helper.make_graph(nodes, path.parent.parent.name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def write_scaled_model(path: Path, factor: float) -> None:
    """y = x * factor, x and y FP32 [batch, 4]."""
    write_onnx(
        path,
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor")],
    )


def write_reshaped_model(path: Path) -> None:
    """x [batch, 2, 3] -> row_sums [batch, 2] (sum over the last axis), same = x [batch, 2, 3]."""
    write_onnx(
        path,
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["row_sums"], keepdims=0),
            helper.make_node("Identity", ["x"], ["same"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])],
        [
            helper.make_tensor_value_info("row_sums", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["batch", 2, 3]),
        ],
        [numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")],
    )


def export_keras_savedmodel(path: Path) -> None:
    features = keras.Input((4,), name="features")
    dense = keras.layers.Dense(2)
    model = keras.Model(features, dense(features))
    dense.set_weights([KERAS_KERNEL, KERAS_BIAS])
    model.export(str(path), verbose=False)


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-repository")
    for version in (1, 2, 3):
        write_scaled_model(root / "scaled" / str(version) / "model.onnx", float(version))
    (root / "scaled" / "config.pbtxt").write_text(SCALED_CONFIG)
    write_reshaped_model(root / "reshaped" / "1" / "model.onnx")
    (root / "reshaped" / "config.pbtxt").write_text(RESHAPED_CONFIG)
    (root / "torchscript" / "1").mkdir(parents=True)
    torch.jit.script(Pair()).save(str(root / "torchscript" / "1" / "model.pt"))
    (root / "torchscript" / "config.pbtxt").write_text(TORCHSCRIPT_CONFIG)
    export_keras_savedmodel(root / "savedmodel" / "1" / "model.savedmodel")
    (root / "savedmodel" / "config.pbtxt").write_text(SAVEDMODEL_CONFIG)
    write_identity_model(root / "yaml_model" / "1" / "model.onnx", "FP32")
    (root / "yaml_model" / "config.yaml").write_text("max_batch_size: 4\n")
    write_identity_model(root / "unsupported" / "1" / "model.onnx", "FP32")
    (root / "unsupported" / "config.pbtxt").write_text(UNSUPPORTED_CONFIG)
    write_identity_model(root / "gpu_only" / "1" / "model.onnx", "FP32")
    (root / "gpu_only" / "config.pbtxt").write_text(GPU_CONFIG)
    write_identity_model(root / "both" / "1" / "model.onnx", "FP32")
    (root / "both" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    (root / "both" / "config.yaml").write_text("max_batch_size: 4\n")
    return root


LOADABLE = ("scaled", "reshaped", "torchscript", "savedmodel", "yaml_model")
REFUSED = ("unsupported", "gpu_only", "both")


@pytest.fixture(scope="module")
def triton_gateway(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = start_gateway(
        triton_repository, tmp_path_factory.mktemp("triton-logs") / "gateway.log", "--model-control-mode", "explicit"
    )
    server.load_errors = {}  # type: ignore[attr-defined]
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=120)
    try:
        for name in (*LOADABLE, *REFUSED):
            try:
                client.load_model(name, headers=ADMIN_HEADERS)
            except InferenceServerException as error:
                server.load_errors[name] = str(error)  # type: ignore[attr-defined]
        yield server
    finally:
        client.close()
        server.stop()


@pytest.fixture
def clients(triton_gateway: GatewayProcess) -> Iterator[tuple[Any, Any]]:
    http = triton_http.InferenceServerClient(triton_gateway.http_url.removeprefix("http://"))
    grpc = triton_grpc.InferenceServerClient(triton_gateway.grpc_address)
    yield http, grpc
    http.close()
    grpc.close()


def infer(client: Any, module: Any, model: str, inputs: dict[str, np.ndarray], version: str = "") -> dict[str, Any]:
    """The model's outputs for ``inputs`` through one tritonclient (``module``: tritonclient.http or .grpc)."""
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors, model_version=version)
    response = result.get_response() if module is triton_http else result.get_response(as_json=True)
    return {output["name"]: result.as_numpy(output["name"]) for output in response["outputs"]}


def both_ways(clients: tuple[Any, Any], model: str, inputs: dict[str, np.ndarray], version: str = "") -> dict[str, Any]:
    """The outputs over HTTP, checked equal to those over gRPC."""
    http, grpc = clients
    over_http = infer(http, triton_http, model, inputs, version)
    over_grpc = infer(grpc, triton_grpc, model, inputs, version)
    assert over_http.keys() == over_grpc.keys()
    for name in over_http:
        np.testing.assert_array_equal(over_http[name], over_grpc[name])
    return over_http


def test_every_model_with_a_config_the_gateway_honours_loads(triton_gateway: GatewayProcess) -> None:
    assert not any(name in triton_gateway.load_errors for name in LOADABLE), triton_gateway.load_errors  # type: ignore[attr-defined]
    platforms = {name: triton_gateway.http.get(f"/v2/models/{name}").json()["platform"] for name in LOADABLE}
    assert platforms == {
        "scaled": "onnxruntime_onnx",
        "reshaped": "onnxruntime_onnx",
        "torchscript": "pytorch_libtorch",
        "savedmodel": "tensorflow_savedmodel",
        "yaml_model": "onnxruntime_onnx",
    }


def test_onnx_model_serves_the_versions_its_policy_names(triton_gateway: GatewayProcess, clients: Any) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert triton_gateway.http.get("/v2/models/scaled").json()["versions"] == ["1", "3"]
    np.testing.assert_array_equal(both_ways(clients, "scaled", {"x": x})["y"], x * 3)
    np.testing.assert_array_equal(both_ways(clients, "scaled", {"x": x}, version="1")["y"], x)
    index = {entry["version"]: entry for entry in triton_gateway.http.get("/v2/repository/models/scaled").json()}
    assert index["2"]["reason"] == "not served: the version policy does not select it"
    assert triton_gateway.http.post("/v2/models/scaled/versions/2/infer", json={"inputs": []}).status_code == 404
    metadata = triton_gateway.http.get("/v2/models/scaled").json()
    assert metadata["parameters"]["execution_providers"] == ["CPUExecutionProvider"]  # KIND_CPU


def test_reshape_gives_the_model_its_own_shape_and_clients_theirs(clients: Any) -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    outputs = both_ways(clients, "reshaped", {"x": x})
    # The model sums each row of [2, 3]: only a real reshape of [6] gives these sums.
    np.testing.assert_array_equal(outputs["row_sums"], x.reshape(2, 2, 3).sum(axis=2))
    np.testing.assert_array_equal(outputs["same"], x)
    assert outputs["same"].shape == (2, 6)


def test_torchscript_takes_tritons_indexed_names_in_forwards_order(clients: Any) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    scale = np.array([[2], [-1]], dtype=np.float32)
    outputs = both_ways(clients, "torchscript", {"SCALE__1": scale, "X__0": x})
    np.testing.assert_array_equal(outputs["PRODUCT__0"], x * scale)
    np.testing.assert_array_equal(outputs["SUM__1"], x.sum(axis=1, keepdims=True))


def test_savedmodel_from_keras_serves_its_signature(clients: Any) -> None:
    features = np.array([[1, 0, 0, 0], [0.5, 1, -1, 2]], dtype=np.float32)
    outputs = both_ways(clients, "savedmodel", {"features": features})
    np.testing.assert_allclose(outputs["output_0"], features @ KERAS_KERNEL + KERAS_BIAS, rtol=1e-6)


def test_a_config_yaml_model_serves_beside_the_config_pbtxt_ones(clients: Any) -> None:
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(both_ways(clients, "yaml_model", {"input": x})["output"], x)


def test_a_model_the_gateway_cannot_honour_fails_alone_with_the_reason(triton_gateway: GatewayProcess) -> None:
    errors = triton_gateway.load_errors  # type: ignore[attr-defined]
    assert "config.pbtxt line 3: response_cache is not supported" in errors["unsupported"]
    assert "KIND_GPU" in errors["gpu_only"] and "runs on the CPU here" in errors["gpu_only"]
    assert "holds both config.yaml and config.pbtxt" in errors["both"]
    index = {entry["name"]: entry for entry in triton_gateway.http.post("/v2/repository/index").json()}
    assert "response_cache is not supported" in index["unsupported"]["reason"]
    assert index["unsupported"]["state"] == "UNAVAILABLE"
    assert all(index[name]["state"] == "READY" for name in LOADABLE)


def test_the_model_configuration_is_the_same_over_rest_and_grpc(triton_gateway: GatewayProcess, clients: Any) -> None:
    _, grpc = clients
    for name in ("scaled", "reshaped", "torchscript", "savedmodel"):
        over_rest = triton_gateway.http.get(f"/v2/models/{name}/config").json()
        over_grpc = grpc.get_model_config(name).config
        assert json_format.ParseDict(over_rest, model_config_pb2.ModelConfig()) == over_grpc, name
    scaled = grpc.get_model_config("scaled").config
    assert (scaled.platform, scaled.max_batch_size) == ("onnxruntime_onnx", 8)
    assert list(scaled.version_policy.specific.versions) == [1, 3]
    assert list(scaled.dynamic_batching.preferred_batch_size) == [4]
    assert scaled.dynamic_batching.max_queue_delay_microseconds == 500
    group = scaled.instance_group[0]
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (2, "KIND_CPU")
    reshaped = grpc.get_model_config("reshaped", as_json=True)["config"]
    assert reshaped["input"][0]["reshape"] == {"shape": ["2", "3"]}
    assert "reshape" not in reshaped["output"][0]


def test_a_load_with_a_config_override_replaces_the_config_until_the_next_load(
    triton_gateway: GatewayProcess, clients: Any
) -> None:
    http, grpc = clients
    x = np.ones((1, 4), dtype=np.float32)
    override = {"backend": "onnxruntime", "max_batch_size": 2, "version_policy": {"specific": {"versions": [2]}}}
    try:
        http.load_model("scaled", headers=ADMIN_HEADERS, config=json.dumps(override))
        assert triton_gateway.http.get("/v2/models/scaled").json()["versions"] == ["2"]
        np.testing.assert_array_equal(both_ways(clients, "scaled", {"x": x})["y"], x * 2)
        config = grpc.get_model_config("scaled").config
        assert (config.max_batch_size, list(config.version_policy.specific.versions)) == (2, [2])
        batch_of_three = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": [0.0] * 12}]}
        refused = triton_gateway.http.post("/v2/models/scaled/infer", json=batch_of_three)
        assert refused.status_code == 400 and "max_batch_size 2" in refused.json()["error"]

        # Over gRPC too, and a bad override changes nothing.
        grpc.load_model("scaled", headers=ADMIN_HEADERS, config=json.dumps({**override, "max_batch_size": 4}))
        assert grpc.get_model_config("scaled").config.max_batch_size == 4
        with pytest.raises(InferenceServerException, match=r"sequence_batching is not supported") as bad:
            http.load_model("scaled", headers=ADMIN_HEADERS, config='{"sequence_batching": {}}')
        assert "400" in str(bad.value)
        with pytest.raises(InferenceServerException, match=r"model files sent with the request"):
            grpc.load_model(
                "scaled", headers=ADMIN_HEADERS, config=json.dumps(override), files={"file:1/model.onnx": b"x"}
            )
        assert grpc.get_model_config("scaled").config.max_batch_size == 4
    finally:
        http.load_model("scaled", headers=ADMIN_HEADERS)  # no override: config.pbtxt again
    assert triton_gateway.http.get("/v2/models/scaled").json()["versions"] == ["1", "3"]
    assert grpc.get_model_config("scaled").config.max_batch_size == 8
