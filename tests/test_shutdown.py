"""Graceful shutdown on SIGTERM: readiness turns false at once, new requests get 503 / UNAVAILABLE,
requests in flight finish (up to --exit-timeout-seconds), then the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import GatewayProcess, start_gateway, write_slow_model

SLOW_REQUEST = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.5]}]}


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model whose every request takes about half a second or more: a window in which to stop the server."""
    root = tmp_path_factory.mktemp("slow-repository")
    write_slow_model(root / "slow" / "1" / "model.onnx", layers=80)
    return root


def send_in_background(gateway: GatewayProcess, count: int) -> tuple[list[threading.Thread], list[object]]:
    """Start ``count`` slow requests, each on its own connection; each result lands in the returned list."""
    results: list[object] = []

    def call() -> None:
        try:
            with httpx.Client(base_url=gateway.http_url, timeout=120) as client:
                results.append(client.post("/v2/models/slow/infer", json=SLOW_REQUEST))
        except httpx.HTTPError as error:
            results.append(error)

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def inflight(gateway: GatewayProcess) -> float:
    for line in gateway.http.get("/metrics").text.splitlines():
        if line.startswith('gateway_inference_inflight_requests{model="slow"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def slow_grpc_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(0.5)
    return request


@pytest.mark.parametrize("grpc_server", ["asyncio", "threads"])
def test_sigterm_drains_requests_in_flight_and_refuses_new_ones(
    slow_repository: Path, tmp_path: Path, grpc_server: str
):
    gateway = start_gateway(
        slow_repository, tmp_path / "gateway.log", "--exit-timeout-seconds", "120", "--grpc-server", grpc_server
    )
    in_flight_channel = grpc.insecure_channel(gateway.grpc_address)
    try:
        threads, results = send_in_background(gateway, 3)
        in_flight_call = service_pb2_grpc.GRPCInferenceServiceStub(in_flight_channel).ModelInfer.future(
            slow_grpc_request(), timeout=120
        )
        wait_for(lambda: inflight(gateway) == 4)  # one running on the one instance, three queued behind it
        gateway.process.send_signal(signal.SIGTERM)

        # KServe v2: readiness false is a 4xx answer.
        wait_for(lambda: gateway.http.get("/v2/health/ready").json() == {"ready": False}, timeout=10)
        with grpc.insecure_channel(gateway.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(slow_grpc_request(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        response = gateway.http.post("/v2/models/slow/infer", json=SLOW_REQUEST)
        assert response.status_code == 503
        assert "shutting down" in response.json()["error"]
        assert gateway.http.get("/v2/health/live").status_code == 200
        assert gateway.process.poll() is None  # still draining: the queued requests take seconds

        for thread in threads:
            thread.join(timeout=120)
        assert [getattr(result, "status_code", result) for result in results] == [200, 200, 200]
        assert in_flight_call.result(timeout=120).model_name == "slow"  # the gRPC call in flight was answered
        assert gateway.process.wait(timeout=30) == 0
    finally:
        in_flight_channel.close()
        gateway.stop()
    assert "requests in flight finished" in gateway.logs()


def test_requests_still_running_at_the_exit_timeout_are_abandoned(slow_repository: Path, tmp_path: Path):
    gateway = start_gateway(slow_repository, tmp_path / "gateway.log", "--exit-timeout-seconds", "0.5")
    try:
        threads, results = send_in_background(gateway, 6)  # three seconds of work or more on one instance
        wait_for(lambda: inflight(gateway) == 6)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=30) == 0
        for thread in threads:
            thread.join(timeout=30)
    finally:
        gateway.stop()
    answered = [result for result in results if getattr(result, "status_code", None) == 200]
    assert len(results) == 6
    assert len(answered) < 6  # the process did not wait for all of them
    assert "still in flight after 0.5 s; stopping" in gateway.logs()
