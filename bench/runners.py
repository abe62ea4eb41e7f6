"""Front ends and model runners against the in-process gateway and ONNX Runtime itself (issue 16's targets).

One run, on every core (nothing pinned: the issue measures front ends and runners unpinned), with
the load generators of ``bench/serving.py`` (wrk for REST binary, h2load for gRPC; 8 connections,
concurrency 32, batch 1 per request):

- **the limit**: ONNX Runtime in this process running the large MLP (1024 wide, 4 hidden layers) at
  batch 32, items/s, with as many intra-op threads as the machine has cores, and with the thread count
  a model runner uses (``gateway.process.runner.runner_cpu_cores``: the cores less one per front end,
  at least one; the issue compares at the same thread count);
- **throughput** of four ways to serve: the gateway in one process; ``--workers 2`` as two whole
  gateways (``GATEWAY_MODEL_RUNNERS=false``); one front end with model runners
  (``--model-runners``); two front ends with runners (``--workers 2``, the default). Rows: the
  large MLP over REST binary (dynamic batching, ``max_batch_size`` 32, ``max_queue_delay`` 500 us),
  the small MLP (64-128-10) over REST binary and gRPC;
- **memory**: a model holding 500 MB of weights served by one and by four front ends with runners
  (and by four whole gateways, for contrast): the proportional set size (PSS: shared pages split
  among the processes that map them, so a library or a shared-memory arena is counted once) and the
  resident set size, summed over the supervisor and all its children, after 50 requests.

Every load run is checked as ``bench/serving.py`` checks it (non-2xx answers, the gateway's own
failure counts). Then the issue's targets, met or missed.

Usage (``bash bench/run.sh`` installs wrk and h2load)::

    .venv/bin/python bench/runners.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import write_weighty_model  # noqa: E402
from bench.serving import (  # noqa: E402
    MODELS,
    Figure,
    free_port,
    gateway,
    measure,
    session_figures,
    tools_installed,
    write_mlp_repository,
)
from gateway.process.runner import runner_cpu_cores  # noqa: E402
from gateway.runtime.memory_budget import process_tree  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402

MB = 1_000_000
#: The ways to serve: name -> (workers, extra arguments, environment).
SETUPS: dict[str, tuple[int, tuple[str, ...], dict[str, str]]] = {
    "in process": (1, (), {}),
    "2 whole gateways": (2, (), {"GATEWAY_MODEL_RUNNERS": "false"}),
    "1 front end + runner": (1, ("--model-runners",), {}),
    "2 front ends + runner": (2, (), {}),
}
#: The setups with model runners, whose large-MLP rows are held to the limit at the runner's thread count.
RUNNER_SETUPS = ("1 front end + runner", "2 front ends + runner")
ROWS = (("large", "REST binary"), ("small", "REST binary"), ("small", "gRPC"))


def batched_limit(model_file: Path, width: int, seconds: float, threads: int) -> float:
    """Items/s of ONNX Runtime in this process at batch 32 with ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    (batched,) = session_figures(session, width, (32,), seconds, warmup_runs=20)
    return batched.items_per_second


def runner_threads(workers: int) -> int:
    """The intra-op threads a model runner gives the large MLP (one instance) with ``workers`` front ends."""
    return runner_cpu_cores(GatewaySettings(workers=workers, model_runners=True))


def memory(pid: int) -> tuple[int, int, int]:
    """Summed over ``pid``'s tree, in bytes: PSS, RSS; and how many processes."""
    pss = rss = count = 0
    for member in process_tree(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "resource_tracker" in Path(f"/proc/{member}/cmdline").read_bytes().decode(errors="replace"):
            continue  # multiprocessing's helper: the same whatever serves
        pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)[1]) * 1024  # type: ignore[index]
        rss += int(re.search(r"^Rss:\s+(\d+) kB", rollup, re.MULTILINE)[1]) * 1024  # type: ignore[index]
        count += 1
    return pss, rss, count


def measure_memory(folder: Path, workers: int, extra: tuple[str, ...], env: dict[str, str]) -> tuple[int, int, int]:
    """The memory of a gateway serving the 500 MB model once 50 requests (new connections) were answered."""
    repository = folder / "weighty"
    ports = free_port(), free_port()
    with gateway(repository, None, *ports, workers=workers, extra_args=extra, env=env) as (_http, pid):
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}
        for _ in range(50):
            response = httpx.post(f"http://127.0.0.1:{ports[0]}/v2/models/weighty/infer", json=body, timeout=60)
            if response.status_code != 200 or response.json()["outputs"][0]["data"] != [6.0]:
                raise RuntimeError(f"bad answer: {response.status_code} {response.text[:200]}")
        time.sleep(1)
        return memory(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each load run in seconds (default 5)")
    parser.add_argument("--skip-throughput", action="store_true", help="measure memory only")
    args = parser.parse_args()
    if not tools_installed("wrk", "h2load"):
        return 2
    folder = Path(tempfile.mkdtemp(prefix="gateway-runners-bench-"))
    repository = folder / "repository"
    write_mlp_repository(repository)
    write_weighty_model(folder / "weighty" / "weighty" / "1" / "model.onnx", 3.0, 500 * MB)

    rows: dict[tuple[str, str, str], Figure] = {}
    cores = len(os.sched_getaffinity(0))
    limits: dict[int, float] = {}  # by intra-op thread count
    if not args.skip_throughput:
        for threads in sorted({cores, *(runner_threads(SETUPS[setup][0]) for setup in RUNNER_SETUPS)}):
            limits[threads] = batched_limit(
                repository / "large" / "1" / "model.onnx", MODELS["large"][0], args.seconds, threads
            )
        for setup, (workers, extra, env) in SETUPS.items():
            ports = free_port(), free_port()
            with gateway(repository, None, *ports, workers=workers, extra_args=extra, env=env) as (http, _):
                for name, path in ROWS:
                    rows[(setup, name, path)] = measure(
                        http, folder, name, path, 32, args.seconds, None, ports, connections=8
                    )
    memories = {
        "1 front end + runner": measure_memory(folder, 1, ("--model-runners",), {}),
        "4 front ends + runner": measure_memory(folder, 4, (), {}),
        "4 whole gateways": measure_memory(folder, 4, (), {"GATEWAY_MODEL_RUNNERS": "false"}),
        "in process": measure_memory(folder, 1, (), {}),
    }
    shutil.rmtree(folder, ignore_errors=True)

    failed = False
    if rows:
        for threads, limit in limits.items():
            print(f"limit: ONNX Runtime in process, large MLP, batch 32, {threads} threads: {limit:,.0f} items/s")
        print(f"\n{'setup':<24}{'model':<7}{'path':<13}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for (setup, name, path), figure in rows.items():
            if figure.failed:
                failed = True
                print(f"{setup:<24}{name:<7}{path:<13}  FAILED: {figure.failed}")
                continue
            p50 = figure.p50 * 1e3 if figure.p50 is not None else float("nan")
            p99 = figure.p99 * 1e3 if figure.p99 is not None else float("nan")
            print(f"{setup:<24}{name:<7}{path:<13}{figure.requests_per_second:>9,.0f}{p50:>9.2f}{p99:>9.2f}")
    print(f"\n{'memory, 500 MB model':<24}{'processes':>10}{'PSS MB':>9}{'RSS MB':>9}")
    for setup, (pss, rss, count) in memories.items():
        print(f"{setup:<24}{count:>10}{pss / MB:>9.0f}{rss / MB:>9.0f}")

    print("\ntargets:")
    if rows:
        for setup in RUNNER_SETUPS:
            figure = rows[(setup, "large", "REST binary")]
            threads = runner_threads(SETUPS[setup][0])
            limit = limits[threads]
            print(
                f"  large MLP c=32, {setup}: {figure.requests_per_second:,.0f} items/s = "
                f"{figure.requests_per_second / limit:.0%} of the in-process limit at the runner's {threads} "
                f"thread(s) (target 70%): {'met' if figure.requests_per_second >= 0.7 * limit else 'MISSED'}; "
                f"{figure.requests_per_second / limits[cores]:.0%} of the limit at {cores} threads"
            )
        for path, target in (("REST binary", 8000), ("gRPC", 6000)):
            figure = max(
                (rows[(setup, "small", path)] for setup in SETUPS), key=lambda figure: figure.requests_per_second
            )
            print(
                f"  small MLP c=32 over {path}, best setup: {figure.requests_per_second:,.0f} req/s "
                f"(target {target:,}): {'met' if figure.requests_per_second >= target else 'MISSED'}"
            )
    one, four = memories["1 front end + runner"][0], memories["4 front ends + runner"][0]
    print(
        f"  memory, 1 -> 4 front ends (PSS): {one / MB:.0f} -> {four / MB:.0f} MB, +{four / one - 1:.0%} "
        f"(target under 15%): {'met' if four < one * 1.15 else 'MISSED'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
