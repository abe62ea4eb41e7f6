"""Dynamic batching and instances against a real gateway: merged requests get exactly their own rows.

The model computes each row on its own with exactly rounded operations (Abs, Add, Sqrt, Mul), so a
row's output cannot depend on the other rows of its batch: any difference between the batched
answers and ONNX Runtime run in process on each request alone is a batching bug (rows mixed up,
split at the wrong offsets, requests of different lengths merged). Its many small operators make
each run cost far more than handing it to a worker thread, so the scheduler runs it in threads,
where requests queue and merge. A ``Gather`` output lets a request fail inside the runtime (an index
out of range) after passing every check, to show that only that request gets the error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.conftest import GatewayProcess, start_gateway

LAYERS = 150
TABLE_ROWS = 10
BATCHED_CONFIG = """\
max_batch_size: 16
instance_count: {instances}
dynamic_batching:
  max_queue_delay_microseconds: 20000
  preferred_batch_size: [16]
  max_queue_size: {queue}
"""


def write_rowwise_model(path: Path) -> None:
    """Inputs ``x`` FP32 [batch, length] and ``index`` INT64 [batch, 1]; outputs ``y`` = LAYERS rounds of
    ``sqrt(|h| + 1) * 1.5`` on ``x`` (same shape), and ``row`` = ``table[index]`` FP32 [batch, 1, 4]."""
    nodes = []
    previous = "x"
    for layer in range(LAYERS):
        nodes += [
            helper.make_node("Abs", [previous], [f"a{layer}"]),
            helper.make_node("Add", [f"a{layer}", "one"], [f"b{layer}"]),
            helper.make_node("Sqrt", [f"b{layer}"], [f"c{layer}"]),
            helper.make_node("Mul", [f"c{layer}", "scale"], ["y" if layer == LAYERS - 1 else f"h{layer}"]),
        ]
        previous = f"h{layer}"
    nodes.append(helper.make_node("Gather", ["table", "index"], ["row"], axis=0))
    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    graph = helper.make_graph(
        nodes,
        "rowwise",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "length"]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 1, 4]),
        ],
        [
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array(1.5, dtype=np.float32), "scale"),
            numpy_helper.from_array(table, "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rowwise") / "model.onnx"
    write_rowwise_model(path)
    return path


@pytest.fixture(scope="module")
def reference(model_file: Path) -> ort.InferenceSession:
    """ONNX Runtime in this process: the answer each request would get alone."""
    return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    root = tmp_path_factory.mktemp("batching-repository")
    for name, config in {
        "batched": BATCHED_CONFIG.format(instances=1, queue=0),
        "batched_two_instances": BATCHED_CONFIG.format(instances=2, queue=0),
        "queue_limited": BATCHED_CONFIG.format(instances=1, queue=2),
    }.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(model_file.read_bytes())
        (root / name / "config.yaml").write_text(config)
    gateway = start_gateway(root, tmp_path_factory.mktemp("logs") / "gateway.log")
    yield gateway
    gateway.stop()


def batch_sizes(gateway: GatewayProcess, model: str) -> tuple[float, float]:
    """Number of backend runs of ``model`` and the items they held, from ``gateway_inference_batch_size``."""
    count = total = 0.0
    for line in gateway.http.get("/metrics").text.splitlines():
        if f'model="{model}"' in line and line.startswith("gateway_inference_batch_size_"):
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("gateway_inference_batch_size_count"):
                count = value
            elif line.startswith("gateway_inference_batch_size_sum"):
                total = value
    return count, total


def infer_rest_json(gateway: GatewayProcess, model: str, x: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
            {"name": "index", "datatype": "INT64", "shape": list(index.shape), "data": index.ravel().tolist()},
        ]
    }
    response = gateway.http.post(f"/v2/models/{model}/infer", json=body)
    if response.status_code != 200:
        return {"error": (response.status_code, response.json()["error"])}
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    return {
        name: np.asarray(outputs[name]["data"], dtype=np.float32).reshape(outputs[name]["shape"])
        for name in ("y", "row")
    }


def infer_rest_binary(gateway: GatewayProcess, model: str, x: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": x.nbytes}},
            {
                "name": "index",
                "datatype": "INT64",
                "shape": list(index.shape),
                "parameters": {"binary_data_size": index.nbytes},
            },
        ],
        "parameters": {"binary_data_output": True},
    }
    encoded = httpx.Request("POST", "/", json=header).read()
    response = gateway.http.post(
        f"/v2/models/{model}/infer",
        content=encoded + x.tobytes() + index.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )
    if response.status_code != 200:
        return {"error": (response.status_code, response.json()["error"])}
    json_length = int(response.headers["Inference-Header-Content-Length"])
    answer = httpx.Response(200, content=response.content[:json_length]).json()
    results: dict[str, Any] = {}
    offset = json_length
    for output in answer["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw = response.content[offset : offset + size]
        results[output["name"]] = np.frombuffer(raw, dtype=np.float32).reshape(output["shape"])
        offset += size
    assert offset == len(response.content)
    return results


def infer_grpc(
    client: triton_grpc.InferenceServerClient, model: str, x: np.ndarray, index: np.ndarray
) -> dict[str, Any]:
    inputs = [
        triton_grpc.InferInput("x", list(x.shape), "FP32"),
        triton_grpc.InferInput("index", list(index.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(index)
    try:
        result = client.infer(model, inputs)
    except InferenceServerException as error:
        return {"error": (error.status(), error.message())}
    return {name: result.as_numpy(name) for name in ("y", "row")}


@pytest.mark.parametrize("model", ["batched", "batched_two_instances"])
def test_concurrent_mixed_requests_get_exactly_their_unbatched_outputs(server, reference, model):
    rng = random.Random(7)
    numbers = np.random.default_rng(7)
    requests = []
    for number in range(240):
        batch = rng.choice([1, 1, 2, 3, 5, 8])
        length = rng.choice([8, 13])  # two lengths: only requests of one length can merge
        x = numbers.standard_normal((batch, length)).astype(np.float32)
        index = numbers.integers(0, TABLE_ROWS, size=(batch, 1))
        if number % 40 == 17:
            index[-1, 0] = TABLE_ROWS + 5  # out of range: fails inside ONNX Runtime
        requests.append((rng.choice(["json", "binary", "grpc"]), x, index))
    before_runs, before_items = batch_sizes(server, model)
    client = triton_grpc.InferenceServerClient(server.grpc_address)

    def send(request: tuple[str, np.ndarray, np.ndarray]) -> dict[str, Any]:
        protocol, x, index = request
        if protocol == "json":
            return infer_rest_json(server, model, x, index)
        if protocol == "binary":
            return infer_rest_binary(server, model, x, index)
        return infer_grpc(client, model, x, index)

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(send, requests))
    client.close()

    failed = 0
    for (protocol, x, index), answer in zip(requests, answers, strict=True):
        if index.max() >= TABLE_ROWS:
            failed += 1
            status, message = answer["error"]
            assert status in (400, "StatusCode.INVALID_ARGUMENT"), (protocol, answer)
            assert "rejected the inputs" in message
            continue
        assert "error" not in answer, (protocol, answer)
        expected_y, expected_row = reference.run(["y", "row"], {"x": x, "index": index})
        assert answer["y"].shape == x.shape and np.array_equal(answer["y"], expected_y), protocol
        assert np.array_equal(answer["row"], expected_row), protocol
    assert failed == 6
    runs, items = batch_sizes(server, model)
    ok_items = sum(len(x) for _, x, index in requests if index.max() < TABLE_ROWS)
    # Merging happened: fewer backend runs than requests (failed batches rerun their requests alone).
    assert runs - before_runs < len(requests) * 0.8
    assert items - before_items >= ok_items


def test_a_full_queue_is_refused_at_once_with_503_and_unavailable(server, reference):
    # A long row keeps the only instance busy for a while; two more requests fill the queue (size 2).
    slow = np.ones((1, 5_000_000), dtype=np.float32)
    index = np.zeros((1, 1), dtype=np.int64)
    with ThreadPoolExecutor(max_workers=3) as pool:
        running = pool.submit(infer_rest_binary, server, "queue_limited", slow, index)
        wait_until(lambda: inflight(server, "queue_limited") == 1)
        queued = [pool.submit(infer_rest_binary, server, "queue_limited", slow, index) for _ in range(2)]
        wait_until(lambda: inflight(server, "queue_limited") == 3)
        refused_rest = infer_rest_json(server, "queue_limited", slow[:, :4], index)
        client = triton_grpc.InferenceServerClient(server.grpc_address)
        refused_grpc = infer_grpc(client, "queue_limited", slow[:, :4], index)
        client.close()
        still_running = not running.done()
        answers = [running.result(), *(future.result() for future in queued)]
    assert still_running, "the first request finished before the queue was full: make it slower"
    assert refused_rest["error"][0] == 503 and "queue is full" in refused_rest["error"][1]
    assert refused_grpc["error"][0] == "StatusCode.UNAVAILABLE"
    expected = reference.run(["y"], {"x": slow, "index": index})[0]
    for answer in answers:
        assert np.array_equal(answer["y"], expected)


def inflight(gateway: GatewayProcess, model: str) -> float:
    """``gateway_inference_inflight_requests`` of ``model`` (requests being answered: running or queued)."""
    for line in gateway.http.get("/metrics").text.splitlines():
        if line.startswith("gateway_inference_inflight_requests") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
