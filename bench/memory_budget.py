"""The memory budget under round-robin traffic: six models of 200 MB under a 700 MB budget.

Writes six ONNX models of ``--model-mb`` MB of weights each (random FP32 values the answer reads one
of, times zero; ``y = x * k`` for model k, so every answer says which model gave it) into a temporary
folder, starts one ``gateway serve --model-load-on-request --memory-budget-bytes <budget>``, and calls
the models round robin over REST (one client, one request at a time, a new model each call) for
``--seconds``. Meanwhile a thread samples the gateway process's ``VmRSS`` in ``/proc/<pid>/status``
every 10 ms; ``VmHWM`` (the kernel's own peak) is read at the end, but it covers only the time since
the last load began: the gateway resets it at each load to measure that load's peak.

``--scope gateway`` serves with ``--memory-budget-scope gateway``: the budget then bounds the whole
gateway, its own processes included, not the versions' bytes alone.

With ``--workers N`` (N front ends and model runners: the budget is the machine's, held by the
supervisor) the figure is the proportional set size (PSS, ``/proc/<pid>/smaps_rollup``) summed over
the supervisor and all its children (front ends, runners, the fork server), sampled every 20 ms: the
resident sets would count the pages the processes share once per process.

Prints: the resident set before the first request (the baseline: interpreter, libraries, servers),
its peak (sampled and ``VmHWM``) against the budget, and the peak above the baseline; requests ok and
failed (a wrong answer counts as failed); evictions and loads on request (the gateway's metrics); the
client-side time of the calls that waited for a load and of those that did not, and the server's mean
load time. The target (issue 16): the resident set stays under budget + 15% and every request
succeeds; the exit status is 1 when it is missed.

    .venv/bin/python bench/memory_budget.py [--seconds 60] [--models 6] [--model-mb 200] [--budget-mb 700] [--workers 1]
        [--scope models|gateway]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import write_weighty_model
from bench.runners import memory
from bench.serving import REPO_ROOT, free_port

MB = 1_000_000


def status_bytes(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def metric_total(http: httpx.Client, name: str) -> float:
    """The sum of every sample of ``name`` on ``/metrics``."""
    lines = http.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the round robin (default 60)")
    parser.add_argument("--models", type=int, default=6, help="models (default 6)")
    parser.add_argument("--model-mb", type=int, default=200, help="MB of weights per model (default 200)")
    parser.add_argument("--budget-mb", type=int, default=700, help="memory budget in MB (default 700)")
    parser.add_argument("--workers", type=int, default=1, help="front ends; more than 1: model runners (default 1)")
    parser.add_argument(
        "--scope", choices=["models", "gateway"], default="models", help="--memory-budget-scope (default models)"
    )
    options = parser.parse_args()
    budget = options.budget_mb * MB
    names = [f"m{k}" for k in range(1, options.models + 1)]
    with tempfile.TemporaryDirectory(prefix="gateway-budget-bench-") as folder:
        repository = Path(folder) / "repository"
        started = time.perf_counter()
        for k, name in enumerate(names, start=1):
            write_weighty_model(repository / name / "1" / "model.onnx", float(k), options.model_mb * MB)
        print(f"wrote {len(names)} models of {options.model_mb} MB in {time.perf_counter() - started:.1f} s")
        http_port = free_port()
        log = Path(folder) / "gateway.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "gateway", "serve", "--model-repository", str(repository),
                    "--http-port", str(http_port), "--grpc-port", str(free_port()),
                    "--model-load-on-request", "--memory-budget-bytes", str(budget),
                    "--workers", str(options.workers), "--memory-budget-scope", options.scope,
                ],
                cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "GATEWAY_ADMIN_TOKEN": "benchmark"},
            )  # fmt: skip
            http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120)
            try:
                return run(process, http, names, budget, options.seconds, options.workers, options.scope)
            finally:
                http.close()
                process.terminate()
                process.wait(timeout=60)


def resident(pid: int, workers: int) -> int:
    """The gateway's memory: its process's ``VmRSS``, or with several workers the PSS of its process tree."""
    return status_bytes(pid, "VmRSS") if workers == 1 else memory(pid)[0]


def run(
    process: subprocess.Popen[bytes],
    http: httpx.Client,
    names: list[str],
    budget: int,
    seconds: float,
    workers: int,
    scope: str,
) -> int:
    """Wait for the gateway, then the round robin with memory sampling; print the figures; 0 when the target is met."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if http.get("/v2/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.1)
    baseline = resident(process.pid, workers)
    peak = [baseline]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], resident(process.pid, workers))
            time.sleep(0.01 if workers == 1 else 0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ok = failed = 0
    waited: list[float] = []  # client-side seconds of calls that loaded their model
    served: list[float] = []  # and of those that found it loaded
    end = time.monotonic() + seconds
    call = 0
    while time.monotonic() < end:
        k = call % len(names)
        loads_before = metric_total(http, "gateway_model_loads_on_request_total")
        started = time.perf_counter()
        response = http.post(
            f"/v2/models/{names[k]}/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [float(call)]}]},
        )
        elapsed = time.perf_counter() - started
        if response.status_code == 200 and response.json()["outputs"][0]["data"] == [float(call) * (k + 1)]:
            ok += 1
        else:
            failed += 1
            print(f"call {call} to {names[k]}: {response.status_code} {response.text[:300]}")
        loaded = metric_total(http, "gateway_model_loads_on_request_total") > loads_before
        (waited if loaded else served).append(elapsed)
        call += 1
    sampling.set()
    sampler.join()
    hwm = status_bytes(process.pid, "VmHWM") if workers == 1 else 0
    evictions = metric_total(http, "gateway_model_evictions_total")
    loads = metric_total(http, "gateway_model_loads_on_request_total")
    load_sum = metric_total(http, "gateway_model_load_duration_seconds_sum")
    load_count = metric_total(http, "gateway_model_load_duration_seconds_count")
    ceiling = budget * 1.15
    print(f"budget {budget / MB:.0f} MB ({scope}), ceiling (budget + 15%) {ceiling / MB:.0f} MB")
    if workers == 1:
        print(f"resident set: baseline {baseline / MB:.0f} MB before the first request")
        print(f"  peak (sampled every 10 ms) {peak[0] / MB:.0f} MB, VmHWM since the last load began {hwm / MB:.0f} MB")
    else:
        print(f"{workers} front ends and model runners, PSS of all the gateway's processes:")
        print(f"  baseline {baseline / MB:.0f} MB before the first request")
        print(f"  peak (sampled every 20 ms) {peak[0] / MB:.0f} MB")
    print(f"  peak above the baseline {(max(peak[0], hwm) - baseline) / MB:.0f} MB")
    print(f"requests: {ok} ok, {failed} failed, in {seconds:.0f} s")
    print(f"evictions {evictions:.0f}, loads on request {loads:.0f}, mean load {load_sum / max(load_count, 1):.3f} s")
    for label, times in (("waited for a load", waited), ("found it loaded", served)):
        if times:
            ms = np.asarray(times) * 1e3
            print(f"calls that {label}: {len(times)}, p50 {np.percentile(ms, 50):.1f} ms, max {ms.max():.1f} ms")
    met = failed == 0 and max(peak[0], hwm) <= ceiling
    print(f"target (resident set under budget + 15%, every request ok): {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
