"""Triton's binary tensor data extension on REST, against the shared gateway (identity models).

tritonclient's HTTP client sends inputs as binary data and asks for binary outputs by default, so
it is the reference client here; hand-built bodies cover the mixed cases and the malformed ones.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http

from tests.conftest import SAMPLES, GatewayProcess

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> triton_http.InferenceServerClient:
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{gateway.http_port}")
    yield client
    client.close()


def post(gateway: GatewayProcess, model: str, header: dict[str, Any], binary: bytes = b"", **headers: str) -> Any:
    encoded = orjson.dumps(header)
    return gateway.http.post(
        f"/v2/models/{model}/infer",
        content=encoded + binary,
        headers={HEADER: str(len(encoded)), **headers},
    )


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary_output", [True, False])
def test_tritonclient_binary_inputs_round_trip_every_datatype(client, datatype, binary_output):
    sample = SAMPLES[datatype]
    tensor = triton_http.InferInput("input", list(sample.shape), datatype)
    tensor.set_data_from_numpy(sample, binary_data=True)
    output = triton_http.InferRequestedOutput("output", binary_data=binary_output)
    result = client.infer(f"identity_{datatype.lower()}", [tensor], outputs=[output])
    answer = result.as_numpy("output")
    assert result.get_output("output")["datatype"] == datatype
    assert ("binary_data_size" in result.get_output("output").get("parameters", {})) is binary_output
    if datatype == "BYTES" and not binary_output:
        answer = np.vectorize(lambda item: item if isinstance(item, bytes) else item.encode(), otypes=[object])(answer)
    assert answer.shape == sample.shape and answer.tolist() == sample.tolist()


def test_binary_and_json_inputs_mix_and_binary_data_output_applies_to_all_outputs(gateway):
    values = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)
    header = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}],
        "parameters": {"binary_data_output": True},
    }
    response = post(gateway, "identity_fp32", header, values.tobytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    json_length = int(response.headers[HEADER])
    answer = orjson.loads(response.content[:json_length])
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 12} and "data" not in answer["outputs"][0]
    assert np.array_equal(np.frombuffer(response.content[json_length:], dtype=np.float32).reshape(1, 3), values)

    # The same request as JSON, answered in JSON: no header, no binary part.
    response = gateway.http.post(
        "/v2/models/identity_fp32/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": values.ravel().tolist()}]},
    )
    assert HEADER not in response.headers and response.json()["outputs"][0]["data"] == values.ravel().tolist()


def test_bytes_binary_data_is_length_prefixed(gateway):
    items = [b"a", "\x00café".encode(), b""]  # ONNX string tensors hold UTF-8
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    header = {
        "inputs": [
            {"name": "input", "datatype": "BYTES", "shape": [1, 3], "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    response = post(gateway, "identity_bytes", header, raw)
    assert response.status_code == 200, response.text
    assert response.content[int(response.headers[HEADER]) :] == raw


@pytest.mark.parametrize(
    ("header", "binary", "length", "message"),
    [
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]},
         b"\x00" * 8, None, "runs past the end of the body"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]},
         b"\x00" * 16, None, "4 bytes of binary data that no input"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}}]},
         b"\x00" * 8, None, "needs 12 bytes"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": -1}}]},
         b"", None, "non-negative integer"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3]}]}, b"", None, "neither data nor"),
        ({"inputs": []}, b"", "999", "but the body holds"),
        ({"inputs": []}, b"", "twelve", "must be a number of bytes"),
    ],
)  # fmt: skip
def test_malformed_binary_bodies_are_400_with_a_reason(gateway, header, binary, length, message):
    encoded = orjson.dumps(header)
    response = gateway.http.post(
        "/v2/models/identity_fp32/infer",
        content=encoded + binary,
        headers={HEADER: length if length is not None else str(len(encoded))},
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert gateway.http.get("/v2/health/ready").status_code == 200
