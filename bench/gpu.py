"""The large MLP on a GPU: ONNX Runtime's CUDA execution provider in process, and through the gateway.

Ready for a machine with an NVIDIA GPU and ``onnxruntime-gpu`` installed (the ``gpu`` extra: ``pip
uninstall -y onnxruntime && pip install -e '.[gpu]'``, which brings NVML's binding ``nvidia-ml-py``
too); on a machine without them it says so and exits with status 2, measuring nothing. One run:

- **the limit**: ONNX Runtime in this process with ``CUDAExecutionProvider``, the large MLP (1024 wide,
  4 hidden layers) at batch 1 (calls/s, p50) and at batch 32 (items/s);
- **the gateway**, the model's config asking for CUDA then CPU, over REST binary at concurrency 32 (wrk,
  8 connections), dynamic batching up to 32: in one process, and with two front ends and a model runner.
  A row fails when the model's metadata does not list CUDA first among its execution providers or does
  not run with I/O binding. Each row shows the version's GPU bytes as the repository index has them;
- **the GPU budget**: three copies of the large MLP loaded on request by model runners under
  ``--gpu-memory-budget-bytes`` of 2.5 times what one runner measured, called round robin: every request
  must succeed, runners must be evicted, and the GPU memory of the gateway's processes (NVML, sampled
  after each request) must stay under the budget plus 15%.

Every load run is checked for failures as in ``serving.py``. ``--cpu`` runs the same steps with the CPU
provider on a machine without a GPU, to check the script itself: its figures say nothing of a GPU, and
the GPU checks are skipped. Usage::

    .venv/bin/python bench/gpu.py [--seconds 5] [--cpu]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.serving import (  # noqa: E402
    CONFIGS,
    MODELS,
    Figure,
    free_port,
    gateway,
    measure,
    session_figures,
    tools_installed,
    write_mlp_repository,
)
from gateway.runtime.gpu_memory import processes_gpu_bytes  # noqa: E402
from gateway.runtime.memory_budget import process_tree  # noqa: E402

CUDA = "CUDAExecutionProvider"
SETUPS: dict[str, tuple[int, tuple[str, ...]]] = {"in process": (1, ()), "2 front ends + runner": (2, ())}
#: The copies of the large MLP called round robin under the GPU budget, and the rounds.
BUDGET_MODELS = ("large_a", "large_b", "large_c")
BUDGET_ROUNDS = 10


def cuda_limit(model_file: Path, width: int, seconds: float, provider: str) -> tuple[Figure, Figure]:
    """ONNX Runtime with ``provider`` in this process: batch 1 (calls/s, p50, p99) and batch 32 (items/s)."""
    session = ort.InferenceSession(str(model_file), providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"ONNX Runtime did not start {provider}: it runs with {session.get_providers()}")
    one, batched = session_figures(session, width, (1, 32), seconds / 2, warmup_runs=100)
    return one, batched


def gpu_bytes(http: httpx.Client, model: str) -> dict[str, int]:
    """The GPU bytes of ``model``'s READY version, as the repository index shows them (device -> bytes)."""
    for entry in http.post("/v2/repository/index", json={}).json():
        if entry["name"] == model and entry["state"] == "READY":
            return {str(device): int(bytes_) for device, bytes_ in entry.get("gpu_bytes", {}).items()}
    return {}


def gateway_gpu_bytes(pid: int) -> int:
    """The GPU memory, on every device, of the gateway with root process ``pid`` and its children (NVML)."""
    return sum(processes_gpu_bytes(set(process_tree(pid))).values())


def budget_round_robin(folder: Path, repository: Path, budget: int, on_gpu: bool) -> str | None:
    """The GPU budget run: why it failed, or None."""
    for name in BUDGET_MODELS:
        shutil.copytree(repository / "large", folder / "budget" / name)
    ports = free_port(), free_port()
    extra = ("--model-load-on-request", "--model-control-mode", "explicit", "--gpu-memory-budget-bytes", str(budget))
    x = np.random.default_rng(0).random((1, MODELS["large"][0]), dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    peak = 0
    with gateway(folder / "budget", None, *ports, workers=2, extra_args=extra) as (http, pid):
        for _ in range(BUDGET_ROUNDS):
            for name in BUDGET_MODELS:
                response = http.post(f"/v2/models/{name}/infer", json=body)
                if response.status_code != 200:
                    return f"{name}: {response.status_code} {response.text}"
                peak = max(peak, gateway_gpu_bytes(pid) if on_gpu else 0)
        evictions = sum(
            float(line.rsplit(" ", 1)[1])
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("gateway_model_evictions_total{")
        )
    print(
        f"GPU budget {budget:,} bytes: {len(BUDGET_MODELS) * BUDGET_ROUNDS} requests round robin over "
        f"{len(BUDGET_MODELS)} models ok, {evictions:.0f} evictions, peak GPU memory of the gateway {peak:,} bytes "
        f"({peak / budget:.0%} of the budget)"
    )
    if on_gpu and evictions == 0:
        return "no runner was evicted"
    if on_gpu and peak > 1.15 * budget:
        return f"the gateway held {peak:,} bytes of GPU memory, more than the budget + 15%"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run in seconds (default 5)")
    parser.add_argument("--cpu", action="store_true", help="check the script on the CPU provider (no GPU figures)")
    args = parser.parse_args()
    provider = "CPUExecutionProvider" if args.cpu else CUDA
    if provider not in ort.get_available_providers():
        print(
            f"this onnxruntime build has no {CUDA} (it has {ort.get_available_providers()}): install the gpu extra "
            "on a machine with an NVIDIA GPU; nothing measured",
            file=sys.stderr,
        )
        return 2
    if not tools_installed("wrk"):
        return 2
    folder = Path(tempfile.mkdtemp(prefix="gateway-gpu-bench-"))
    repository = folder / "repository"
    write_mlp_repository(repository)
    short = "CPU" if args.cpu else "CUDA, CPU"
    (repository / "large" / "config.yaml").write_text(
        CONFIGS["large"] + f"onnxruntime:\n  execution_providers: [{short}]\n  io_binding: true\n"
    )
    one, batched = cuda_limit(repository / "large" / "1" / "model.onnx", MODELS["large"][0], args.seconds, provider)
    rows: dict[str, tuple[Figure, dict[str, int]]] = {}
    for setup, (workers, extra) in SETUPS.items():
        ports = free_port(), free_port()
        with gateway(repository, None, *ports, workers=workers, extra_args=extra) as (http, _):
            parameters = http.get("/v2/models/large").json().get("parameters", {})
            figure = measure(http, folder, "large", "REST binary", 32, args.seconds, None, ports, connections=8)
            providers = parameters.get("execution_providers", [])
            if not providers or providers[0] != provider:
                figure.failed = f"the gateway runs the model with {providers}, not {provider}"
            elif parameters.get("io_binding") is not True:
                figure.failed = "the gateway runs the model without I/O binding"
            rows[setup] = figure, gpu_bytes(http, "large")
    print(f"\nlimit, {provider} in process: batch 1 {one.requests_per_second:,.0f} calls/s "
          f"(p50 {one.p50 * 1e3:.3f} ms), batch 32 {batched.items_per_second:,.0f} items/s")  # fmt: skip
    for setup, (figure, held) in rows.items():
        if figure.failed:
            print(f"{setup:<24} FAILED: {figure.failed}")
        else:
            share = figure.requests_per_second / batched.items_per_second
            print(
                f"{setup:<24} large REST binary c=32: {figure.requests_per_second:,.0f} req/s "
                f"({share:.0%} of the limit); GPU bytes of the version: {held or 'none'}"
            )
    runner_held = sum(rows["2 front ends + runner"][1].values())
    if not args.cpu and runner_held == 0:
        budget_failed: str | None = "the model runner measured no GPU bytes (is nvidia-ml-py installed?)"
    else:
        budget_failed = budget_round_robin(folder, repository, int(2.5 * max(runner_held, 1)), not args.cpu)
    if budget_failed:
        print(f"GPU budget FAILED: {budget_failed}")
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if budget_failed or any(figure.failed for figure, _ in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
