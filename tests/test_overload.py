"""Overload, deadlines and client disconnects against a real gateway.

A model with one instance and a small ``max_queue_size`` is driven far past its capacity over REST
and gRPC: the excess is refused at once (503 with ``Retry-After`` / UNAVAILABLE), nothing hangs, the
accepted requests get the right answers, and once the load drops every request succeeds again.

Deadlines (Triton's ``timeout`` parameter, a gRPC deadline) and disconnects are checked on requests
queued behind a slow one; that the dropped work never ran is read from the number of backend runs
(``gateway_inference_batch_size_count``), after a last request that queues behind anything left:
the queue is first in, first out, so anything not dropped would have run before it.

No assertion depends on how fast the machine is beyond orders of magnitude (a refused request
against a model run of a fraction of a second); speed lives in ``bench/``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.conftest import GatewayProcess, start_gateway

#: Width of the square matrices the models multiply: 1.3 ms (idle) to 5 ms (busy) a layer on a 2-core VM.
WIDTH = 512
#: Layers of the model requests queue behind: 1 s (idle 2-core VM) to 4 s (busy) a run, many times
#: the deadlines (0.2 to 0.4 s) the tests give the requests queued behind it.
SLOW_LAYERS = 800
#: Every call's client-side timeout, in seconds: no call may hang.
CLIENT_TIMEOUT = 60.0
#: The overloaded model: one instance, two requests may wait.
OVERLOAD_CONFIG = """\
max_batch_size: 1
dynamic_batching:
  max_queue_size: 2
"""
#: The model requests queue behind: one instance, a queue without limit.
QUEUED_CONFIG = """\
max_batch_size: 1
dynamic_batching: {}
"""
#: One call of the load test: "ok" or "refused", the answer, the input, and the seconds it took.
Call = tuple[str, float | None, float, float]


def write_scaled_model(path: Path, scale: float, layers: int) -> None:
    """An ONNX model ``y = x * scale`` (FP32 [batch, 1]) that spends ``layers`` MatMul+Tanh layers of a
    [WIDTH, WIDTH] matrix computing (1.3 to 5 ms each on a 2-core VM) on a branch multiplied by zero."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
        helper.make_node("Expand", ["mean", "shape"], ["h0"]),
    ]
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{layer}", "w"], [f"m{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}"], ["slow"], keepdims=0),
        helper.make_node("Mul", ["slow", "zero"], ["nothing"]),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "nothing"], ["y"]),
    ]
    weights = (np.random.default_rng(0).standard_normal((WIDTH, WIDTH)) / 32).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array([WIDTH, WIDTH]), "shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def rest_body(x: float, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [x]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def grpc_inputs(x: float) -> list[triton_grpc.InferInput]:
    tensor = triton_grpc.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[x]], dtype=np.float32))
    return [tensor]


def metric(gateway: GatewayProcess, name: str, model: str, **labels: str) -> float:
    """The sum of the samples of ``name`` for ``model`` (and ``labels``) on ``/metrics``."""
    total = 0.0
    wanted = [f'model="{model}"', *(f'{key}="{value}"' for key, value in labels.items())]
    for line in gateway.http.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def backend_runs(gateway: GatewayProcess, model: str) -> float:
    """How many batches the backend ran for ``model``."""
    return metric(gateway, "gateway_inference_batch_size_count", model)


def inflight(gateway: GatewayProcess, model: str) -> float:
    """Requests of ``model`` being answered (queued or running)."""
    return metric(gateway, "gateway_inference_inflight_requests", model)


def wait_until(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module", params=["asyncio", "threads"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The overloaded and the slow model, served with each kind of gRPC server (``--grpc-server``)."""
    root = tmp_path_factory.mktemp("overload-repository")
    write_scaled_model(
        root / "overloaded" / "1" / "model.onnx", scale=2.0, layers=200
    )  # 0.25 s (idle 2-core VM) to 1 s (busy) a run
    (root / "overloaded" / "config.yaml").write_text(OVERLOAD_CONFIG)
    write_scaled_model(root / "slow" / "1" / "model.onnx", scale=3.0, layers=SLOW_LAYERS)
    (root / "slow" / "config.yaml").write_text(QUEUED_CONFIG)
    gateway = start_gateway(root, tmp_path_factory.mktemp("logs") / "gateway.log", "--grpc-server", request.param)
    yield gateway
    gateway.stop()


def test_past_capacity_the_excess_gets_fast_503s_and_the_server_recovers(server: GatewayProcess):
    model, scale = "overloaded", 2.0
    stop = threading.Event()
    rest_clients, grpc_clients = 16, 8

    def rest_client(number: int) -> list[Call]:
        calls = []
        with httpx.Client(base_url=server.http_url, timeout=CLIENT_TIMEOUT) as client:
            while not stop.is_set():
                x = float(number * 1000 + len(calls))
                started = time.monotonic()
                response = client.post(f"/v2/models/{model}/infer", json=rest_body(x))
                seconds = time.monotonic() - started
                if response.status_code == 200:
                    answer = response.json()["outputs"][0]["data"][0]
                    calls.append(("ok", answer, x, seconds))
                else:
                    assert response.status_code == 503, response.text
                    assert "queue is full" in response.json()["error"]
                    assert response.headers["Retry-After"] == "1"
                    calls.append(("refused", None, x, seconds))
                    time.sleep(0.01)
        return calls

    def grpc_client(number: int) -> list[Call]:
        calls = []
        client = triton_grpc.InferenceServerClient(server.grpc_address)
        try:
            while not stop.is_set():
                x = float(-number * 1000 - len(calls))
                started = time.monotonic()
                try:
                    result = client.infer(model, grpc_inputs(x), client_timeout=CLIENT_TIMEOUT)
                except InferenceServerException as error:
                    assert error.status() == "StatusCode.UNAVAILABLE", error
                    calls.append(("refused", None, x, time.monotonic() - started))
                    time.sleep(0.01)
                    continue
                calls.append(("ok", float(result.as_numpy("y")[0, 0]), x, time.monotonic() - started))
        finally:
            client.close()
        return calls

    runs_before = backend_runs(server, model)
    with ThreadPoolExecutor(max_workers=rest_clients + grpc_clients) as pool:
        futures: list[Future[list[Call]]] = [pool.submit(rest_client, number) for number in range(rest_clients)] + [
            pool.submit(grpc_client, number + 1) for number in range(grpc_clients)
        ]
        # The TF Serving and TorchServe routes are refused the same way (their own error bodies).
        compat_refusals: dict[str, str | None] = {}
        compat_accepted = 0
        routes = (f"/v1/models/{model}:predict", f"/predictions/{model}")
        # At least 4 s, and on until each route was refused once (a busy machine can leave one route
        # lucky for a while): at most 20 s.
        started, give_up = time.monotonic(), time.monotonic() + 20
        while time.monotonic() < give_up and (time.monotonic() < started + 4 or set(compat_refusals) != set(routes)):
            for route, body in (
                (f"/v1/models/{model}:predict", {"instances": [[1.0]]}),
                (f"/predictions/{model}", [[1.0]]),
            ):
                response = server.http.post(route, json=body, timeout=CLIENT_TIMEOUT)
                assert response.status_code in (200, 503), response.text
                compat_accepted += response.status_code == 200
                if response.status_code == 503:
                    compat_refusals[route] = response.headers.get("Retry-After")
            time.sleep(0.05)
        stop.set()
        calls = [call for future in futures for call in future.result(timeout=2 * CLIENT_TIMEOUT)]

    accepted = [call for call in calls if call[0] == "ok"]
    refused = [call for call in calls if call[0] == "refused"]
    assert compat_refusals == {f"/v1/models/{model}:predict": "1", f"/predictions/{model}": "1"}
    assert len(accepted) >= 3 and len(refused) > 10 * len(accepted), (len(accepted), len(refused))
    for _, answer, x, _ in accepted:
        assert answer == x * scale
    # Refused at once rather than queued: a refusal takes a small part of one model run.
    refused_seconds = sorted(seconds for _, _, _, seconds in refused)
    accepted_seconds = sorted(seconds for _, _, _, seconds in accepted)
    assert refused_seconds[len(refused_seconds) * 9 // 10] < accepted_seconds[len(accepted_seconds) // 2] / 2
    # Only accepted requests reached the backend.
    assert backend_runs(server, model) - runs_before == len(accepted) + compat_accepted

    # Load dropped: every request succeeds again, over both protocols.
    wait_until(lambda: inflight(server, model) == 0, what="the queue to empty")
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    for x in (1.5, -2.0, 7.0):
        response = server.http.post(f"/v2/models/{model}/infer", json=rest_body(x))
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [x * scale]
        result = client.infer(model, grpc_inputs(x), client_timeout=CLIENT_TIMEOUT)
        assert result.as_numpy("y")[0, 0] == x * scale
    client.close()


def start_blocking_request(pool: ThreadPoolExecutor, server: GatewayProcess, x: float) -> Future[httpx.Response]:
    """Send one request to ``slow`` (no deadline) and return once it is running: the rest queue behind it."""
    running_before = backend_runs(server, "slow")
    future = pool.submit(server.http.post, "/v2/models/slow/infer", json=rest_body(x), timeout=CLIENT_TIMEOUT)
    wait_until(lambda: inflight(server, "slow") == 1, what="the blocking request")
    assert backend_runs(server, "slow") == running_before, "the blocking request finished too early"
    return future


def last_request_runs_alone(server: GatewayProcess, runs_before: float, expected_runs: int) -> None:
    """Send a request with no deadline; once answered, everything queued before it has run or was dropped."""
    response = server.http.post("/v2/models/slow/infer", json=rest_body(4.0), timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [12.0]
    assert backend_runs(server, "slow") - runs_before == expected_runs


def test_deadlines_that_pass_in_the_queue_answer_504_and_the_work_never_runs(server: GatewayProcess):
    runs_before = backend_runs(server, "slow")
    client = triton_grpc.InferenceServerClient(server.grpc_address)

    def grpc_error(**options: Any) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as error:
            client.infer("slow", grpc_inputs(2.0), **options)
        return error.value

    with ThreadPoolExecutor(max_workers=4) as pool:
        blocking = start_blocking_request(pool, server, 1.0)
        # Queued behind it at once, each with a deadline of a fraction of a run:
        # REST with Triton's timeout parameter (microseconds), gRPC with the same parameter
        # (tritonclient's ``timeout``), and gRPC with the call's own deadline.
        rest = pool.submit(server.http.post, "/v2/models/slow/infer", json=rest_body(2.0, timeout=200_000))
        grpc_parameter = pool.submit(grpc_error, timeout=200_000, client_timeout=CLIENT_TIMEOUT)
        grpc_deadline = pool.submit(grpc_error, client_timeout=0.3)
        response = rest.result(timeout=CLIENT_TIMEOUT)
        parameter_error = grpc_parameter.result(timeout=CLIENT_TIMEOUT)
        deadline_error = grpc_deadline.result(timeout=CLIENT_TIMEOUT)
        still_blocked = not blocking.done()
        assert blocking.result().status_code == 200
    client.close()
    assert still_blocked, "the blocking request finished before the deadlines passed: make the model slower"
    assert response.status_code == 504, response.text
    assert "deadline passed while it waited in the queue" in response.json()["error"]
    assert parameter_error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "waited in the queue" in parameter_error.message()
    assert deadline_error.status() == "StatusCode.DEADLINE_EXCEEDED"
    # A malformed timeout is refused.
    response = server.http.post("/v2/models/slow/infer", json=rest_body(2.0, timeout=-5))
    assert response.status_code == 400 and "timeout" in response.json()["error"]
    wait_until(lambda: inflight(server, "slow") == 0, what="the deadlines to be answered")
    last_request_runs_alone(server, runs_before, expected_runs=2)  # the blocking request and the last one
    assert metric(server, "gateway_inference_requests_total", "slow", status="DeadlineExceeded") >= 2


def test_a_client_that_disconnects_or_cancels_has_its_queued_work_dropped(server: GatewayProcess):
    runs_before = backend_runs(server, "slow")
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocking = start_blocking_request(pool, server, 1.0)
        # Two requests queue behind it: one over REST on a raw socket, one over gRPC.
        body = httpx.Request("POST", "/", json=rest_body(5.0)).read()
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=CLIENT_TIMEOUT) as connection:
            connection.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            call = client.async_infer("slow", grpc_inputs(6.0), callback=lambda result, error: None)
            wait_until(lambda: inflight(server, "slow") == 3 or blocking.done(), what="both requests to queue")
            call.cancel()  # the gRPC client cancels; the REST client closes its socket (leaving the block)
        # Both leave the queue while the first request still runs.
        wait_until(lambda: inflight(server, "slow") == 1 or blocking.done(), what="both requests to be dropped")
        dropped_while_blocked = not blocking.done()
        assert blocking.result().status_code == 200
    client.close()
    assert dropped_while_blocked, "the queued requests were not dropped when their clients went away"
    # Neither reached the backend.
    last_request_runs_alone(server, runs_before, expected_runs=2)
    assert metric(server, "gateway_inference_requests_total", "slow", status="Cancelled") >= 2


def test_the_server_request_timeout_answers_504_and_drops_queued_work(tmp_path: Path):
    root = tmp_path / "repository"
    write_scaled_model(root / "slow" / "1" / "model.onnx", scale=3.0, layers=SLOW_LAYERS)
    (root / "slow" / "config.yaml").write_text(QUEUED_CONFIG)
    gateway = start_gateway(root, tmp_path / "gateway.log", "--request-timeout-seconds", "0.4")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            # The first request runs past the timeout: 504, its result is discarded when the run ends.
            running = pool.submit(gateway.http.post, "/v2/models/slow/infer", json=rest_body(1.0))
            wait_until(lambda: inflight(gateway, "slow") == 1, what="the first request")
            # The second queues behind it and is dropped at its deadline, never run.
            queued = pool.submit(gateway.http.post, "/v2/models/slow/infer", json=rest_body(2.0))
            for future, where in ((running, "while the model ran it"), (queued, "while it waited in the queue")):
                response = future.result(timeout=CLIENT_TIMEOUT)
                assert response.status_code == 504 and where in response.json()["error"], response.text
        assert backend_runs(gateway, "slow") <= 1
        # The run of the first request ends; the second never reaches the backend.
        wait_until(lambda: backend_runs(gateway, "slow") == 1, what="the first run to end")
        response = gateway.http.post("/v2/models/slow/infer", json=rest_body(4.0, timeout=60_000_000))
        assert response.status_code == 504  # the server's limit holds over a longer timeout parameter
        wait_until(lambda: backend_runs(gateway, "slow") == 2, what="the last run to end")
        time.sleep(0.5)
        assert backend_runs(gateway, "slow") == 2
    finally:
        gateway.stop()
