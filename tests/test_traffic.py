"""Traffic between versions: weighted and sticky routing, shadow copies, promote and rollback (issue 17).

One real gateway serves model ``ab`` whose versions add a constant to their input, so that every
answer shows which version computed it (and must agree with the ``model_version`` it reports):
1 and 3 add 1, 2 adds 2, 4 fails at run time (a Gather out of bounds) and 5 adds 1 after about a
second of computing. Each test sets the policy it needs through the management API.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, REPO_ROOT, GatewayProcess, start_gateway

#: What each version adds to its input.
ADDS = {1: 1.0, 2: 2.0, 3: 1.0, 4: 1.0, 5: 1.0}
X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
CONFIG = """
version_policy: {all: {}}
onnxruntime: {intra_op_threads: 1}
version_labels: {stable: 1, canary: 2, twin: 3, broken: 4, slow: 5}
routing: {weights: {stable: 90, canary: 10}}
"""


def write_add_model(path: Path, constant: float, *, fail: bool = False, slow_layers: int = 0) -> None:
    """An ONNX model ``y = x + constant``, x and y FP32 [batch, 4]; ``fail``: a Gather out of bounds at
    run time; ``slow_layers``: that many 1024x1024 MatMul+Tanh layers first (about 40 ms each, one thread)."""
    nodes = [helper.make_node("Add", ["x", "c"], ["sum"])]
    weights = [numpy_helper.from_array(np.array([constant], dtype=np.float32), "c")]
    output = "sum"
    if fail:
        nodes += [
            helper.make_node("Gather", ["x", "index"], ["gathered"], axis=1),
            helper.make_node("Add", [output, "gathered"], ["failed"]),
        ]
        weights.append(numpy_helper.from_array(np.array([10], dtype=np.int64), "index"))
        output = "failed"
    if slow_layers:
        nodes += [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Expand", ["total", "square"], ["h0"]),
        ]
        for layer in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"h{layer}", "w"], [f"m{layer}"]))
            nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]))
        nodes += [
            helper.make_node("ReduceMean", [f"h{slow_layers}"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", [output, "nothing"], ["slow"]),
        ]
        rng = np.random.default_rng(0)
        weights += [
            numpy_helper.from_array((rng.standard_normal((1024, 1024)) / 32).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1024, 1024]), "square"),
            numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
        ]
        output = "slow"
    nodes.append(helper.make_node("Identity", [output], ["y"]))
    graph = helper.make_graph(
        nodes,
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def write_versions(model: Path, versions: list[int]) -> None:
    for version in versions:
        write_add_model(
            model / str(version) / "model.onnx", ADDS[version], fail=version == 4, slow_layers=25 * (version == 5)
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("traffic-repository")
    write_versions(root / "ab", [1, 2, 3, 4, 5])
    (root / "ab" / "config.yaml").write_text(CONFIG)
    gateway = start_gateway(root, tmp_path_factory.mktemp("traffic-logs") / "gateway.log")
    yield gateway
    gateway.stop()


def set_policy(server: GatewayProcess, **fields: Any) -> dict[str, Any]:
    policy = {"version_labels": {"stable": 1, "canary": 2, "twin": 3, "broken": 4, "slow": 5}, **fields}
    answer = server.http.put("/v2/repository/models/ab/traffic", json=policy, headers=ADMIN_HEADERS)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def infer(http: httpx.Client, path: str = "/v2/models/ab/infer", **extra: Any) -> str:
    """One request over REST; the version that answered, checked against the answer's values."""
    headers = extra.pop("headers", None)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X.ravel().tolist()}], **extra}
    response = http.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    version = str(answer["model_version"])
    np.testing.assert_array_equal(answer["outputs"][0]["data"], (X + ADDS[int(version)]).ravel())
    return version


def grpc_infer(client: triton_grpc.InferenceServerClient, version: str = "", **options: Any) -> str:
    tensor = triton_grpc.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer("ab", [tensor], model_version=version, **options)
    answered = str(result.get_response().model_version)
    np.testing.assert_array_equal(result.as_numpy("y"), X + ADDS[int(answered)])
    return answered


def metric(server: GatewayProcess, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    text = server.http.get("/metrics").text
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_90_10_split_over_2000_requests_lands_within_3_points(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 90, "canary": 10}})
    versions = Counter(infer(server.http) for _ in range(2000))
    assert set(versions) == {"1", "2"}
    assert abs(versions["2"] / 2000 - 0.10) <= 0.03, versions
    # The figures per version are there for the dashboard.
    assert (
        metric(server, "gateway_inference_requests_total", model="ab", version="2", status="success") >= versions["2"]
    )


def test_a_request_naming_a_version_or_a_label_gets_exactly_that_one(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 1, "canary": 1}})
    for _ in range(20):
        assert infer(server.http, "/v2/models/ab/versions/canary/infer") == "2"
        assert infer(server.http, "/v2/models/ab/versions/3/infer") == "3"
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        assert {grpc_infer(client, "stable") for _ in range(20)} == {"1"}
        assert {grpc_infer(client, "2") for _ in range(20)} == {"2"}
    finally:
        client.close()
    unknown = server.http.post("/v2/models/ab/versions/beta/infer", json={"inputs": []})
    assert unknown.status_code == 400 and "beta" in unknown.json()["error"]


def test_sticky_requests_never_switch_variant(server: GatewayProcess) -> None:
    set_policy(
        server, routing={"weights": {"stable": 50, "canary": 50}, "sticky_header": "X-User", "sticky_parameter": "user"}
    )
    by_header = {user: {infer(server.http, headers={"x-user": user}) for _ in range(5)} for user in map(str, range(60))}
    assert all(len(seen) == 1 for seen in by_header.values()), by_header
    assert {version for seen in by_header.values() for version in seen} == {"1", "2"}  # both variants in use
    # The same key as a v2 parameter, and over gRPC as metadata or a parameter: the same variant.
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        for user in map(str, range(20)):
            (expected,) = by_header[user]
            assert {infer(server.http, parameters={"user": user}) for _ in range(3)} == {expected}
            assert {grpc_infer(client, headers={"x-user": user}) for _ in range(3)} == {expected}
            assert {grpc_infer(client, parameters={"user": user}) for _ in range(3)} == {expected}
    finally:
        client.close()


def p99(seconds: list[float]) -> float:
    return float(np.percentile(seconds, 99))


def timed_requests(server: GatewayProcess, count: int) -> tuple[list[float], Counter[str]]:
    seconds, versions = [], Counter[str]()
    for _ in range(count):
        started = time.perf_counter()
        versions[infer(server.http)] += 1
        seconds.append(time.perf_counter() - started)
    return seconds, versions


def test_a_failing_or_slow_shadow_changes_neither_the_answers_nor_the_primary_latency(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 1}})
    timed_requests(server, 50)  # warm
    without, versions = timed_requests(server, 300)
    assert versions == {"1": 300}

    set_policy(server, routing={"weights": {"stable": 1}}, shadow={"label": "broken", "max_inflight": 64})
    errors_before = metric(server, "gateway_shadow_requests_total", model="ab", version="4", outcome="error")
    failing, versions = timed_requests(server, 300)
    assert versions == {"1": 300}  # every answer is the primary's (infer checks the values)
    time.sleep(0.5)
    errors = metric(server, "gateway_shadow_requests_total", model="ab", version="4", outcome="error") - errors_before
    assert errors == 300  # each copy went to the shadow and failed there, unseen by the client

    set_policy(server, routing={"weights": {"stable": 1}}, shadow={"label": "slow", "max_inflight": 1})
    slow, versions = timed_requests(server, 300)
    assert versions == {"1": 300}
    skipped = metric(server, "gateway_shadow_requests_total", model="ab", version="5", outcome="skipped")
    assert skipped > 250  # one copy at a time: the others are skipped, the work stays bounded
    # A sanity bound only (the figures go to bench/): nobody waited for the shadow's second.
    assert p99(failing) < p99(without) + 0.1, (p99(without), p99(failing))
    assert p99(slow) < p99(without) + 0.25, (p99(without), p99(slow))
    assert max(slow) < 0.9


def test_shadow_agreement_is_counted_per_version(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 1}}, shadow={"label": "twin", "max_inflight": 64})
    for _ in range(40):
        infer(server.http)
    set_policy(
        server, routing={"weights": {"stable": 1}}, shadow={"label": "canary", "compare": "argmax", "max_inflight": 64}
    )
    for _ in range(40):
        infer(server.http)
    time.sleep(0.5)
    assert metric(server, "gateway_shadow_requests_total", model="ab", version="3", outcome="agree") == 40
    assert metric(server, "gateway_shadow_requests_total", model="ab", version="3", outcome="disagree") == 0
    # x + 2 has the argmax of x + 1: a classifier's answer would agree.
    assert metric(server, "gateway_shadow_requests_total", model="ab", version="2", outcome="agree") == 40
    set_policy(server, routing={"weights": {"stable": 1}}, shadow={"label": "canary", "max_inflight": 64})
    for _ in range(10):
        infer(server.http)
    time.sleep(0.5)
    assert metric(server, "gateway_shadow_requests_total", model="ab", version="2", outcome="disagree") == 10
    assert metric(server, "gateway_shadow_duration_seconds_count", model="ab", version="2") == 50


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--token", ADMIN_TOKEN],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_promote_and_rollback_under_rest_and_grpc_traffic_fail_no_request(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 1}})
    stop = threading.Event()
    seen: dict[str, list[str]] = {"rest": [], "grpc": []}
    failures: list[str] = []

    def rest_traffic() -> None:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            while not stop.is_set():
                try:
                    seen["rest"].append(infer(http))
                except Exception as error:
                    failures.append(f"rest: {error!r}")

    def grpc_traffic() -> None:
        client = triton_grpc.InferenceServerClient(server.grpc_address)
        try:
            while not stop.is_set():
                try:
                    seen["grpc"].append(grpc_infer(client))
                except Exception as error:
                    failures.append(f"grpc: {error!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=rest_traffic), threading.Thread(target=grpc_traffic)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        promoted = run_cli("promote", "ab", "--server", server.http_url)
        assert promoted.returncode == 0, promoted.stderr
        assert "stable is version 2 (was 1" in promoted.stdout
        time.sleep(1)
        rolled_back = run_cli("rollback", "ab", "--server", server.http_url, "--json")
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert '"stable": 1' in rolled_back.stdout
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    for transport, versions in seen.items():
        # Atomic: each client sees version 1, then 2 from the promote on, then 1 again; never a mix.
        runs = [version for index, version in enumerate(versions) if index == 0 or versions[index - 1] != version]
        assert runs == ["1", "2", "1"], (transport, runs)
    assert (server.repository / "ab" / "1" / "model.onnx").is_file()  # the files stay
    again = run_cli("rollback", "ab", "--server", server.http_url)
    assert again.returncode == 1 and "no promote to roll back" in again.stderr


def test_gateway_traffic_shows_and_changes_the_policy(server: GatewayProcess) -> None:
    set_policy(server, routing={"weights": {"stable": 90, "canary": 10}})
    shown = run_cli("traffic", "ab", "--server", server.http_url)
    assert shown.returncode == 0, shown.stderr
    assert "split: stable 90%, canary 10%" in shown.stdout and "canary -> version 2" in shown.stdout
    changed = run_cli(
        "traffic", "ab", "--label", "canary=3", "--weight", "canary=1", "--sticky-header", "x-user",
        "--shadow", "broken", "--shadow-fraction", "0.5", "--server", server.http_url, "--json",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    policy = server.http.get("/v2/repository/models/ab/traffic").json()
    assert policy["version_labels"]["canary"] == 3 and policy["version_labels"]["stable"] == 1
    assert policy["routing"] == {"weights": {"canary": 1.0}, "sticky_header": "x-user"}
    assert policy["shadow"]["label"] == "broken" and policy["shadow"]["fraction"] == 0.5
    assert {infer(server.http) for _ in range(10)} == {"3"}
    refused = run_cli("traffic", "ab", "--weight", "beta=1", "--server", server.http_url)
    assert refused.returncode == 1 and "beta is not in version_labels" in refused.stderr
    cleared = run_cli("traffic", "ab", "--no-routing", "--shadow", "none", "--server", server.http_url)
    assert cleared.returncode == 0 and "split: none" in cleared.stdout
    assert infer(server.http) == "5"  # the highest version (the slow one: one request)


def test_the_policy_is_checked_and_needs_the_admin_token(server: GatewayProcess) -> None:
    policy = {"version_labels": {"stable": 1}, "routing": {"weights": {"stable": 1}}}
    assert server.http.put("/v2/repository/models/ab/traffic", json=policy).status_code == 401
    assert server.http.post("/v2/repository/models/ab/promote").status_code == 401
    for bad, problem in [
        ({"version_labels": {"stable": 9}}, "version 9, which is not served"),
        ({"version_labels": {"stable": 1}, "routing": {"weights": {"beta": 1}}}, "beta is not in version_labels"),
        ({"version_labels": {"stable": 1}, "routing": {"weights": {"stable": -1}}}, "weights"),
        ({"version_labels": {"stable": 1}, "shadow": {"label": "stable", "fraction": 2}}, "fraction"),
    ]:
        answer = server.http.put("/v2/repository/models/ab/traffic", json=bad, headers=ADMIN_HEADERS)
        assert answer.status_code == 400 and problem in answer.json()["error"], answer.text
    assert server.http.get("/v2/repository/models/nope/traffic").status_code == 404


def test_every_worker_and_a_restart_see_the_policy(tmp_path: Path) -> None:
    write_versions(tmp_path / "repository" / "ab", [1, 2])
    (tmp_path / "repository" / "ab" / "config.yaml").write_text("version_policy: {all: {}}\n")
    gateway = start_gateway(tmp_path / "repository", tmp_path / "gateway.log", "--workers", "2")
    try:
        # Version 1, not the highest: a worker that did not follow would answer 2.
        policy = {"version_labels": {"stable": 1, "canary": 2}, "routing": {"weights": {"stable": 1}}}
        answer = gateway.http.put("/v2/repository/models/ab/traffic", json=policy, headers=ADMIN_HEADERS)
        assert answer.status_code == 200, answer.text
        for _ in range(30):  # new connections: SO_REUSEPORT spreads them over both workers
            with httpx.Client(base_url=gateway.http_url) as http:
                assert infer(http) == "1"
    finally:
        gateway.stop()
    assert (tmp_path / "repository" / "ab" / "traffic.json").is_file()
    gateway = start_gateway(tmp_path / "repository", tmp_path / "again.log")
    try:
        assert gateway.http.get("/v2/repository/models/ab/traffic").json()["routing"]["weights"] == {"stable": 1.0}
        assert infer(gateway.http) == "1"
    finally:
        gateway.stop()
