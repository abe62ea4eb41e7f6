"""The large MLP on a GPU: ONNX Runtime's CUDA execution provider in process, and through the gateway.

Ready for a machine with an NVIDIA GPU and ``onnxruntime-gpu`` installed (the ``gpu`` extra: ``pip
uninstall -y onnxruntime && pip install -e '.[gpu]'``); on a machine without them it says so and exits
with status 2, measuring nothing. One run:

- **the limit**: ONNX Runtime in this process with ``CUDAExecutionProvider``, the large MLP (1024 wide,
  4 hidden layers) at batch 1 (calls/s, p50) and at batch 32 (items/s);
- **the gateway**, the model's config asking for CUDA then CPU (the metadata's ``execution_providers``
  must list CUDA first, else the row fails), over REST binary at concurrency 32 (wrk, 8 connections),
  dynamic batching up to 32: in one process, and with two front ends and a model runner.

Every load run is checked for failures as in ``serving.py``. Usage::

    .venv/bin/python bench/gpu.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

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

CUDA = "CUDAExecutionProvider"
SETUPS: dict[str, tuple[int, tuple[str, ...]]] = {"in process": (1, ()), "2 front ends + runner": (2, ())}


def cuda_limit(model_file: Path, width: int, seconds: float) -> tuple[Figure, Figure]:
    """ONNX Runtime with CUDA in this process: batch 1 (calls/s, p50, p99) and batch 32 (items/s)."""
    session = ort.InferenceSession(str(model_file), providers=[CUDA, "CPUExecutionProvider"])
    if session.get_providers()[0] != CUDA:
        raise RuntimeError(f"ONNX Runtime did not start CUDA: it runs with {session.get_providers()}")
    one, batched = session_figures(session, width, (1, 32), seconds / 2, warmup_runs=100)
    return one, batched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run in seconds (default 5)")
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
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
    (repository / "large" / "config.yaml").write_text(
        CONFIGS["large"] + "onnxruntime:\n  execution_providers: [CUDA, CPU]\n"
    )
    one, batched = cuda_limit(repository / "large" / "1" / "model.onnx", MODELS["large"][0], args.seconds)
    rows: dict[str, Figure] = {}
    for setup, (workers, extra) in SETUPS.items():
        ports = free_port(), free_port()
        with gateway(repository, None, *ports, workers=workers, extra_args=extra) as (http, _):
            providers = http.get("/v2/models/large").json().get("parameters", {}).get("execution_providers", [])
            figure = measure(http, folder, "large", "REST binary", 32, args.seconds, None, ports, connections=8)
            if not providers or providers[0] != CUDA:
                figure.failed = f"the gateway runs the model with {providers}, not CUDA"
            rows[setup] = figure
    shutil.rmtree(folder, ignore_errors=True)
    print(f"\nlimit, CUDA in process: batch 1 {one.requests_per_second:,.0f} calls/s (p50 {one.p50 * 1e3:.3f} ms), "
          f"batch 32 {batched.items_per_second:,.0f} items/s")  # fmt: skip
    for setup, figure in rows.items():
        if figure.failed:
            print(f"{setup:<24} FAILED: {figure.failed}")
        else:
            share = figure.requests_per_second / batched.items_per_second
            print(
                f"{setup:<24} large REST binary c=32: {figure.requests_per_second:,.0f} req/s "
                f"({share:.0%} of the limit)"
            )
    return 1 if any(figure.failed for figure in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
