"""Model control modes against real gateway processes: explicit load/unload and poll."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_HEADERS, GatewayProcess, start_gateway

DIGIT_REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.25] * 64}]}


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def install(source: Path, destination: Path) -> None:
    """Copy a folder next to its destination, then rename it into place (as an atomic push would)."""
    staging = destination.with_name(f".staging-{destination.name}")
    shutil.copytree(source, staging)
    staging.rename(destination)


def index_of(gateway: GatewayProcess) -> dict[tuple[str, str], dict[str, str]]:
    return {(e["name"], e["version"]): e for e in gateway.http.post("/v2/repository/index").json()}


@pytest.fixture
def explicit_gateway(tmp_path: Path, digits_source: Path) -> Iterator[GatewayProcess]:
    repository = tmp_path / "repository"
    shutil.copytree(digits_source, repository / "digits")
    (repository / "corrupt" / "1").mkdir(parents=True)
    (repository / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08garbage")
    server = start_gateway(repository, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    yield server
    server.stop()


def test_explicit_mode_loads_and_unloads_on_request_over_both_protocols(explicit_gateway: GatewayProcess):
    gateway = explicit_gateway
    assert index_of(gateway) == {
        ("corrupt", ""): {"name": "corrupt", "version": "", "state": "UNAVAILABLE", "reason": "not loaded"},
        ("digits", ""): {"name": "digits", "version": "", "state": "UNAVAILABLE", "reason": "not loaded"},
    }
    response = gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST)
    assert response.status_code == 404 and "not loaded" in response.json()["error"]

    # The management API needs the admin token; the inference API does not.
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic dGVzdA=="}):
        response = gateway.http.post("/v2/repository/models/digits/load", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        load = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelLoad",
            request_serializer=lambda _: b"\n\x06digits",  # RepositoryModelLoadRequest(model_name="digits")
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as rpc_error:
            load(None, metadata=[("authorization", "Bearer wrong-token")])
        assert rpc_error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert index_of(gateway)[("digits", "")]["state"] == "UNAVAILABLE"

    assert gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS).status_code == 200
    assert gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST).status_code == 200
    assert index_of(gateway)[("digits", "1")]["state"] == "READY"

    grpc_client = triton_grpc.InferenceServerClient(url=gateway.grpc_address)
    with pytest.raises(InferenceServerException) as error:
        grpc_client.load_model("corrupt", headers=ADMIN_HEADERS)
    assert error.value.status() == "StatusCode.UNAVAILABLE"
    assert "cannot load model.onnx" in error.value.message()
    assert index_of(gateway)[("corrupt", "1")]["state"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as error:
        grpc_client.load_model("no_such_model", headers=ADMIN_HEADERS)
    assert error.value.status() == "StatusCode.NOT_FOUND"

    http_client = triton_http.InferenceServerClient(url=f"127.0.0.1:{gateway.http_port}")
    http_client.unload_model("digits", headers=ADMIN_HEADERS)
    assert not http_client.is_model_ready("digits")
    response = gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST)
    assert response.status_code == 404 and "not loaded" in response.json()["error"]
    with pytest.raises(InferenceServerException) as error:
        grpc_client.unload_model("digits", headers=ADMIN_HEADERS)
    assert error.value.status() == "StatusCode.NOT_FOUND"
    grpc_client.load_model("digits", headers=ADMIN_HEADERS)
    assert grpc_client.is_model_ready("digits")
    grpc_client.close()
    http_client.close()


def test_poll_mode_follows_the_repository_without_a_restart(tmp_path: Path, digits_source: Path):
    repository = tmp_path / "repository"
    shutil.copytree(digits_source, repository / "digits")
    gateway = start_gateway(
        repository, tmp_path / "gateway.log", "--model-control-mode", "poll", "--repository-poll-seconds", "0.2"
    )
    try:

        def versions() -> list[str]:
            return gateway.http.get("/v2/models/digits").json().get("versions", [])

        assert versions() == ["1"]
        # A new version is loaded; the policy (latest 1) then retires version 1.
        install(digits_source / "1", repository / "digits" / "2")
        wait_for(lambda: versions() == ["2"], what="version 2 to replace version 1")
        assert gateway.http.post("/v2/models/digits/versions/2/infer", json=DIGIT_REQUEST).status_code == 200
        assert gateway.http.post("/v2/models/digits/versions/1/infer", json=DIGIT_REQUEST).status_code == 404

        # A version whose files break keeps its previous files serving, and the index says why.
        (repository / "digits" / "2" / "model.onnx").write_bytes(b"broken on purpose")
        wait_for(lambda: index_of(gateway)[("digits", "2")]["reason"] != "", what="the failed reload")
        entry = index_of(gateway)[("digits", "2")]
        assert entry["state"] == "READY" and "reload failed" in entry["reason"]
        assert gateway.http.post("/v2/models/digits/versions/2/infer", json=DIGIT_REQUEST).status_code == 200

        # Removing version 2 brings version 1 back.
        shutil.rmtree(repository / "digits" / "2")
        wait_for(lambda: versions() == ["1"], what="version 1 to come back")

        # A new model folder is loaded, and unloaded when it goes away.
        install(repository / "digits", repository / "digits_copy")
        wait_for(lambda: gateway.http.get("/v2/models/digits_copy/ready").status_code == 200, what="digits_copy")
        shutil.rmtree(repository / "digits_copy")
        wait_for(lambda: gateway.http.get("/v2/models/digits_copy").status_code == 404, what="digits_copy to go")
        assert gateway.http.post("/v2/models/digits/infer", json=DIGIT_REQUEST).status_code == 200

        with grpc.insecure_channel(gateway.grpc_address) as channel:  # still answering gRPC after all that
            grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.logs()
    assert "Traceback" not in gateway.logs()
