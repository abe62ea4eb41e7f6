"""End-to-end tests of the serving core against a real gateway process (REST and gRPC)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_HEADERS, SAMPLES, GatewayProcess

BATCH = 64


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> service_pb2_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(gateway.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def triton_http_client(gateway: GatewayProcess) -> triton_http.InferenceServerClient:
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{gateway.http_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton_grpc_client(gateway: GatewayProcess) -> triton_grpc.InferenceServerClient:
    client = triton_grpc.InferenceServerClient(url=gateway.grpc_address)
    yield client
    client.close()


def batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[start : start + BATCH] for start in range(0, len(x), BATCH)]


# ----------------------------------------------------------------------------- health and metadata


def test_health_and_server_metadata_over_both_protocols(gateway, stub, triton_http_client, triton_grpc_client):
    assert gateway.http.get("/v2/health/live").json() == {"live": True}
    assert gateway.http.get("/v2/health/ready").json() == {"ready": True}
    metadata = gateway.http.get("/v2").json()
    assert metadata["name"] == "model-gateway"
    assert {"model_repository", "model_configuration"} <= set(metadata["extensions"])
    assert triton_http_client.is_server_live() and triton_http_client.is_server_ready()
    assert triton_grpc_client.is_server_live() and triton_grpc_client.is_server_ready()
    grpc_metadata = stub.ServerMetadata(service_pb2.ServerMetadataRequest())
    assert grpc_metadata.name == metadata["name"] and list(grpc_metadata.extensions) == metadata["extensions"]
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_model_metadata_over_both_protocols(gateway, triton_grpc_client):
    expected = {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        answer = gateway.http.get(path).json()
        # The execution providers ONNX Runtime runs the model with: CUDA first where onnxruntime-gpu has a GPU.
        assert answer.pop("parameters")["execution_providers"][-1] == "CPUExecutionProvider"
        assert answer == expected
    metadata = triton_grpc_client.get_model_metadata("digits", as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert gateway.http.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert triton_grpc_client.is_model_ready("digits") and triton_grpc_client.is_model_ready("digits", "1")


def test_model_without_config_is_completed_from_the_onnx_graph(gateway):
    metadata = gateway.http.get("/v2/models/digits_noconfig").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    response = gateway.http.post(
        "/v2/models/digits_noconfig/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 10]


# ----------------------------------------------------------------------------- predictions


def test_digits_predictions_match_in_process_onnxruntime_exactly(
    gateway, digits_split, stub, triton_http_client, triton_grpc_client, capsys
):
    _, x_test, _, y_test = digits_split
    session = ort.InferenceSession(str(gateway.repository / "digits" / "1" / "model.onnx"))
    expected = np.concatenate([session.run(["logits"], {"input": batch})[0] for batch in batches(x_test)])

    rest_json, tc_http, tc_grpc, grpc_typed = [], [], [], []
    for batch in batches(x_test):
        shape = list(batch.shape)
        body = {
            "id": "digits",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": batch.tolist()}],
        }
        response = gateway.http.post("/v2/models/digits/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "digits"
        output = response.json()["outputs"][0]
        rest_json.append(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))

        http_input = triton_http.InferInput("input", shape, "FP32")
        http_input.set_data_from_numpy(batch, binary_data=False)
        http_result = triton_http_client.infer(
            "digits", [http_input], outputs=[triton_http.InferRequestedOutput("logits", binary_data=False)]
        )
        tc_http.append(http_result.as_numpy("logits"))

        grpc_input = triton_grpc.InferInput("input", shape, "FP32")
        grpc_input.set_data_from_numpy(batch)  # raw_input_contents
        tc_grpc.append(triton_grpc_client.infer("digits", [grpc_input]).as_numpy("logits"))

        request = service_pb2.ModelInferRequest(model_name="digits", id="typed")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=shape)
        tensor.contents.fp32_contents.extend(batch.ravel().tolist())
        reply = stub.ModelInfer(request)
        assert reply.id == "typed" and not reply.raw_output_contents
        grpc_typed.append(
            np.asarray(reply.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(reply.outputs[0].shape)
        )

    for name, results in {"REST JSON": rest_json, "tritonclient HTTP": tc_http, "tritonclient gRPC (raw)": tc_grpc,
                          "gRPC typed contents": grpc_typed}.items():  # fmt: skip
        served = np.concatenate(results)
        assert served.dtype == np.float32 and served.shape == expected.shape, name
        assert np.array_equal(served, expected), f"{name}: logits differ from in-process ONNX Runtime"
        assert np.array_equal(served.argmax(axis=1), expected.argmax(axis=1)), name
        accuracy = float((served.argmax(axis=1) == y_test).mean())
        with capsys.disabled():
            print(f"\n{name}: accuracy {accuracy:.4f} over {len(y_test)} test digits", end="")
        assert accuracy > 0.9


def test_cuda_first_provider_list_falls_back_to_cpu_with_a_warning(gateway):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: there is nothing to fall back from")
    response = gateway.http.post("/v2/models/digits_cuda_first/infer", json=Case().rest_body())
    assert response.status_code == 200, response.text
    assert "execution provider CUDAExecutionProvider is not available" in gateway.logs()
    parameters = gateway.http.get("/v2/models/digits_cuda_first").json()["parameters"]
    version_files = (gateway.repository / "digits_cuda_first" / "1").rglob("*")
    model_bytes = sum(path.stat().st_size for path in version_files if path.is_file())
    assert parameters == {
        "execution_providers": ["CPUExecutionProvider"],
        "io_binding": False,
        "model_bytes": model_bytes,
    }


def test_a_slow_model_does_not_stall_the_server(gateway, stub):
    """While one call runs for a second or more, health, metadata and other models still answer."""
    finished: list[str] = []

    def call_slow_model() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
        response = httpx.post(f"{gateway.http_url}/v2/models/slow/infer", json=body, timeout=120)
        finished.append(f"slow {response.status_code}")

    slow_call = threading.Thread(target=call_slow_model)
    slow_call.start()
    time.sleep(0.3)  # let the slow call reach the model
    assert gateway.http.get("/v2/health/live").status_code == 200
    assert gateway.http.get("/v2/models/digits").status_code == 200
    assert_still_serving(gateway, stub)
    finished.append("others")
    slow_call.join()
    assert finished == ["others", "slow 200"]


# ----------------------------------------------------------------------------- datatypes


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_over_rest_json(gateway, datatype):
    sample = SAMPLES[datatype]
    data = [item.decode() for item in sample.ravel()] if datatype == "BYTES" else sample.ravel().tolist()
    body = {"inputs": [{"name": "input", "datatype": datatype, "shape": list(sample.shape), "data": data}]}
    response = gateway.http.post(f"/v2/models/identity_{datatype.lower()}/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["datatype"] == datatype and output["shape"] == list(sample.shape)
    assert output["data"] == data


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_over_grpc_raw(triton_grpc_client, datatype):
    sample = SAMPLES[datatype]
    tensor = triton_grpc.InferInput("input", list(sample.shape), datatype)
    tensor.set_data_from_numpy(sample)
    result = triton_grpc_client.infer(f"identity_{datatype.lower()}", [tensor])
    output = result.as_numpy("output")
    assert result.get_output("output").datatype == datatype
    assert output.shape == sample.shape
    assert output.tolist() == sample.tolist()


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d != "FP16"])
def test_every_datatype_round_trips_over_grpc_typed_contents(stub, datatype):
    sample = SAMPLES[datatype]
    request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(sample.shape))
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(sample.ravel().tolist())
    reply = stub.ModelInfer(request)
    assert not reply.raw_output_contents
    assert reply.outputs[0].datatype == datatype and list(reply.outputs[0].shape) == list(sample.shape)
    assert list(getattr(reply.outputs[0].contents, CONTENTS_FIELD[datatype])) == sample.ravel().tolist()


def test_fp16_as_typed_contents_is_refused_and_answered_raw_when_sent_raw(stub):
    request = service_pb2.ModelInferRequest(model_name="identity_fp16")
    request.inputs.add(name="input", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in error.value.details()


CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


# ----------------------------------------------------------------------------- errors over both protocols


@dataclass
class Case:
    """One bad request, sent the same way over REST and gRPC."""

    model: str = "digits"
    version: str = ""
    inputs: list[tuple[str, str, list[int], list[Any]]] = field(
        default_factory=lambda: [("input", "FP32", [1, 64], [0.0] * 64)]
    )
    outputs: list[str] = field(default_factory=list)
    http_status: int = 400
    grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    message: str = ""

    def rest_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in self.inputs]
        }
        if self.outputs:
            body["outputs"] = [{"name": name} for name in self.outputs]
        return body


ERROR_CASES = {
    "unknown model": Case(model="nope", http_status=404, grpc_code=grpc.StatusCode.NOT_FOUND, message="unknown model 'nope'"),
    "unknown version": Case(version="7", http_status=404, grpc_code=grpc.StatusCode.NOT_FOUND, message="no version 7"),
    "model not ready": Case(model="corrupt", http_status=503, grpc_code=grpc.StatusCode.UNAVAILABLE, message="not ready"),
    "broken config": Case(model="broken_config", http_status=503, grpc_code=grpc.StatusCode.UNAVAILABLE, message="instance_cnt"),
    "wrong datatype": Case(inputs=[("input", "INT32", [1, 64], [0] * 64)], message="datatype INT32 does not match the model's FP32"),
    "unknown datatype": Case(inputs=[("input", "FLOAT", [1, 64], [0.0] * 64)], message="unknown datatype 'FLOAT'"),
    "wrong shape": Case(inputs=[("input", "FP32", [1, 63], [0.0] * 63)], message="shape [1, 63] does not match the model's [-1, 64]"),
    "data length": Case(inputs=[("input", "FP32", [2, 64], [0.0] * 64)], message="input 'input': shape [2, 64] of FP32 needs"),
    "missing input": Case(inputs=[], message="missing input 'input'"),
    "unknown input": Case(inputs=[("input", "FP32", [1, 64], [0.0] * 64), ("extra", "FP32", [1], [0.0])], message="unknown input 'extra'"),
    "unknown output": Case(outputs=["probabilities"], message="unknown output 'probabilities'"),
    "batch too large": Case(inputs=[("input", "FP32", [65, 64], [0.0] * 65 * 64)], message="exceeds the model's max_batch_size 64"),
    "negative dim": Case(inputs=[("input", "FP32", [-1, 64], [0.0] * 64)], message="non-negative"),
}  # fmt: skip


def rest_infer(gateway: GatewayProcess, case: Case) -> Any:
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "") + "/infer"
    return gateway.http.post(path, json=case.rest_body())


def grpc_infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, case: Case, raw: bool = True) -> Any:
    request = service_pb2.ModelInferRequest(model_name=case.model, model_version=case.version)
    for name, datatype, shape, values in case.inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            dtype = np.int32 if datatype == "INT32" else np.float32
            request.raw_input_contents.append(np.asarray(values, dtype=dtype).tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELD.get(datatype, "fp32_contents")).extend(values)
    for name in case.outputs:
        request.outputs.add(name=name)
    return stub.ModelInfer(request)


def assert_still_serving(gateway: GatewayProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert rest_infer(gateway, Case()).status_code == 200
    assert list(grpc_infer(stub, Case()).outputs[0].shape) == [1, 10]


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_over_rest(gateway, stub, name):
    case = ERROR_CASES[name]
    response = rest_infer(gateway, case)
    assert response.status_code == case.http_status, response.text
    assert set(response.json()) == {"error"}
    assert case.message in response.json()["error"]
    assert_still_serving(gateway, stub)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_over_grpc(gateway, stub, name, raw):
    case = ERROR_CASES[name]
    with pytest.raises(grpc.RpcError) as error:
        grpc_infer(stub, case, raw)
    assert error.value.code() == case.grpc_code
    assert case.message in error.value.details()
    assert_still_serving(gateway, stub)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2]}]}',
            "has neither data nor parameters.binary_data_size",
        ),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": ["1", 64], "data": []}]}', "inputs.0.shape.0"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}]}', "ragged"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": ["a", "b"]}]}', "string values"),
        (
            b'{"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 1], "data": [300]}]}',
            "do not fit datatype INT8",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 1], "data": [1.5]}]}',
            "floating-point values",
        ),
    ],
)
def test_malformed_rest_bodies_are_400_with_a_reason(gateway, stub, body, message):
    response = gateway.http.post("/v2/models/digits/infer", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert_still_serving(gateway, stub)


def test_raw_contents_that_do_not_pair_up_with_inputs_are_invalid(gateway, stub):
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.extend([b"\0" * 256, b"\0" * 256])
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 entries for 1 inputs" in error.value.details()
    assert_still_serving(gateway, stub)


def test_model_ready_and_metadata_errors_over_both_protocols(gateway, stub):
    assert gateway.http.get("/v2/models/nope/ready").status_code == 404
    assert gateway.http.get("/v2/models/corrupt/ready").json() == {"name": "corrupt", "ready": False}
    assert gateway.http.get("/v2/models/corrupt/ready").status_code == 400
    assert gateway.http.get("/v2/models/digits/versions/x").status_code == 400
    assert gateway.http.get("/v2/models/nope").status_code == 404
    assert gateway.http.get("/v2/no/such/route").json() == {"error": "Not Found"}
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="corrupt")).ready is False
    for call, request in [
        (stub.ModelReady, service_pb2.ModelReadyRequest(name="nope")),
        (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_tritonclient_reports_errors_with_the_right_status(triton_http_client, triton_grpc_client):
    tensor = triton_grpc.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException) as error:
        triton_grpc_client.infer("digits", [tensor])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    http_tensor = triton_http.InferInput("input", [1, 64], "FP32")
    http_tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32), binary_data=False)
    with pytest.raises(InferenceServerException) as http_error:
        triton_http_client.infer("corrupt", [http_tensor])
    assert http_error.value.status() == "503"


# ----------------------------------------------------------------------------- repository index


def test_index_reports_each_model_state_and_the_reason_of_failures(gateway, stub):
    index = {(e["name"], e["version"]): e for e in gateway.http.post("/v2/repository/index").json()}
    assert index[("digits", "1")]["state"] == "READY"
    assert index[("digits_noconfig", "1")]["state"] == "READY"
    broken = index[("broken_config", "")]
    assert broken["state"] == "UNAVAILABLE"
    assert "max_batch_size" in broken["reason"] and "instance_cnt" in broken["reason"]
    corrupt = index[("corrupt", "1")]
    assert corrupt["state"] == "UNAVAILABLE" and "cannot load model.onnx" in corrupt["reason"]
    ready_only = gateway.http.post("/v2/repository/index", json={"ready": True}).json()
    assert {e["name"] for e in ready_only} >= {"digits", "digits_noconfig"}
    assert all(e["state"] == "READY" for e in ready_only)
    grpc_index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    assert {(m.name, m.version, m.state, m.reason) for m in grpc_index.models} == {
        (e["name"], e["version"], e["state"], e["reason"]) for e in index.values()
    }


def test_load_and_unload_need_explicit_mode(gateway, stub):
    response = gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS)
    assert response.status_code == 400 and "explicit" in response.json()["error"]
    with pytest.raises(grpc.RpcError) as error:
        stub.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name="digits"), metadata=list(ADMIN_HEADERS.items())
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert_still_serving(gateway, stub)
