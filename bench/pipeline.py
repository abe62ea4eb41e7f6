"""What a pipeline step costs: a two-step pipeline against a client calling the two models in turn.

Writes two small MLPs as ONNX (``bench/models.py``): ``scale`` 64-64 and ``classify`` 64-128-10, and
a pipeline ``chain`` (config.yaml ``pipeline``: scale's output into classify's input). Starts one
``gateway serve`` and, from one client, sequentially, in interleaved rounds (so that drift on a
shared machine hits both paths alike):

- **two calls**: ``scale`` then ``classify`` with the first answer, as a client would chain them;
- **pipeline**: ``chain`` once;

over REST JSON (httpx, one kept-alive connection) and gRPC (tritonclient, one channel), batch 1.
Prints p50 / p99 / mean client-side latency per path, and from the gateway's own histograms the
server-side mean of each model and of the pipeline: the pipeline's server time minus its two
models' is what running the steps in process costs (looking up the step's version, checking its
tensors, queueing on its scheduler).

    .venv/bin/python bench/pipeline.py [--requests 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import write_mlp
from bench.serving import free_port, gateway

PIPELINE = """
max_batch_size: 8
inputs: [{name: pixels, datatype: FP32, dims: [64]}]
outputs: [{name: logits, datatype: FP32, dims: [10]}]
pipeline:
  steps:
    - {model_name: scale, input_map: {input: pixels}, output_map: {output: scaled}}
    - {model_name: classify, input_map: {input: scaled}, output_map: {output: logits}}
"""


def rest_call(http: httpx.Client, model: str, name: str, x: list[float]) -> list[float]:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, len(x)], "data": x}]}
    response = http.post(f"/v2/models/{model}/infer", json=body)
    response.raise_for_status()
    data: list[float] = response.json()["outputs"][0]["data"]
    return data


def server_mean_seconds(http: httpx.Client, model: str, protocol: str) -> tuple[float, float]:
    """(sum, count) of the server-side request duration of ``model`` over ``protocol`` so far."""
    text = http.get("/metrics").text
    values = {}
    for suffix in ("sum", "count"):
        pattern = rf"gateway_inference_request_duration_seconds_{suffix}\{{([^}}]*)\}} (\S+)"
        for labels, value in re.findall(pattern, text):
            if f'model="{model}"' in labels and f'protocol="{protocol}"' in labels:
                values[suffix] = float(value)
    return values.get("sum", 0.0), values.get("count", 0.0)


def figures(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1e3
    return f"p50 {np.percentile(ms, 50):7.3f}  p99 {np.percentile(ms, 99):7.3f}  mean {ms.mean():7.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per path (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    options = parser.parse_args()
    import tritonclient.grpc as triton_grpc

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "repository"
        write_mlp(root / "scale" / "1" / "model.onnx", (64, 64), seed=1)
        write_mlp(root / "classify" / "1" / "model.onnx", (64, 128, 10), seed=2)
        (root / "chain").mkdir(parents=True)
        (root / "chain" / "config.yaml").write_text(PIPELINE)
        http_port, grpc_port = free_port(), free_port()
        with gateway(root, None, http_port, grpc_port) as (http, _):
            grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

            def rest_two() -> None:
                rest_call(http, "classify", "input", rest_call(http, "scale", "input", x.ravel().tolist()))

            def rest_pipeline() -> None:
                rest_call(http, "chain", "pixels", x.ravel().tolist())

            def grpc_call(model: str, name: str, value: np.ndarray, output: str) -> np.ndarray:
                tensor = triton_grpc.InferInput(name, list(value.shape), "FP32")
                tensor.set_data_from_numpy(value)
                answer: np.ndarray = grpc.infer(model, [tensor]).as_numpy(output)
                return answer

            def grpc_two() -> None:
                grpc_call("classify", "input", grpc_call("scale", "input", x, "output"), "output")

            def grpc_pipeline() -> None:
                grpc_call("chain", "pixels", x, "logits")

            paths = {
                "REST JSON  two calls": rest_two,
                "REST JSON  pipeline ": rest_pipeline,
                "gRPC       two calls": grpc_two,
                "gRPC       pipeline ": grpc_pipeline,
            }
            for run in paths.values():  # warm up
                for _ in range(200):
                    run()
            before = {
                (model, protocol): server_mean_seconds(http, model, protocol)
                for model in ("scale", "classify", "chain")
                for protocol in ("v2-rest", "v2-grpc")
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            per_round = options.requests // options.rounds
            for _ in range(options.rounds):
                for name, run in paths.items():
                    for _ in range(per_round):
                        started = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - started)
            grpc.close()
            print(f"client-side latency, ms, {per_round * options.rounds} requests per path, batch 1, sequential")
            for name, seconds in times.items():
                print(f"  {name}  {figures(seconds)}")
            print("server-side mean, ms (the gateway's request duration histogram)")
            for protocol in ("v2-rest", "v2-grpc"):
                means = {}
                for model in ("scale", "classify", "chain"):
                    total, count = server_mean_seconds(http, model, protocol)
                    old_total, old_count = before[(model, protocol)]
                    means[model] = (total - old_total) / max(count - old_count, 1) * 1e3
                steps = means["scale"] + means["classify"]
                print(
                    f"  {protocol}: scale {means['scale']:.3f} + classify {means['classify']:.3f} = {steps:.3f}; "
                    f"pipeline {means['chain']:.3f} (in-process steps cost {means['chain'] - steps:+.3f} ms)"
                )


if __name__ == "__main__":
    main()
