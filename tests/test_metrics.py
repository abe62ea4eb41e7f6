"""Metrics, request ids and JSON logs against real gateway processes, and a real Prometheus scraping one.

The Prometheus tests run Debian's ``prometheus`` binary (``scripts/test.sh`` installs it) on a free
loopback port, scraping the gateway every second, and ask it the questions an operator would (request
rate, error rate and p99 latency per model) and every query of the Grafana dashboard. The other tests
read the gateway's ``/metrics`` text directly.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import yaml
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.runtime.gpu_memory import read_gpu_memory
from tests.conftest import ADMIN_HEADERS, REPO_ROOT, GatewayProcess, free_port, start_gateway, terminate
from tests.test_deploy import REPOSITORY_METRICS

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "gateway.json"
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus package (scripts/test.sh installs it)"
)

#: Labels of one digits version: (model, version).
DIGITS = {"model": "digits", "version": "1"}
#: Labels Prometheus keeps of a request for an unknown model (model="" and version="" are dropped).
UNKNOWN = {"model": "", "version": ""}


def digits_body(batch: int = 1, width: int = 64, request_id: str | None = None) -> dict[str, Any]:
    """A v2 REST request for digits: ``batch`` rows of ``width`` pixels (64 fits the model)."""
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, width], "data": [0.25] * (batch * width)}]
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def grpc_input(batch: int = 1, width: int = 64) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("input", [batch, width], "FP32")
    tensor.set_data_from_numpy(np.full((batch, width), 0.25, dtype=np.float32))
    return tensor


def raw_infer_request(request_id: str = "", width: int = 64) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, width])
    return service_pb2.ModelInferRequest(
        model_name="digits",
        id=request_id,
        inputs=[tensor],
        raw_input_contents=[np.full((1, width), 0.25, dtype=np.float32).tobytes()],
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: GatewayProcess) -> Samples:
    """Every sample of the gateway's ``/metrics``, by sample name and label set."""
    response = gateway.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, default: float | None = 0.0, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``, else ``default``."""
    return samples.get((name, frozenset(labels.items())), default)


def requests_total(samples: Samples, protocol: str, status: str, model: str, version: str) -> float:
    found = value(
        samples, "gateway_inference_requests_total", model=model, version=version, protocol=protocol, status=status
    )
    assert found is not None
    return found


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true, and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- fixtures


#: Digits' traffic policy: every request to version 1, copied to a shadow: version 2 (a copy of 1,
#: so it agrees), or version 3, which fails at run time.
DIGITS_TRAFFIC = {
    "version_labels": {"stable": 1, "twin": 2, "broken": 3},
    "routing": {"weights": {"stable": 1}},
    "shadow": {"label": "twin", "max_inflight": 64},
}


def write_failing_digits(path: Path) -> None:
    """Digits' signature (input FP32 [batch, 64] -> logits FP32 [batch, 10]) with a Gather out of bounds at run time."""
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["input", "start", "end", "axis"], ["first"]),
            helper.make_node("Gather", ["input", "index"], ["gathered"], axis=1),
            helper.make_node("Add", ["first", "gathered"], ["logits"]),
        ],
        "failing_digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(np.array([0]), "start"),
            numpy_helper.from_array(np.array([10]), "end"),
            numpy_helper.from_array(np.array([1]), "axis"),
            numpy_helper.from_array(np.array([100]), "index"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def gateway(digits_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway serving digits (control mode none) with JSON logs; requests go to version 1 and are
    copied to a shadow version (:data:`DIGITS_TRAFFIC`)."""
    root = tmp_path_factory.mktemp("metrics")
    digits = root / "repository" / "digits"
    shutil.copytree(digits_source, digits)
    shutil.copytree(digits / "1", digits / "2")
    write_failing_digits(digits / "3" / "model.onnx")
    config = (digits / "config.yaml").read_text().replace("latest:\n    num_versions: 1", "all: {}")
    (digits / "config.yaml").write_text(config + yaml.safe_dump(DIGITS_TRAFFIC))
    server = start_gateway(root / "repository", root / "gateway.log", "--log-format", "json")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def grpc_client(gateway: GatewayProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(url=gateway.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(gateway.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


class PrometheusServer:
    """Debian's Prometheus on a free loopback port, scraping one gateway every second; stopped by its PID."""

    def __init__(self, gateway: GatewayProcess, folder: Path) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: gateway\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{gateway.http_port}']\n"
        )
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                return self.http.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, "prometheus to be ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] == "vector", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        self._log.close()


def send_traffic(gateway: GatewayProcess, client: triton_grpc.InferenceServerClient) -> None:
    """Successes and errors over REST and gRPC: bad shape (InvalidArgument), unknown model (NotFound);
    shadow copies that fail, then copies that agree."""
    broken = {**DIGITS_TRAFFIC, "shadow": {"label": "broken", "max_inflight": 64}}
    for policy in (broken, DIGITS_TRAFFIC):
        answer = gateway.http.put("/v2/repository/models/digits/traffic", json=policy, headers=ADMIN_HEADERS)
        assert answer.status_code == 200, answer.text
        assert gateway.http.post("/v2/models/digits/infer", json=digits_body()).status_code == 200
    for batch in (1, 3):
        assert gateway.http.post("/v2/models/digits/infer", json=digits_body(batch)).status_code == 200
    assert gateway.http.post("/v2/models/digits/infer", json=digits_body(width=63)).status_code == 400
    assert gateway.http.post("/v2/models/no_such_model/infer", json=digits_body()).status_code == 404
    for batch in (1, 2):
        client.infer("digits", [grpc_input(batch)])
    for model, width, status in (("digits", 63, "INVALID_ARGUMENT"), ("no_such_model", 64, "NOT_FOUND")):
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, [grpc_input(width=width)])
        assert error.value.status() == f"StatusCode.{status}"


def send_traffic_and_wait_for_scrape(
    prometheus: PrometheusServer, gateway: GatewayProcess, client: triton_grpc.InferenceServerClient
) -> None:
    """Send :func:`send_traffic`, then wait until Prometheus has scraped the counters as they are after it.

    Every metric of a request is updated before its answer is sent, and one scrape reads them all, so
    once Prometheus holds the request total of a scrape taken after the traffic it holds everything.
    """
    send_traffic(gateway, client)
    expected = sum(count for (name, _), count in scrape(gateway).items() if name == "gateway_inference_requests_total")

    def scraped() -> bool:
        total = prometheus.scalar("sum(gateway_inference_requests_total)")
        return total is not None and total >= expected

    wait_for(scraped, 60, f"prometheus to scrape {expected} requests")


@pytest.fixture(scope="module")
def prometheus(
    gateway: GatewayProcess, grpc_client: triton_grpc.InferenceServerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """Prometheus scraping :func:`gateway`, which has served traffic that Prometheus has seen.

    The traffic creates every series; :func:`recent_traffic` then sends more, so that each series has
    grown between two scrapes inside the last minute and its ``rate(...[1m])`` is positive.
    """
    server = PrometheusServer(gateway, tmp_path_factory.mktemp("prometheus"))
    try:
        server.wait_ready()
        wait_for(lambda: server.scalar('up{job="gateway"}') == 1.0, 60, "prometheus to scrape the gateway")
        send_traffic_and_wait_for_scrape(server, gateway, grpc_client)
        yield server
    except Exception:
        print(server.logs())
        raise
    finally:
        server.stop()


@pytest.fixture
def recent_traffic(
    prometheus: PrometheusServer, gateway: GatewayProcess, grpc_client: triton_grpc.InferenceServerClient
) -> PrometheusServer:
    """:func:`prometheus`, after more traffic that it has scraped (so every series grew in the last minute)."""
    send_traffic_and_wait_for_scrape(prometheus, gateway, grpc_client)
    return prometheus


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    """A query result as {label values: value}; a label Prometheus dropped (empty value) reads as ""."""
    return {tuple(item["metric"].get(name, "") for name in names): float(item["value"][1]) for item in result}


# ----------------------------------------------------------------------------- with Prometheus


@needs_prometheus
def test_prometheus_answers_rate_errors_and_latency_per_model(recent_traffic: PrometheusServer):
    prometheus = recent_traffic

    rate = by_labels(prometheus.query("sum by (model) (rate(gateway_inference_requests_total[1m]))"), "model")
    assert rate.get(("digits",), 0) > 0, rate

    error_rate = by_labels(
        prometheus.query('sum by (model) (rate(gateway_inference_requests_total{status!="success"}[1m]))'), "model"
    )
    assert error_rate.get(("digits",), 0) > 0, error_rate
    assert error_rate.get(("",), 0) > 0, error_rate  # the unknown model, counted as model=""

    errors = by_labels(
        prometheus.query('sum by (model, status) (rate(gateway_inference_requests_total{status!="success"}[1m]))'),
        "model",
        "status",
    )
    assert errors.get(("digits", "InvalidArgument"), 0) > 0, errors
    assert errors.get(("", "NotFound"), 0) > 0, errors
    assert ("no_such_model", "NotFound") not in errors  # unknown names never become label values
    assert error_rate[("digits",)] < rate[("digits",)]

    p99 = by_labels(
        prometheus.query(
            "histogram_quantile(0.99, sum by (model, le) (rate(gateway_inference_request_duration_seconds_bucket[1m])))"
        ),
        "model",
    )
    assert ("digits",) in p99, p99
    assert math.isfinite(p99[("digits",)]) and 0 < p99[("digits",)] < 30, p99

    protocols = by_labels(
        prometheus.query("sum by (protocol) (rate(gateway_inference_requests_total[1m]))"), "protocol"
    )
    assert protocols.get(("v2-rest",), 0) > 0 and protocols.get(("v2-grpc",), 0) > 0, protocols

    ready = by_labels(prometheus.query("gateway_model_ready"), "model", "version", "backend")
    assert ready == {("digits", version, "onnxruntime"): 1.0 for version in ("1", "2", "3")}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of the dashboard, rows' panels included."""
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return queries


def test_dashboard_has_queries():
    queries = dashboard_queries()
    assert len(queries) >= 10
    per_model = [expr for _, expr in queries if not any(name in expr for name in REPOSITORY_METRICS)]
    assert len(per_model) == len(queries) - 3, "the shared repository's three panels"
    assert all("$model" in expr for expr in per_model), (
        "every panel of a model's metrics should follow the model variable"
    )


@needs_prometheus
@pytest.mark.parametrize("model", [".*", "digits"])
def test_every_dashboard_query_returns_data(recent_traffic: PrometheusServer, model: str):
    empty = []
    for title, expr in dashboard_queries():
        query = expr.replace("$__rate_interval", "1m").replace("$model", model)
        assert "$" not in query, f"panel {title!r} uses a variable the test does not know: {expr}"
        result = recent_traffic.query(query)  # a query Prometheus cannot run fails here
        # A local repository is never polled: the time since the last poll of a shared one has no value; on a
        # machine without a GPU no version holds GPU memory.
        no_value_here = ["gateway_repository_last_sync_timestamp_seconds"]
        if not read_gpu_memory().device:
            no_value_here.append("gateway_model_gpu_bytes")
        if not result and not any(name in query for name in no_value_here):
            empty.append(f"{title}: {query}")
        elif model == "digits":
            assert {item["metric"].get("model") for item in result} <= {"digits", None}, (title, result)
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


# ----------------------------------------------------------------------------- /metrics without Prometheus


def test_errors_are_counted_under_their_status(gateway: GatewayProcess, grpc_client):
    before = scrape(gateway)
    assert gateway.http.post("/v2/models/digits/infer", json=digits_body(width=63)).status_code == 400
    assert gateway.http.post("/v2/models/digits/infer", content=b"{not json").status_code == 400
    assert gateway.http.post("/v2/models/no_such_model/infer", json=digits_body()).status_code == 404
    assert gateway.http.post("/v2/models/digits/versions/7/infer", json=digits_body()).status_code == 404
    assert gateway.http.post("/v2/models/digits/infer", json=digits_body()).status_code == 200
    with pytest.raises(InferenceServerException):
        grpc_client.infer("digits", [grpc_input(width=63)])
    with pytest.raises(InferenceServerException):
        grpc_client.infer("no_such_model", [grpc_input()])
    after = scrape(gateway)

    def delta(protocol: str, status: str, model: str, version: str) -> float:
        return requests_total(after, protocol, status, model, version) - requests_total(
            before, protocol, status, model, version
        )

    assert delta("v2-rest", "InvalidArgument", "digits", "1") == 2
    assert delta("v2-rest", "NotFound", "", "") == 1
    # A known model keeps its name, whatever the version asked for.
    not_found = [
        count - value(before, name, **dict(labels))
        for (name, labels), count in after.items()
        if name == "gateway_inference_requests_total"
        and dict(labels).get("model") == "digits"
        and dict(labels).get("status") == "NotFound"
    ]
    assert sum(not_found) == 1
    assert delta("v2-rest", "success", "digits", "1") == 1
    assert delta("v2-grpc", "InvalidArgument", "digits", "1") == 1
    assert delta("v2-grpc", "NotFound", "", "") == 1
    assert not any(dict(labels).get("model") == "no_such_model" for (_, labels) in after), (
        "an unknown model name became a label value"
    )
    # Every answered request, failed or not, has its server-side duration recorded.
    for protocol, count in (("v2-rest", 3), ("v2-grpc", 1)):
        name = "gateway_inference_request_duration_seconds_count"
        assert value(after, name, **DIGITS, protocol=protocol) - value(before, name, **DIGITS, protocol=protocol) == (
            count
        )


def test_batch_size_queue_and_compute_follow_the_requests(gateway: GatewayProcess, grpc_client):
    before = scrape(gateway)
    assert gateway.http.post("/v2/models/digits/infer", json=digits_body(batch=5)).status_code == 200
    middle = scrape(gateway)
    assert (
        value(middle, "gateway_inference_batch_size_sum", **DIGITS)
        - value(before, "gateway_inference_batch_size_sum", **DIGITS)
        == 5
    )
    assert (
        value(middle, "gateway_inference_batch_size_count", **DIGITS)
        - value(before, "gateway_inference_batch_size_count", **DIGITS)
        == 1
    )
    bucket = "gateway_inference_batch_size_bucket"
    assert value(middle, bucket, **DIGITS, le="4.0") == value(before, bucket, **DIGITS, le="4.0")
    assert value(middle, bucket, **DIGITS, le="8.0") - value(before, bucket, **DIGITS, le="8.0") == 1

    for _ in range(3):
        assert gateway.http.post("/v2/models/digits/infer", json=digits_body(batch=2)).status_code == 200
    grpc_client.infer("digits", [grpc_input(batch=4)])
    # A request refused before it reaches the model is neither queued nor computed.
    assert gateway.http.post("/v2/models/digits/infer", json=digits_body(width=63)).status_code == 400
    after = scrape(gateway)
    for name in ("gateway_inference_queue_duration_seconds", "gateway_inference_compute_duration_seconds"):
        assert value(after, f"{name}_count", **DIGITS) - value(before, f"{name}_count", **DIGITS) == 5, name
        assert value(after, f"{name}_sum", **DIGITS) > value(before, f"{name}_sum", **DIGITS), name
    assert (
        value(after, "gateway_inference_compute_duration_seconds_sum", **DIGITS)
        - value(before, "gateway_inference_compute_duration_seconds_sum", **DIGITS)
        < 30
    )
    assert (
        value(after, "gateway_inference_batch_size_sum", **DIGITS)
        - value(before, "gateway_inference_batch_size_sum", **DIGITS)
        == 5 + 3 * 2 + 4
    )
    assert value(after, "gateway_inference_inflight_requests", **DIGITS) == 0
    assert value(after, "gateway_model_load_duration_seconds_count", **DIGITS) == 1


def test_model_ready_follows_load_and_unload_in_explicit_mode(digits_source: Path, tmp_path: Path):
    shutil.copytree(digits_source, tmp_path / "repository" / "digits")
    gateway = start_gateway(tmp_path / "repository", tmp_path / "gateway.log", "--model-control-mode", "explicit")
    ready_labels = {**DIGITS, "backend": "onnxruntime"}
    try:
        assert value(scrape(gateway), "gateway_model_ready", None, **ready_labels) in (None, 0)

        assert gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS).status_code == 200
        samples = scrape(gateway)
        assert value(samples, "gateway_model_ready", None, **ready_labels) == 1
        assert value(samples, "gateway_model_load_duration_seconds_count", **DIGITS) == 1
        assert value(samples, "gateway_model_load_duration_seconds_sum", **DIGITS) > 0
        assert gateway.http.post("/v2/models/digits/infer", json=digits_body()).status_code == 200

        assert gateway.http.post("/v2/repository/models/digits/unload", headers=ADMIN_HEADERS).status_code == 200
        assert value(scrape(gateway), "gateway_model_ready", None, **ready_labels) == 0
        assert gateway.http.post("/v2/models/digits/infer", json=digits_body()).status_code == 404
        # An unloaded model is still a model of the repository: counted under its name.
        assert requests_total(scrape(gateway), "v2-rest", "NotFound", "digits", "") == 1

        assert gateway.http.post("/v2/repository/models/digits/load", headers=ADMIN_HEADERS).status_code == 200
        samples = scrape(gateway)
        assert value(samples, "gateway_model_ready", None, **ready_labels) == 1
        assert value(samples, "gateway_model_load_duration_seconds_count", **DIGITS) == 2
        assert requests_total(samples, "v2-rest", "success", "digits", "1") == 1
    finally:
        gateway.stop()


# ----------------------------------------------------------------------------- request ids and JSON logs


def test_rest_request_ids_are_echoed(gateway: GatewayProcess):
    response = gateway.http.post("/v2/models/digits/infer", json=digits_body(), headers={"X-Request-ID": "my-id"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "my-id"

    # The v2 body id takes precedence over the header.
    response = gateway.http.post(
        "/v2/models/digits/infer", json=digits_body(request_id="body-id"), headers={"X-Request-ID": "header-id"}
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "body-id" and response.json()["id"] == "body-id"

    # Without either, the gateway makes one.
    generated = gateway.http.post("/v2/models/digits/infer", json=digits_body()).headers["X-Request-ID"]
    other = gateway.http.post("/v2/models/digits/infer", json=digits_body()).headers["X-Request-ID"]
    assert generated and other and generated != other

    # Refused requests carry their id too.
    response = gateway.http.post("/v2/models/digits/infer", json=digits_body(width=63), headers={"X-Request-ID": "e1"})
    assert response.status_code == 400 and response.headers["X-Request-ID"] == "e1"
    response = gateway.http.post("/v2/models/nope/infer", json=digits_body(), headers={"X-Request-ID": "e2"})
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "e2"


#: A line ONNX Runtime's C++ logger writes to stderr itself (e.g. "[W:onnxruntime:Default, ...]"), not Python logging.
NATIVE_ORT_LINE = re.compile(r"\[[VIWEF]:onnxruntime:")


def json_log_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """Every line of the gateway's log as JSON; the test fails on a line Python logging wrote as text."""
    lines = [line for line in gateway.logs().splitlines() if line.strip() and not NATIVE_ORT_LINE.search(line)]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"with --log-format json, a log line is not JSON: {line!r}")
    return records


def test_json_logs_carry_the_request_id(gateway: GatewayProcess):
    body_id = f"refused-{uuid.uuid4().hex}"
    header_id = f"unknown-{uuid.uuid4().hex}"
    response = gateway.http.post(
        "/v2/models/digits/infer", json=digits_body(width=63, request_id=body_id), headers={"X-Request-ID": "other"}
    )
    assert response.status_code == 400 and response.headers["X-Request-ID"] == body_id
    response = gateway.http.post(
        "/v2/models/no_such_model/infer", json=digits_body(), headers={"X-Request-ID": header_id}
    )
    assert response.status_code == 404

    def logged(request_id: str) -> list[dict[str, Any]]:
        return [record for record in json_log_records(gateway) if record.get("request_id") == request_id]

    refused = wait_for(lambda: logged(body_id), 10, "the refused request's log line")
    assert len(refused) == 1 and "refused" in refused[0]["message"] and "digits" in refused[0]["message"], refused
    assert refused[0]["level"] == "INFO" and {"time", "logger"} <= refused[0].keys(), refused
    unknown = wait_for(lambda: logged(header_id), 10, "the unknown model's log line")
    assert "no_such_model" in unknown[0]["message"], unknown
    # Lines logged outside a request say so.
    assert any(
        record.get("request_id") == "-" and "server ready" in record["message"] for record in json_log_records(gateway)
    )


def test_grpc_request_ids_are_echoed_in_metadata(stub: service_pb2_grpc.GRPCInferenceServiceStub):
    response, call = stub.ModelInfer.with_call(raw_infer_request(), metadata=[("x-request-id", "grpc-id")])
    assert response.model_name == "digits"
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-id"

    # The v2 id in the request takes precedence over the metadata, and is echoed in the response.
    response, call = stub.ModelInfer.with_call(raw_infer_request("body-id"), metadata=[("x-request-id", "grpc-id")])
    assert dict(call.trailing_metadata())["x-request-id"] == "body-id" and response.id == "body-id"

    _, call = stub.ModelInfer.with_call(raw_infer_request())
    assert len(dict(call.trailing_metadata())["x-request-id"]) >= 16  # generated

    # A refused call carries the id in its trailing metadata too.
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer.with_call(raw_infer_request(width=63), metadata=[("x-request-id", "bad-id")])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.value.trailing_metadata() or ())["x-request-id"] == "bad-id"
