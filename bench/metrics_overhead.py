"""What the metric updates of one inference request cost the hot path, in microseconds.

Times ``--iterations`` rounds of exactly the metric work the server does for a successful request
(in :meth:`gateway.core.dataplane.DataPlane.infer` and :meth:`gateway.runtime.scheduler.Scheduler._finish`):
in-flight gauge inc and dec, :meth:`gateway.metrics.VersionMetrics.observe_request`, and
:meth:`gateway.metrics.VersionMetrics.observe_batch` (the queue, compute and batch size observations,
and Triton's statistics of both); then the same with the five ``time.perf_counter()`` reads those
measurements need. An empty loop of the same length is subtracted. Each figure is the median of
``--runs`` runs.

    .venv/bin/python bench/metrics_overhead.py [--iterations 200000] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from gateway.metrics import SUCCESS, Metrics, VersionMetrics

PROTOCOL = "v2-rest"


def empty_loop(iterations: int, _: VersionMetrics) -> int:
    started = time.perf_counter_ns()
    for _ in range(iterations):
        pass
    return time.perf_counter_ns() - started


def metric_updates(iterations: int, metrics: VersionMetrics) -> int:
    """The updates alone, with fixed durations."""
    inflight = metrics.inflight
    started = time.perf_counter_ns()
    for _ in range(iterations):
        inflight.inc()
        metrics.observe_batch([0.00001], [1], [True], 0.0, 0.0004, 0.0)
        inflight.dec()
        metrics.observe_request(PROTOCOL, SUCCESS, 0.0008)
    return time.perf_counter_ns() - started


def metric_updates_with_clock(iterations: int, metrics: VersionMetrics) -> int:
    """The updates and the clock reads that feed them, as the server does them."""
    perf_counter = time.perf_counter
    started = time.perf_counter_ns()
    for _ in range(iterations):
        request_started = perf_counter()
        metrics.inflight.inc()
        queued = perf_counter()
        run_started = perf_counter()
        metrics.observe_batch([run_started - queued], [1], [True], 0.0, perf_counter() - run_started, 0.0)
        metrics.inflight.dec()
        metrics.observe_request(PROTOCOL, SUCCESS, perf_counter() - request_started)
    return time.perf_counter_ns() - started


def median_ns(loop: Callable[[int, VersionMetrics], int], iterations: int, runs: int, metrics: VersionMetrics) -> float:
    loop(min(iterations, 10_000), metrics)  # warm up (and create the per-protocol children)
    return statistics.median(loop(iterations, metrics) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="requests per run (default 200000)")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure; the median is shown (default 7)")
    args = parser.parse_args()

    metrics = Metrics().for_version("bench", 1)
    empty = median_ns(empty_loop, args.iterations, args.runs, metrics)
    print(f"{args.iterations} requests per run, median of {args.runs} runs, empty loop subtracted")
    for label, loop in (
        ("metric updates", metric_updates),
        ("metric updates + clock reads", metric_updates_with_clock),
    ):
        per_request_us = (median_ns(loop, args.iterations, args.runs, metrics) - empty) / args.iterations / 1e3
        print(f"{label:30s} {per_request_us:6.2f} us/request")


if __name__ == "__main__":
    main()
