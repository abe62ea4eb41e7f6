"""TLS for REST and gRPC when given a certificate and a key; CORS only when origins are configured."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import GatewayProcess

DIGIT_REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_gateway(
    authority: trustme.CA, serving_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway over TLS (certificate for 127.0.0.1 from a throwaway CA), with one CORS origin allowed."""
    folder = tmp_path_factory.mktemp("tls")
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certificate.private_key_pem.write_to_path(str(folder / "key.pem"))
    (folder / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    gateway = GatewayProcess(
        serving_repository,
        folder / "gateway.log",
        "--tls-cert-file",
        str(folder / "cert.pem"),
        "--tls-key-file",
        str(folder / "key.pem"),
        "--cors-allow-origin",
        ALLOWED_ORIGIN,
    )
    context = ssl.create_default_context()
    authority.configure_trust(context)
    gateway.http_url = f"https://127.0.0.1:{gateway.http_port}"
    gateway.http = httpx.Client(base_url=gateway.http_url, verify=context, timeout=30)
    try:
        gateway.wait_ready()
    except Exception:
        gateway.stop()
        raise
    yield gateway
    gateway.stop()


def grpc_infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([0.5] * 64)
    return request


def test_rest_is_served_over_tls_only(tls_gateway: GatewayProcess):
    response = tls_gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST)
    assert response.status_code == 200
    assert len(response.json()["outputs"][0]["data"]) == 10
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_gateway.http_port}/v2/health/ready", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a certificate no trusted authority signed
        httpx.get(f"{tls_gateway.http_url}/v2/health/ready", timeout=10)


def test_grpc_is_served_over_tls_only(tls_gateway: GatewayProcess, authority: trustme.CA):
    credentials = grpc.ssl_channel_credentials(root_certificates=authority.cert_pem.bytes())
    with grpc.secure_channel(tls_gateway.grpc_address, credentials) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_infer_request(), timeout=30)
    assert reply.outputs[0].shape == [1, 10]
    with grpc.insecure_channel(tls_gateway.grpc_address) as channel, pytest.raises(grpc.RpcError) as refused:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_infer_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        "/v2/models/digits/infer",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )


def test_cors_answers_only_the_configured_origins(tls_gateway: GatewayProcess):
    allowed = preflight(tls_gateway.http, ALLOWED_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    refused = preflight(tls_gateway.http, "https://evil.example.com")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    response = tls_gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST, headers={"origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_no_cors_headers_unless_configured(gateway: GatewayProcess):
    response = preflight(gateway.http, ALLOWED_ORIGIN)
    assert "access-control-allow-origin" not in response.headers
    response = gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST, headers={"origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("access-control-")]
