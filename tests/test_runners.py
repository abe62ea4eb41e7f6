"""Front ends and model runners: each version loaded once per machine, one batcher for every front end.

Real gateways: ``gateway serve --workers 3`` (model runners by default with several workers),
``--model-runners`` with one front end, and the in-process server, side by side. Which front end
answered is told by the request id's prefix (each process draws one at start); the runner processes
are found by the supervisor's log (``model runner of model M version V started (pid P)``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import GatewayProcess, children_named, start_gateway, write_identity_model, write_pair_model
from tests.test_overload import inflight, metric, wait_until, write_scaled_model

FRONT_ENDS = 3


@pytest.fixture(scope="module")
def runner_repository(tmp_path_factory: pytest.TempPathFactory, digits_source: Path) -> Path:
    """digits, a two-input model, BYTES and wide FP32 identities, a slow batching model, and a corrupt model."""
    root = tmp_path_factory.mktemp("runners")
    shutil.copytree(digits_source, root / "digits")
    write_pair_model(root / "pair" / "1" / "model.onnx", width=3)
    write_identity_model(root / "identity_bytes" / "1" / "model.onnx", "BYTES")
    write_identity_model(root / "identity_fp32" / "1" / "model.onnx", "FP32")
    write_scaled_model(root / "slow" / "1" / "model.onnx", 1.0, layers=200)  # 0.3 to 0.7 s a run, whatever the batch
    (root / "slow" / "config.yaml").write_text("max_batch_size: 16\ndynamic_batching: {}\n")
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    return root


def wait_for_front_ends(gateway: GatewayProcess, models: int, front_ends: int) -> None:
    """Wait until each front end has loaded ``models`` models (readiness answered by one says nothing of the others)."""
    deadline = time.monotonic() + 90
    while gateway.logs().count(" serving versions [1]") < models * front_ends:
        assert time.monotonic() < deadline, gateway.logs()[-3000:]
        time.sleep(0.1)


@pytest.fixture(scope="module")
def front_ends(runner_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("front-ends") / "gateway.log"
    gateway = start_gateway(runner_repository, log, "--workers", str(FRONT_ENDS))
    try:
        wait_for_front_ends(gateway, models=5, front_ends=FRONT_ENDS)
        yield gateway
    finally:
        gateway.stop()


def runner_pids(gateway: GatewayProcess, model: str) -> list[int]:
    """The live runner processes of ``model`` (version 1)."""
    return children_named(gateway, rf"model runner of model {model} version 1 started \(pid (\d+)\)")


def front_end_pids(gateway: GatewayProcess) -> list[int]:
    return children_named(gateway, r"worker \d+ started \(pid (\d+)\)")


def maps_library(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a shared library whose path holds ``name`` mapped."""
    return name in Path(f"/proc/{pid}/maps").read_text()


def rest_infer(gateway: GatewayProcess, model: str, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    """One REST inference on a connection of its own (SO_REUSEPORT spreads connections over the front ends)."""
    with httpx.Client(base_url=gateway.http_url, timeout=timeout) as client:
        return client.post(f"/v2/models/{model}/infer", json=body)


def sample_requests() -> dict[str, dict[str, Any]]:
    """One request per model, with tensors of several datatypes, shapes and sizes."""
    digit = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    wide = np.arange(3 * 150_000, dtype=np.float32).reshape(3, 150_000)  # 1.8 MB: more than a slot
    return {
        "digits": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": digit.ravel().tolist()}]},
        "pair": {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "b", "datatype": "FP32", "shape": [2, 3], "data": [0.5, -1, 2, 8, 0, 1e-3]},
            ],
            "outputs": [{"name": "product"}, {"name": "sum"}],
        },
        "identity_bytes": {
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 3], "data": ["", "héllo", "x" * 5000]}]
        },
        "identity_fp32": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 150_000], "data": wide.ravel().tolist()}]
        },
    }


def answers(gateway: GatewayProcess) -> dict[str, Any]:
    """Each sample request's outputs over REST, and digits' over gRPC with raw contents."""
    results: dict[str, Any] = {}
    for model, body in sample_requests().items():
        response = rest_infer(gateway, model, body)
        assert response.status_code == 200, (model, response.text)
        results[model] = [(o["name"], o["datatype"], o["shape"], o["data"]) for o in response.json()["outputs"]]
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.linspace(0, 1, 64, dtype=np.float32).tobytes())
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    results["digits over gRPC"] = reply.raw_output_contents[0]
    return results


def test_outputs_are_the_same_in_process_with_one_front_end_and_with_three(
    front_ends: GatewayProcess, runner_repository: Path, tmp_path: Path
) -> None:
    in_process = start_gateway(runner_repository, tmp_path / "in-process.log")
    try:
        expected = answers(in_process)
    finally:
        in_process.stop()
    one_front_end = start_gateway(runner_repository, tmp_path / "one.log", "--model-runners")
    try:
        assert answers(one_front_end) == expected
    finally:
        one_front_end.stop()
    for _ in range(3):  # new connections: other front ends
        assert answers(front_ends) == expected
    # Inputs and outputs larger than a slot went through arenas of their own; none is left behind, nor
    # the name of a front end's arena of slots (removed once its runner has mapped it).
    ours = {str(pid) for pid in front_end_pids(front_ends)} | {
        str(pid) for model in ("digits", "identity_fp32") for pid in runner_pids(front_ends, model)
    }
    assert not [name for name in os.listdir("/dev/shm") if name.startswith("gateway-") and name.split("-")[1] in ours]


def test_each_version_is_loaded_once_and_front_ends_import_no_framework(front_ends: GatewayProcess) -> None:
    logs = front_ends.logs()
    for model in ("digits", "pair", "identity_bytes", "identity_fp32", "slow"):
        assert logs.count(f"model {model} version 1 loaded:") == 1, model
        assert len(runner_pids(front_ends, model)) == 1, model
    # The version's bytes are measured and published once, by its runner (not once per front end).
    index = {entry["name"]: entry for entry in front_ends.http.post("/v2/repository/index", json={}).json()}
    resident = metric(front_ends, "gateway_model_resident_bytes", "digits", version="1")
    assert resident == float(index["digits"]["resident_bytes"])
    front = front_end_pids(front_ends)
    assert len(front) == FRONT_ENDS
    assert not any(maps_library(pid, "onnxruntime") for pid in front)
    assert maps_library(runner_pids(front_ends, "digits")[0], "onnxruntime")
    # A model that fails to load in its runner is unavailable with the reason; the others serve.
    assert index["corrupt"]["state"] == "UNAVAILABLE"
    assert "not a valid ONNX model" in index["corrupt"]["reason"]
    assert index["digits"]["state"] == "READY"
    assert not runner_pids(front_ends, "corrupt")


def batches_larger_than(gateway: GatewayProcess, model: str, items: int) -> float:
    """How many runs of ``model`` had more than ``items`` items (a bucket bound of the batch size histogram)."""
    name = "gateway_inference_batch_size_bucket"
    return metric(gateway, name, model, le="+Inf") - metric(gateway, name, model, le=f"{float(items)}")


def test_one_batcher_sees_the_requests_of_every_front_end(front_ends: GatewayProcess) -> None:
    # A first request keeps the slow model busy (0.3 to 0.7 s a run, whatever the batch). Meanwhile twelve
    # clients, connected beforehand (SO_REUSEPORT spreads their connections over the three front ends),
    # send one request each at the same moment; they queue, and one batcher for every front end runs them
    # as one batch of twelve. A batcher per front end would see 4 on average (more than 8 only with 9 of
    # the 12 connections on one front end).
    before = batches_larger_than(front_ends, "slow", 8)
    clients = [httpx.Client(base_url=front_ends.http_url, timeout=30) for _ in range(13)]
    for client in clients:
        assert client.get("/v2/health/ready").status_code == 200  # connected before the requests
    barrier = threading.Barrier(12)

    def call(value: int, wait: bool = True) -> tuple[float, str]:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [value]}]}
        if wait:
            barrier.wait()
        response = clients[value].post("/v2/models/slow/infer", json=body)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"][0], response.headers["x-request-id"]

    try:
        with ThreadPoolExecutor(13) as pool:
            blocker = pool.submit(call, 12, False)
            wait_until(lambda: inflight(front_ends, "slow") >= 1, what="the first request")
            time.sleep(0.05)  # from its front end to the runner
            results = list(pool.map(call, range(12)))
            assert blocker.result()[0] == 12
    finally:
        for client in clients:
            client.close()
    assert [value for value, _ in results] == list(range(12))  # each request gets its own rows
    assert len({request_id.rsplit("-", 1)[0] for _, request_id in results}) >= 2  # several front ends
    batches = [line for line in front_ends.http.get("/metrics").text.splitlines() if "batch_size" in line]
    assert batches_larger_than(front_ends, "slow", 8) == before + 1, [line for line in batches if "slow" in line]


def test_a_runner_that_cannot_answer_leaves_no_request_past_its_deadline(front_ends: GatewayProcess) -> None:
    (runner,) = runner_pids(front_ends, "pair")
    body = {**sample_requests()["pair"], "parameters": {"timeout": 300_000}}  # Triton's, in microseconds
    os.kill(runner, signal.SIGSTOP)  # a runner of the gateway this test started
    try:
        started = time.monotonic()
        response = rest_infer(front_ends, "pair", body)
        waited = time.monotonic() - started
    finally:
        os.kill(runner, signal.SIGCONT)
    assert response.status_code == 504, response.text
    assert "did not answer" in response.json()["error"]
    assert waited < 5, waited  # the deadline (0.3 s) and the front end's grace (1 s)
    assert rest_infer(front_ends, "pair", body).status_code == 200  # the runner answers again


def test_a_killed_runner_fails_its_requests_only_then_serves_again(front_ends: GatewayProcess) -> None:
    (victim,) = runner_pids(front_ends, "digits")
    digits = sample_requests()["digits"]
    pair = sample_requests()["pair"]
    reconnected = "model 'digits' version 1: the model runner is back"  # each front end logs it once reconnected
    reconnected_before = front_ends.logs().count(reconnected)
    killed = threading.Event()
    # status, text, whether the answer came after the kill began, when the request was sent (time.monotonic())
    statuses: dict[str, list[tuple[int, str, bool, float]]] = {"digits": [], "pair": []}
    stop = threading.Event()

    def traffic(model: str, body: dict[str, Any]) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = rest_infer(front_ends, model, body, timeout=20)
                statuses[model].append((response.status_code, response.text, killed.is_set(), sent))
            except httpx.HTTPError as error:  # a hang or a dropped connection: the test fails below
                statuses[model].append((0, repr(error), killed.is_set(), sent))

    threads = [
        threading.Thread(target=traffic, args=(m, b)) for m, b in [("digits", digits)] * 4 + [("pair", pair)] * 2
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        killed.set()  # before the kill: an answer marked before it certainly came from the old runner
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: front_ends.logs().count(reconnected) >= reconnected_before + FRONT_ENDS,
            timeout=60,
            what="every front end to reconnect to the restarted runner",
        )
        every_front_end_back = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses["pair"] and all(status == 200 for status, *_ in statuses["pair"]), statuses["pair"][:3]
    before = [status for status, _, after, _ in statuses["digits"] if not after]
    assert before and all(status == 200 for status in before)
    failed = [(status, text) for status, text, _, _ in statuses["digits"] if status != 200]
    assert failed, "no request was in flight or sent while the runner was down"
    assert all(status == 503 and "model runner" in text for status, text in failed), failed[:3]
    served_again = [(status, text) for status, text, _, sent in statuses["digits"] if sent > every_front_end_back]
    assert served_again and all(status == 200 for status, _ in served_again), served_again[:3]
    (restarted,) = runner_pids(front_ends, "digits")
    assert restarted != victim
