"""`gateway serve --workers 2`: worker processes sharing the REST and gRPC ports.

Which worker answered is told by the request id: each process draws a random prefix at start and
numbers its requests after it (``<prefix>-<n>``). Every call below opens a new connection, so that
SO_REUSEPORT spreads the calls over the workers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.repository.packages import pack_version
from tests.conftest import ADMIN_HEADERS, GatewayProcess, children_named, start_gateway

WORKERS = 2
DIGIT = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
DIGIT_REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": DIGIT.ravel().tolist()}]}


def worker_of(request_id: str) -> str:
    """The worker prefix of a request id ``<prefix>-<n>``."""
    return request_id.rsplit("-", 1)[0]


def rest_infer(gateway: GatewayProcess, path: str = "/v2/models/digits/infer") -> httpx.Response:
    """One inference request on a connection of its own."""
    with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
        return client.post(path, json=DIGIT_REQUEST)


def grpc_infer(gateway: GatewayProcess) -> tuple[list[float], str]:
    """One gRPC inference on a channel (and TCP connection) of its own: the logits and the request id."""
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(DIGIT.tobytes())
    # A local subchannel pool: otherwise channels to one address share one connection.
    with grpc.insecure_channel(gateway.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        reply, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(request, timeout=30)
    request_id = dict(call.trailing_metadata())["x-request-id"]
    return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).tolist(), request_id


def served_by(response: httpx.Response) -> str | None:
    """The worker that answered ``response`` successfully, or None for a failed answer."""
    return worker_of(response.headers["x-request-id"]) if response.status_code == 200 else None


def wait_until_every_worker_answers(call: Callable[[], str | None], timeout: float = 90) -> None:
    """Call ``call`` (the worker that answered, or None) on new connections until each worker has answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < WORKERS:
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        try:
            worker = call()
        except (httpx.HTTPError, grpc.RpcError):
            worker = None
        if worker is None:
            time.sleep(0.1)
        else:
            seen.add(worker)


def metric_samples(gateway: GatewayProcess, name: str) -> dict[str, float]:
    """The samples of one metric from /metrics: label text -> value."""
    samples = {}
    for line in gateway.http.get("/metrics").text.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def worker_pids(gateway: GatewayProcess) -> list[int]:
    """The live worker processes of a supervisor (not its model runners), as its log names them."""
    return children_named(gateway, r"worker \d+ started \(pid (\d+)\)")


def runner_pids(gateway: GatewayProcess, version: int) -> list[int]:
    """The live model runner processes of digits' ``version``, as the supervisor's log names them."""
    return children_named(gateway, rf"model runner of model digits version {version} started \(pid (\d+)\)")


def wait_for_runners(gateway: GatewayProcess, version: int, count: int) -> list[int]:
    """Wait until ``count`` runners of digits' ``version`` live (a runner no front end needs stops); their pids."""
    deadline = time.monotonic() + 30
    while len(pids := runner_pids(gateway, version)) != count:
        assert time.monotonic() < deadline, gateway.logs()[-3000:]
        time.sleep(0.1)
    return pids


def batch_sizes_everywhere(gateway: GatewayProcess) -> set[int]:
    """The max_batch_size of the digits model's configuration as 20 new connections (both workers) see it."""
    sizes = set()
    for _ in range(20):
        with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
            sizes.add(client.get("/v2/models/digits/config").json()["max_batch_size"])
    return sizes


@pytest.fixture
def digits_repository(tmp_path: Path, digits_source: Path) -> Path:
    root = tmp_path / "repository"
    shutil.copytree(digits_source, root / "digits")
    return root


@pytest.fixture
def two_workers(digits_repository: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = start_gateway(digits_repository, tmp_path / "gateway.log", "--workers", str(WORKERS))
    # Readiness answered by one worker says nothing of the other: wait until each has loaded the model,
    # so that no request meets a worker still loading (a 503 the metrics would count).
    deadline = time.monotonic() + 60
    while gateway.logs().count("model digits serving versions [1]") < WORKERS:
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.1)
    yield gateway
    gateway.stop()


def test_workers_share_both_ports_and_their_metrics_add_up(two_workers: GatewayProcess):
    gateway = two_workers
    sent = 0

    def rest_call() -> str | None:
        nonlocal sent
        sent += 1
        response = rest_infer(gateway)
        assert response.status_code == 200, response.text
        return served_by(response)

    wait_until_every_worker_answers(rest_call)
    rest_answers = [rest_infer(gateway) for _ in range(30)]
    grpc_answers = [grpc_infer(gateway) for _ in range(30)]
    sent += len(rest_answers)

    assert all(response.status_code == 200 for response in rest_answers)
    expected = rest_answers[0].json()["outputs"][0]["data"]
    assert all(response.json()["outputs"][0]["data"] == expected for response in rest_answers)
    assert all(np.allclose(logits, expected, rtol=1e-6) for logits, _ in grpc_answers)
    assert len({worker_of(response.headers["x-request-id"]) for response in rest_answers}) == WORKERS
    assert len({worker_of(request_id) for _, request_id in grpc_answers}) == WORKERS

    # Whichever worker answers /metrics counts every worker's requests.
    for _ in range(4):
        counts = metric_samples(gateway, "gateway_inference_requests_total")
        assert counts == {
            '{model="digits",protocol="v2-grpc",status="success",version="1"}': 30.0,
            '{model="digits",protocol="v2-rest",status="success",version="1"}': float(sent),
        }
        durations = metric_samples(gateway, "gateway_inference_request_duration_seconds_count")
        assert sum(durations.values()) == sent + 30
        assert set(metric_samples(gateway, "gateway_inference_inflight_requests").values()) == {0.0}
        assert metric_samples(gateway, "gateway_model_ready") == {
            '{backend="onnxruntime",model="digits",version="1"}': 1.0
        }


def test_a_worker_that_dies_is_replaced(two_workers: GatewayProcess):
    gateway = two_workers
    wait_until_every_worker_answers(lambda: served_by(rest_infer(gateway)))
    before = {worker_of(rest_infer(gateway).headers["x-request-id"]) for _ in range(20)}
    victim, survivor = worker_pids(gateway)
    os.kill(victim, signal.SIGKILL)  # a worker of the gateway this test started

    deadline = time.monotonic() + 60
    while victim in worker_pids(gateway) or len(worker_pids(gateway)) < WORKERS:
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.1)
    assert survivor in worker_pids(gateway)
    seen: set[str] = set()
    while len(seen - before) < 1:  # the new worker has a prefix of its own
        assert time.monotonic() < deadline, gateway.logs()
        response = rest_infer(gateway)
        if response.status_code == 200:
            seen.add(worker_of(response.headers["x-request-id"]))
    assert "died with status -9; restarting it" in gateway.logs()


def test_management_requests_take_effect_in_every_worker(digits_repository: Path, digits_source: Path, tmp_path: Path):
    gateway = start_gateway(
        digits_repository, tmp_path / "gateway.log", "--workers", str(WORKERS), "--model-control-mode", "explicit"
    )
    try:
        # Explicit mode: nothing is loaded until asked; one load request reaches one worker. It carries a
        # config override (Triton's parameters.config), which every worker loads with.
        override = {"parameters": {"config": '{"backend": "onnxruntime", "max_batch_size": 3}'}}
        load = gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS, json=override)
        assert load.status_code == 200, load.text
        answers = [rest_infer(gateway) for _ in range(20)]
        assert [response.status_code for response in answers] == [200] * 20
        assert len({worker_of(response.headers["x-request-id"]) for response in answers}) == WORKERS
        assert batch_sizes_everywhere(gateway) == {3}
        # Model runners (the default with several workers): both workers share one runner of the version.
        (runner,) = wait_for_runners(gateway, 1, 1)

        # Shared memory regions would be known to one worker only: registering is refused with the reason.
        with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
            refused = client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/k", "byte_size": 8})
        assert refused.status_code == 400 and "needs a single gateway process" in refused.json()["error"]

        # A worker started in place of one that died loads what the management API loaded.
        victim = worker_pids(gateway)[0]
        os.kill(victim, signal.SIGKILL)  # a worker of the gateway this test started
        wait_until_every_worker_answers(lambda: served_by(rest_infer(gateway)))
        assert victim not in worker_pids(gateway)
        answers = [rest_infer(gateway) for _ in range(20)]
        assert [response.status_code for response in answers] == [200] * 20
        assert batch_sizes_everywhere(gateway) == {3}  # the replayed load kept its config override
        assert runner_pids(gateway, 1) == [runner]  # the new worker found the runner serving

        # An upload installs version 2 once and every worker serves it when the answer comes.
        package = tmp_path / "package.tar.gz"
        pack_version(digits_source / "1", package)
        response = gateway.http.put(
            "/v2/repository/models/digits/versions/2", content=package.read_bytes(), headers=ADMIN_HEADERS
        )
        assert response.status_code == 201, response.text
        answers = [rest_infer(gateway, "/v2/models/digits/versions/2/infer") for _ in range(20)]
        assert [response.status_code for response in answers] == [200] * 20
        assert len({worker_of(response.headers["x-request-id"]) for response in answers}) == WORKERS
        assert batch_sizes_everywhere(gateway) == {3}  # reloaded after the upload: still the override
        wait_for_runners(gateway, 2, 1)

        # Deleting version 2 retires it in every worker, and version 1 serves again everywhere.
        response = gateway.http.delete("/v2/repository/models/digits/versions/2", headers=ADMIN_HEADERS)
        assert response.status_code == 200 and response.json()["versions"] == ["2"], response.text
        assert not (digits_repository / "digits" / "2").exists()
        assert [rest_infer(gateway, "/v2/models/digits/versions/2/infer").status_code for _ in range(20)] == [404] * 20
        answers = [rest_infer(gateway) for _ in range(20)]
        assert [response.status_code for response in answers] == [200] * 20
        assert len({worker_of(response.headers["x-request-id"]) for response in answers}) == WORKERS
        wait_for_runners(gateway, 2, 0)

        assert gateway.http.post("/v2/repository/models/digits/unload", headers=ADMIN_HEADERS).status_code == 200
        assert [rest_infer(gateway).status_code for _ in range(20)] == [404] * 20
        wait_for_runners(gateway, 1, 0)  # no worker serves it: its runner stopped

        # Deleting a loaded model: no worker serves it or lists it any more.
        assert gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS).status_code == 200
        assert gateway.http.delete("/v2/repository/models/digits", headers=ADMIN_HEADERS).status_code == 200
        assert not (digits_repository / "digits").exists()
        assert [rest_infer(gateway).status_code for _ in range(20)] == [404] * 20
        for _ in range(20):
            with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
                assert client.post("/v2/repository/index").json() == []
    finally:
        gateway.stop()


def test_sigterm_stops_every_worker_and_cleans_up(digits_repository: Path, tmp_path: Path):
    token_dir = tmp_path / "tokens"
    gateway = start_gateway(
        digits_repository,
        tmp_path / "gateway.log",
        "--workers",
        str(WORKERS),
        "--admin-token-dir",
        str(token_dir),
        admin_token=None,
    )
    try:
        token_file = token_dir / f"admin-token-{gateway.http_port}"
        token = token_file.read_text().strip()
        # One token, generated by the supervisor, is the token of every worker.
        for _ in range(10):
            with httpx.Client(base_url=gateway.http_url) as client:
                response = client.post(
                    "/v2/repository/models/digits/load", headers={"authorization": f"Bearer {token}"}
                )
            assert response.status_code == 400  # not explicit mode: the token was accepted first
        metrics_dir = Path(re.search(r"worker metrics in (\S+)", gateway.logs()).group(1))
        assert metrics_dir.is_dir()
        pids = worker_pids(gateway)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=60) == 0
    finally:
        gateway.stop()
    assert not metrics_dir.exists()
    assert not token_file.exists()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
