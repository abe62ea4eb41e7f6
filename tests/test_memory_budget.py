"""The memory budget, loading on request and eviction, against real gateway processes.

Each model holds a weight of ``WEIGHT_BYTES`` that its answer does not depend on (gathered at index
0, times zero), so that its resident bytes are about its file's, and answers ``y = x * scale`` with
its own scale, so that every answer says which model gave it. A version keeps its file's bytes
(never less) plus what its runtime allocates: the first load in a process also holds ONNX Runtime's
one-off allocations (about 11 MB: 1.4 ``WEIGHT_BYTES`` in all), and the slow model its layers'
buffers (1.5 in all; it is loaded first). A load makes room for its peak, about twice its file (the
parsed file and the built weights at once): 2 ``WEIGHT_BYTES``. So a budget of 3.7 of them holds two
of a, b and c after each load, never three (two and a load need 4); 3.9 hold the slow model and one
other (3.5 at the load), never two others; 2.7 hold the slow model, and then only it.

The slow model adds ``SLOW_LAYERS`` matrix layers (0.3 s on an idle 2-core VM to several seconds on
a busy one; the two loads it must outlast take a tenth of that), so that one request keeps it busy
while other models load; what must not happen then (its eviction) is read
from ``gateway_model_evictions_total``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from bench.models import write_weighty_model as write_weighty
from gateway.settings import GatewaySettings
from tests.conftest import ADMIN_HEADERS, GatewayProcess, descendants, start_gateway
from tests.test_overload import CLIENT_TIMEOUT, WIDTH, grpc_inputs, inflight, metric, rest_body, wait_until

#: Bytes of each model's weight (6 Mi FP32 values).
WEIGHT_BYTES = 24 * 1024 * 1024
#: Matrix layers of the slow model.
SLOW_LAYERS = 250
#: The slow model runs without warmup (a warmup run would take as long as a request).
SLOW_CONFIG = "max_batch_size: 1\nwarmup: none\n"


def write_weighty_model(path: Path, scale: float, weight_bytes: int = WEIGHT_BYTES, layers: int = 0) -> None:
    """:func:`bench.models.write_weighty_model` with this file's weight size and test_overload's layer width."""
    write_weighty(path, scale, weight_bytes, layers, WIDTH)


def infer(gateway: GatewayProcess, model: str, x: float) -> httpx.Response:
    return gateway.http.post(f"/v2/models/{model}/infer", json=rest_body(x), timeout=CLIENT_TIMEOUT)


def answer(gateway: GatewayProcess, model: str, x: float) -> float:
    response = infer(gateway, model, x)
    assert response.status_code == 200, response.text
    return float(response.json()["outputs"][0]["data"][0])


def index(gateway: GatewayProcess) -> dict[str, dict[str, object]]:
    """The repository index by model name (every model here has one version)."""
    response = gateway.http.post("/v2/repository/index")
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def total(gateway: GatewayProcess, name: str) -> float:
    """The sum of every sample of ``name`` on ``/metrics``, all models together."""
    lines = gateway.http.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def held_bytes(gateway: GatewayProcess) -> int:
    """The resident bytes of the READY versions, as the index shows them."""
    return sum(int(entry["resident_bytes"]) for entry in index(gateway).values() if entry["state"] == "READY")


@pytest.fixture(scope="module")
def lazy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Models a, b, c (scales 1, 2, 3) and one larger than the budget, loaded on request, explicit mode."""
    root = tmp_path_factory.mktemp("budget-repository")
    for scale, name in enumerate("abc", start=1):
        write_weighty_model(root / name / "1" / "model.onnx", float(scale))
    write_weighty_model(root / "huge" / "1" / "model.onnx", 5.0, weight_bytes=4 * WEIGHT_BYTES)
    gateway = start_gateway(
        root,
        tmp_path_factory.mktemp("budget-logs") / "gateway.log",
        "--model-control-mode",
        "explicit",
        "--model-load-on-request",
        "--memory-budget-bytes",
        str(int(3.7 * WEIGHT_BYTES)),
    )
    yield gateway
    gateway.stop()


def test_models_load_on_their_first_request(lazy: GatewayProcess) -> None:
    before = index(lazy)
    assert {name: entry["state"] for name, entry in before.items()} == dict.fromkeys(
        ("a", "b", "c", "huge"), "UNAVAILABLE"
    )
    assert all(entry["reason"] == "not loaded" and "resident_bytes" not in entry for entry in before.values())

    assert answer(lazy, "a", 2.0) == 2.0
    entry = index(lazy)["a"]
    assert entry["state"] == "READY"
    assert int(entry["resident_bytes"]) >= WEIGHT_BYTES  # never below the file
    assert metric(lazy, "gateway_model_resident_bytes", "a", version="1") == entry["resident_bytes"]
    assert metric(lazy, "gateway_model_loads_on_request_total", "a", version="1") == 1
    assert metric(lazy, "gateway_inference_queue_duration_seconds_sum", "a") > 0.01  # the load's wait counts
    assert answer(lazy, "a", 3.0) == 3.0  # loaded once
    assert metric(lazy, "gateway_model_loads_on_request_total", "a", version="1") == 1

    # Concurrent first requests for one model start one load, and all get their answers.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda x: answer(lazy, "b", x), [1.0, 2.0, 3.0, 4.0]))
    assert answers == [2.0, 4.0, 6.0, 8.0]
    assert metric(lazy, "gateway_model_loads_on_request_total", "b", version="1") == 1


def test_round_robin_evicts_the_least_recently_used_and_every_request_succeeds(lazy: GatewayProcess) -> None:
    budget = int(3.7 * WEIGHT_BYTES)
    evictions_before = total(lazy, "gateway_model_evictions_total")
    for round_number in range(3):
        for scale, name in enumerate("abc", start=1):
            assert answer(lazy, name, float(round_number)) == float(round_number * scale)
            assert held_bytes(lazy) <= budget
            assert metric(lazy, "gateway_model_ready", name, version="1") == 1
    # Two fit, three do not: each request of the round robin evicts the least recently used one.
    assert total(lazy, "gateway_model_evictions_total") - evictions_before >= 6
    states = index(lazy)
    assert [states[name]["state"] for name in "abc"] == ["UNAVAILABLE", "READY", "READY"]  # a: least recently used
    assert "evicted to make room within the memory budget" in str(states["a"]["reason"])
    assert metric(lazy, "gateway_model_ready", "a", version="1") == 0
    assert metric(lazy, "gateway_model_resident_bytes", "a", version="1") == 0
    assert "model a version 1 evicted to make room" in lazy.logs()


def test_a_model_larger_than_the_budget_is_a_clear_error(lazy: GatewayProcess) -> None:
    budget = int(3.7 * WEIGHT_BYTES)
    response = infer(lazy, "huge", 1.0)
    assert response.status_code == 503, response.text
    assert f"more than the whole memory budget of {budget} bytes" in response.json()["error"]
    assert "needs about" in response.json()["error"]
    load = lazy.http.post("/v2/repository/models/huge/load", headers=ADMIN_HEADERS)
    assert load.status_code == 503, load.text
    assert f"memory budget of {budget} bytes" in load.json()["error"]
    assert index(lazy)["huge"]["state"] == "UNAVAILABLE"
    # Nothing was evicted for it, and the others keep serving.
    assert metric(lazy, "gateway_model_loads_on_request_total", "huge") == 0
    assert answer(lazy, "c", 1.0) == 3.0


@pytest.fixture(scope="module")
def busy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slow model and two fast ones (scales 2 and 3)."""
    root = tmp_path_factory.mktemp("busy-repository")
    write_weighty_model(root / "slow" / "1" / "model.onnx", 1.0, layers=SLOW_LAYERS)
    (root / "slow" / "config.yaml").write_text(SLOW_CONFIG)
    write_weighty_model(root / "b" / "1" / "model.onnx", 2.0)
    write_weighty_model(root / "c" / "1" / "model.onnx", 3.0)
    return root


def start_busy(root: Path, log: Path, budget: int) -> GatewayProcess:
    return start_gateway(root, log, "--model-load-on-request", "--memory-budget-bytes", str(budget))


def test_a_version_with_a_request_in_flight_is_never_evicted(busy_root: Path, tmp_path: Path) -> None:
    gateway = start_busy(busy_root, tmp_path / "gateway.log", int(3.9 * WEIGHT_BYTES))
    try:
        slow = threading.Thread(target=lambda: answers.append(answer(gateway, "slow", 5.0)))
        answers: list[float] = []
        slow.start()
        wait_until(lambda: inflight(gateway, "slow") == 1, what="the slow request running")
        assert answer(gateway, "b", 1.0) == 2.0  # slow and b fit
        # c needs room: slow is the least recently used, but busy, so b goes.
        assert answer(gateway, "c", 1.0) == 3.0
        assert inflight(gateway, "slow") == 1, "the slow request ended too soon for the test to tell"
        slow.join(timeout=CLIENT_TIMEOUT)
        assert answers == [5.0]
        assert metric(gateway, "gateway_model_evictions_total", "slow") == 0
        assert metric(gateway, "gateway_model_evictions_total", "b", version="1") == 1
        assert index(gateway)["slow"]["state"] == "READY"
    finally:
        gateway.stop()


def slow_then_b(gateway: GatewayProcess, ask: Callable[[GatewayProcess, str, float], float]) -> dict[str, float]:
    """A request to the slow model (x = 5), then, while it runs, one to b (x = 1), each asked with ``ask`` and
    its answer checked; when each finished (``time.monotonic()``), by model."""
    finished: dict[str, float] = {}

    def call(model: str, x: float, expected: float) -> None:
        assert ask(gateway, model, x) == expected
        finished[model] = time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(call, "slow", 5.0, 5.0)
        wait_until(lambda: inflight(gateway, "slow") == 1, what="the slow request running")
        waiting = pool.submit(call, "b", 1.0, 2.0)
        slow.result(timeout=CLIENT_TIMEOUT)
        waiting.result(timeout=CLIENT_TIMEOUT)
    return finished


def test_a_load_waits_for_a_busy_version_to_go_idle(busy_root: Path, tmp_path: Path) -> None:
    gateway = start_busy(busy_root, tmp_path / "gateway.log", int(2.7 * WEIGHT_BYTES))  # the slow model alone
    try:
        finished = slow_then_b(gateway, answer)
        assert finished["b"] > finished["slow"]  # b loaded only once slow was idle, and slow then went
        assert metric(gateway, "gateway_model_evictions_total", "slow", version="1") == 1
        assert metric(gateway, "gateway_inference_queue_duration_seconds_sum", "b") > 0.2  # the wait, counted
    finally:
        gateway.stop()


def test_whole_gateways_share_the_budget_evenly(tmp_path: Path) -> None:
    def four_workers(model_runners: bool | None) -> GatewaySettings:
        return GatewaySettings(
            workers=4, memory_budget_bytes=1000, http_port=8000, grpc_port=8001, model_runners=model_runners
        )

    assert four_workers(model_runners=False).worker_memory_budget_bytes == 250
    assert GatewaySettings().worker_memory_budget_bytes is None
    # With model runners (the default with several workers) the supervisor holds the whole budget.
    assert four_workers(model_runners=None).uses_model_runners
    assert four_workers(model_runners=None).worker_memory_budget_bytes is None
    # Two whole gateways under 1.5 models' bytes: each worker's half cannot hold one model.
    write_weighty_model(tmp_path / "repository" / "a" / "1" / "model.onnx", 1.0)
    budget = int(1.5 * WEIGHT_BYTES)
    gateway = start_gateway(
        tmp_path / "repository",
        tmp_path / "gateway.log",
        "--workers",
        "2",
        "--model-load-on-request",
        "--memory-budget-bytes",
        str(budget),
        env={"GATEWAY_MODEL_RUNNERS": "false"},
    )
    try:
        response = infer(gateway, "a", 1.0)
        assert response.status_code == 503, response.text
        assert f"more than the whole memory budget of {budget // 2} bytes" in response.json()["error"]
    finally:
        gateway.stop()


# With model runners (several front ends) the supervisor holds one budget for the machine. A runner counts
# what its process holds of its own: its version and ONNX Runtime's and the interpreter's pages (about 2.7
# WEIGHT_BYTES in all for a weighty model on the 2-core VM). A first load reserves twice its file; later
# loads twice their file plus what the last runner held above its own (about 3.7 WEIGHT_BYTES).
RUNNER_BUDGET = 8 * WEIGHT_BYTES  # a runner and a load fit (6.4), two runners and a load do not (9.1)
RUNNER_STARTED = r"model runner of model (\w+) version 1 started \(pid (\d+)\)"


def runners_alive(gateway: GatewayProcess) -> list[str]:
    """The models whose runner processes are alive now (one entry per runner)."""
    alive = descendants(gateway.process.pid)
    return [name for name, pid in re.findall(RUNNER_STARTED, gateway.logs()) if int(pid) in alive]


def answer_on_a_new_connection(gateway: GatewayProcess, model: str, x: float) -> float:
    """:func:`answer` over a connection of its own, which the kernel gives to either front end."""
    response = httpx.post(f"{gateway.http_url}/v2/models/{model}/infer", json=rest_body(x), timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200, response.text
    return float(response.json()["outputs"][0]["data"][0])


@pytest.fixture(scope="module")
def runners_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models a, b, c (scales 1, 2, 3), the slow model (scale 1), and one larger than the runners' budget."""
    root = tmp_path_factory.mktemp("runners-budget-repository")
    for scale, name in enumerate("abc", start=1):
        write_weighty_model(root / name / "1" / "model.onnx", float(scale))
    write_weighty_model(root / "slow" / "1" / "model.onnx", 1.0, layers=SLOW_LAYERS)
    (root / "slow" / "config.yaml").write_text(SLOW_CONFIG)
    write_weighty_model(root / "huge" / "1" / "model.onnx", 5.0, weight_bytes=9 * WEIGHT_BYTES)
    return root


def start_with_runners(root: Path, log: Path, budget: int) -> GatewayProcess:
    return start_gateway(root, log, "--workers", "2", "--model-load-on-request", "--memory-budget-bytes", str(budget))


def round_robin_with_two_runners_at_most(gateway: GatewayProcess, rounds: int, most_bytes: int | None = None) -> None:
    """Call a, b and c in turn, ``rounds`` times, each over a new connection (either front end); after each
    call, check its answer and that at most two runners are alive, the called model's among them (the runners
    are the machine's, not a front end's), and that they hold ``most_bytes`` at most (when given)."""
    for round_number in range(rounds):
        for scale, name in enumerate("abc", start=1):
            x = float(round_number + 1)
            assert answer_on_a_new_connection(gateway, name, x) == x * scale
            alive = runners_alive(gateway)
            assert len(alive) <= 2 and name in alive, alive
            if most_bytes is not None:
                assert total(gateway, "gateway_model_resident_bytes") <= most_bytes


def test_model_runners_share_one_budget_and_the_least_recently_used_idle_runner_goes(
    runners_root: Path, tmp_path: Path
) -> None:
    gateway = start_with_runners(runners_root, tmp_path / "gateway.log", RUNNER_BUDGET)
    try:
        round_robin_with_two_runners_at_most(gateway, rounds=3, most_bytes=RUNNER_BUDGET)
        # Each load after the second evicts the least recently used runner: the one of two requests ago.
        assert sorted(runners_alive(gateway)) == ["b", "c"]
        evicted = re.findall(r"model runner of model (\w+) version 1 evicted to make room", gateway.logs())
        assert evicted == ["a", "b", "c", "a", "b", "c", "a"]
        assert total(gateway, "gateway_model_evictions_total") == len(evicted)  # once each, not once per front end
        assert metric(gateway, "gateway_model_evictions_total", "a", version="1") == 3
        # Calls for b reach both front ends: the one whose call did not start b's runner joins it, and each
        # runner's load is counted once, by the front end whose call started it.
        for _ in range(16):
            assert answer_on_a_new_connection(gateway, "b", 1.0) == 2.0
        started = re.findall(RUNNER_STARTED, gateway.logs())
        assert total(gateway, "gateway_model_loads_on_request_total") == len(started) == 9
        assert total(gateway, "gateway_model_load_duration_seconds_count") == 9
        assert "model b version 1 joined its model runner on request" in gateway.logs()

        response = httpx.post(f"{gateway.http_url}/v2/models/huge/infer", json=rest_body(1.0))
        assert response.status_code == 503, response.text
        assert f"more than the whole memory budget of {RUNNER_BUDGET} bytes" in response.json()["error"]
        assert sorted(runners_alive(gateway)) == ["b", "c"]  # nothing was evicted for it
    finally:
        gateway.stop()


def test_a_runner_with_a_request_in_flight_is_never_evicted(runners_root: Path, tmp_path: Path) -> None:
    # The slow runner and one other fit, with room for the other's load; two others do not.
    gateway = start_with_runners(runners_root, tmp_path / "gateway.log", RUNNER_BUDGET)
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(answer_on_a_new_connection, gateway, "slow", 5.0)
            wait_until(lambda: inflight(gateway, "slow") == 1, what="the slow request running")
            assert answer_on_a_new_connection(gateway, "b", 1.0) == 2.0
            # c needs room: slow is the least recently used runner, but busy, so b's goes.
            assert answer_on_a_new_connection(gateway, "c", 1.0) == 3.0
            assert inflight(gateway, "slow") == 1, "the slow request ended too soon for the test to tell"
            assert slow.result(timeout=CLIENT_TIMEOUT) == 5.0
        assert sorted(runners_alive(gateway)) == ["c", "slow"]
        assert metric(gateway, "gateway_model_evictions_total", "b", version="1") == 1
        assert metric(gateway, "gateway_model_evictions_total", "slow") == 0
    finally:
        gateway.stop()


def test_a_runner_load_waits_for_a_busy_runner_to_go_idle(runners_root: Path, tmp_path: Path) -> None:
    gateway = start_with_runners(runners_root, tmp_path / "gateway.log", 5 * WEIGHT_BYTES)  # one runner and no load
    try:
        finished = slow_then_b(gateway, answer_on_a_new_connection)
        assert finished["b"] > finished["slow"]  # b loaded only once slow was idle, and slow then went
        assert runners_alive(gateway) == ["b"]
        assert metric(gateway, "gateway_model_evictions_total", "slow", version="1") == 1
    finally:
        gateway.stop()


def test_a_runner_load_waits_for_room_no_longer_than_the_request_that_asked_for_it(
    runners_root: Path, tmp_path: Path
) -> None:
    gateway = start_with_runners(runners_root, tmp_path / "gateway.log", 5 * WEIGHT_BYTES)  # one runner and no load
    client = triton_grpc.InferenceServerClient(gateway.grpc_address)
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(answer_on_a_new_connection, gateway, "slow", 5.0)
            wait_until(lambda: inflight(gateway, "slow") == 1, what="the slow request running")
            # b needs the busy slow runner's room: its request's gRPC deadline passes first, and the supervisor
            # stops waiting for room at that deadline too (not after its own 30 s).
            with pytest.raises(InferenceServerException, match=r"(?i)deadline"):  # the client's or the server's
                client.infer("b", grpc_inputs(1.0), client_timeout=0.1)
            wait_until(
                lambda: "held by model runners that stayed busy (model slow version 1)" in gateway.logs(),
                what="b's load to fail for want of room",
            )
            assert inflight(gateway, "slow") == 1, "the slow request ended too soon for the test to tell"
            assert slow.result(timeout=CLIENT_TIMEOUT) == 5.0
        # Nobody waits for b any more: slow going idle starts nothing, and slow is not evicted.
        time.sleep(1.0)
        assert [name for name, _ in re.findall(RUNNER_STARTED, gateway.logs())] == ["slow"]
        assert runners_alive(gateway) == ["slow"]
    finally:
        client.close()
        gateway.stop()


def test_a_runner_load_that_only_its_own_model_keeps_from_room_fails_at_once(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    for version in (1, 2):
        write_weighty_model(root / "two" / str(version) / "model.onnx", float(version))
    (root / "two" / "config.yaml").write_text("version_policy: {all: {}}\n")
    gateway = start_with_runners(root, tmp_path / "gateway.log", 5 * WEIGHT_BYTES)  # one runner and no load
    try:
        # Version 1 loads; version 2 would need version 1's room, which its own model's load never takes:
        # it fails at once (not after the 30 s wait for busy runners), and version 1 answers.
        # (One connection, so one front end, for the request and the index: each front end has its own index.)
        response = gateway.http.post("/v2/models/two/infer", json=rest_body(3.0), timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
        entries = gateway.http.post("/v2/repository/index").json()
        version_2 = next(entry for entry in entries if entry["name"] == "two" and entry["version"] == "2")
        assert version_2["state"] == "UNAVAILABLE"
        assert "held by its own model's runners" in version_2["reason"], version_2
        assert runners_alive(gateway) == ["two"]
    finally:
        gateway.stop()


# --memory-budget-scope gateway: the budget bounds the whole gateway, its own processes included.
OWN_IN_PROCESS = r"memory budget: the gateway holds (\d+) bytes of its own"
OWN_BESIDES_RUNNERS = r"memory budget: the gateway holds (\d+) bytes besides its model runners"


def own_bytes_logged(gateway: GatewayProcess, pattern: str) -> list[int]:
    """What the gateway said it holds of its own at each room decision, in order."""
    return [int(figure) for figure in re.findall(pattern, gateway.logs())]


def test_a_budget_of_the_whole_gateway_leaves_the_models_what_the_gateway_does_not_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory-budget-scope gateway needs memory-budget-bytes"):
        GatewaySettings(memory_budget_scope="gateway")
    # Models of twice the usual weight: each keeps about 2 WEIGHT_BYTES (2.4 the first, with ONNX Runtime's
    # one-off allocations) and its load reserves about 4.
    root = tmp_path / "repository"
    for scale, name in enumerate("abc", start=1):
        write_weighty_model(root / name / "1" / "model.onnx", float(scale), weight_bytes=2 * WEIGHT_BYTES)
    scope = ("--model-load-on-request", "--memory-budget-scope", "gateway", "--memory-budget-bytes")
    # Under a budget the gateway alone fills, no model loads, and the error says why; the same budget for the
    # models alone holds one.
    small = start_gateway(root, tmp_path / "small.log", *scope, str(5 * WEIGHT_BYTES))
    try:
        response = infer(small, "a", 1.0)
        assert response.status_code == 503, response.text
        assert (
            f"the memory budget of {5 * WEIGHT_BYTES} bytes leaves to the models (the gateway's own processes hold "
            "the rest)" in response.json()["error"]
        )
    finally:
        small.stop()
    models_only = start_busy(root, tmp_path / "models.log", 5 * WEIGHT_BYTES)
    try:
        assert answer(models_only, "a", 1.0) == 1.0
    finally:
        models_only.stop()

    # What the gateway holds of its own, as it says before its loads: the versions it holds are not counted in it.
    measuring = start_gateway(root, tmp_path / "measuring.log", *scope, str(100 * WEIGHT_BYTES))
    try:
        assert answer(measuring, "a", 1.0) == 1.0
        assert answer(measuring, "b", 1.0) == 2.0
        before_a, before_b = own_bytes_logged(measuring, OWN_IN_PROCESS)
        assert held_bytes(measuring) > 4 * WEIGHT_BYTES
        assert abs(before_b - before_a) < WEIGHT_BYTES, (before_a, before_b)
    finally:
        measuring.stop()
    # With room for one load beside what the gateway holds (5.5 WEIGHT_BYTES; the gateway's own bytes grow by
    # about half of one as ONNX Runtime keeps its one-off allocations after the first version goes), and not
    # for a version and a load (6), each load evicts the version before it; the same budget for the models
    # alone would hold every one.
    budget = before_a + int(5.5 * WEIGHT_BYTES)
    gateway = start_gateway(root, tmp_path / "gateway.log", *scope, str(budget))
    try:
        for round_number in range(2):
            for scale, name in enumerate("abc", start=1):
                assert answer(gateway, name, float(round_number)) == float(round_number * scale)
                states = {model: entry["state"] for model, entry in index(gateway).items()}
                assert states == {model: "READY" if model == name else "UNAVAILABLE" for model in "abc"}
        assert total(gateway, "gateway_model_evictions_total") == 5
        own = own_bytes_logged(gateway, OWN_IN_PROCESS)
        assert len(own) == 6 and all(abs(figure - before_a) < WEIGHT_BYTES for figure in own), (before_a, own)
    finally:
        gateway.stop()


def test_model_runners_under_a_budget_of_the_whole_gateway(runners_root: Path, tmp_path: Path) -> None:
    scope = ("--memory-budget-scope", "gateway")
    measuring = start_gateway(
        runners_root, tmp_path / "measuring.log", "--workers", "2", "--model-load-on-request",
        "--memory-budget-bytes", str(100 * WEIGHT_BYTES), *scope,
    )  # fmt: skip
    try:
        assert answer_on_a_new_connection(measuring, "a", 1.0) == 1.0
        # The supervisor, the fork server and two front ends: more than one runner's version, and counted.
        (before_a,) = own_bytes_logged(measuring, OWN_BESIDES_RUNNERS)
        assert before_a > 2 * WEIGHT_BYTES
    finally:
        measuring.stop()
    # RUNNER_BUDGET for the runners beside what the gateway holds: at most two runners, as with the models'
    # scope; the same budget for the runners alone would hold all three.
    gateway = start_gateway(
        runners_root, tmp_path / "gateway.log", "--workers", "2", "--model-load-on-request",
        "--memory-budget-bytes", str(before_a + RUNNER_BUDGET), *scope,
    )  # fmt: skip
    try:
        round_robin_with_two_runners_at_most(gateway, rounds=2)
        evicted = re.findall(r"model runner of model (\w+) version 1 evicted to make room", gateway.logs())
        assert evicted == ["a", "b", "c", "a"]
        own = own_bytes_logged(gateway, OWN_BESIDES_RUNNERS)
        assert len(own) == 6 and all(abs(figure - before_a) < WEIGHT_BYTES for figure in own), (before_a, own)

        response = httpx.post(f"{gateway.http_url}/v2/models/huge/infer", json=rest_body(1.0))
        assert response.status_code == 503, response.text
        assert "leaves to the models (the gateway's own processes hold the rest)" in response.json()["error"]
    finally:
        gateway.stop()
