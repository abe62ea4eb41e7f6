"""Prometheus metrics of the gateway (prometheus-client), served at ``/metrics`` on the HTTP port.

Every metric has its unit in its name (seconds for time) and is labelled by ``model`` and
``version``; request metrics also by ``protocol`` (``v2-rest``, ``v2-grpc``, ``tfserving-rest``,
``torchserve-rest``) and the request counter by ``status`` (``success`` or the error class, e.g.
``InvalidArgument``). Requests that fail before a version is chosen are counted with ``version=""``,
and those for a model the repository does not know also with ``model=""``, so that arbitrary names
cannot grow the number of series.

The hot path never calls ``labels()``: each loaded version gets a :class:`VersionMetrics` whose
children are looked up once, so a request costs a handful of ``observe``/``inc`` calls (measured
by ``bench/metrics_overhead.py``).

With several worker processes (``gateway serve --workers N``) the metrics use prometheus-client's
multiprocess mode: each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
the supervisor before it starts the workers) and ``/metrics``, whichever worker answers it, adds up
every worker's counters and histograms. ``gateway_inference_inflight_requests`` is the sum over the
live workers and ``gateway_model_ready`` their minimum (1 only when every live worker serves the
version). The process metrics (``process_*``) are left out in that mode: they describe one process.

Shadow copies (:mod:`gateway.core.shadow`) are counted by the candidate's ``model`` and ``version``
and their ``outcome`` (``agree``, ``disagree``, ``error``, ``skipped``); their agreement rate is
``agree / (agree + disagree)``.

Beside them, each loaded version keeps Triton's statistics (:class:`InferenceStatistics`: counts
and total nanoseconds of successful and failed requests, queue, compute input / infer / output,
per batch size), counted by the same calls that feed its metrics, and served by the statistics
extension. They are the worker's own: with several workers, each answers with its own counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "LATENCY_BUCKETS",
    "SUCCESS",
    "BatchStatistics",
    "Duration",
    "InferenceStatistics",
    "Metrics",
    "VersionMetrics",
    "error_status",
]

#: Seconds: 50 us to 30 s, fine enough for sub-millisecond models and wide enough for slow ones.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Batch sizes (items), powers of two up to 1024.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Seconds a model load may take: 10 ms to 10 min.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

SUCCESS = "success"

#: The environment variable that turns on prometheus-client's multiprocess mode (a folder).
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The gateway's metrics in their own registry (no global state; one per server process).

    ``registry`` is what ``/metrics`` exposes: in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
    set) it collects every worker's values from that folder, and the metrics themselves are
    registered in a private registry.

    Args:
        registry: where to register them (default: a new registry, with the process collector).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        own_registry = registry if registry is not None else CollectorRegistry()
        self.registry = own_registry
        if registry is None:
            multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
            if multiprocess_dir:
                self.registry = CollectorRegistry()
                MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            else:
                ProcessCollector(registry=own_registry)
        self.requests = Counter(
            "gateway_inference_requests",
            "Inference requests answered, by outcome (success or the error class).",
            ["model", "version", "protocol", "status"],
            registry=own_registry,
        )
        self.request_duration = Histogram(
            "gateway_inference_request_duration_seconds",
            "Server-side time of an inference request, from request decoded to response encoded.",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=own_registry,
        )
        self.queue_duration = Histogram(
            "gateway_inference_queue_duration_seconds",
            "Time a request waited for a free model instance.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=own_registry,
        )
        self.compute_duration = Histogram(
            "gateway_inference_compute_duration_seconds",
            "Time the backend spent running a batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=own_registry,
        )
        self.batch_size = Histogram(
            "gateway_inference_batch_size",
            "Batch size (first dimension) of each backend run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=own_registry,
        )
        self.inflight = Gauge(
            "gateway_inference_inflight_requests",
            "Inference requests being answered now.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=own_registry,
        )
        self.model_ready = Gauge(
            "gateway_model_ready",
            "1 when the model version is loaded and ready for inference, else 0.",
            ["model", "version", "backend"],
            multiprocess_mode="livemin",
            registry=own_registry,
        )
        self.load_duration = Histogram(
            "gateway_model_load_duration_seconds",
            "Time to load a model version (all its instances), its warmup included.",
            ["model", "version"],
            buckets=LOAD_BUCKETS,
            registry=own_registry,
        )
        self.warmup_duration = Histogram(
            "gateway_model_warmup_duration_seconds",
            "Time a model version spent running its warmup requests on all its instances before it was ready.",
            ["model", "version"],
            buckets=LOAD_BUCKETS,
            registry=own_registry,
        )
        self.resident_bytes = Gauge(
            "gateway_model_resident_bytes",
            "Bytes a loaded model version holds in the process, measured at its load (resident set growth over "
            "the load, warmup included; at least its files' bytes; with model runners, what its runner process "
            "holds of its own); 0 once released.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=own_registry,
        )
        self.gpu_bytes = Gauge(
            "gateway_model_gpu_bytes",
            "Bytes a loaded model version holds on a CUDA device (the device label: its CUDA number), measured at "
            "its load (the device memory its process holds more, per NVML, warmup included); 0 once released.",
            ["model", "version", "device"],
            multiprocess_mode="livesum",
            registry=own_registry,
        )
        self.evictions = Counter(
            "gateway_model_evictions",
            "Idle model versions unloaded to make room for a load within the memory budget.",
            ["model", "version"],
            registry=own_registry,
        )
        self.loads_on_request = Counter(
            "gateway_model_loads_on_request",
            "Model versions loaded because a request asked for them: a first request with model-load-on-request, "
            "or a request for an evicted version.",
            ["model", "version"],
            registry=own_registry,
        )

        self.shadow_requests = Counter(
            "gateway_shadow_requests",
            "Shadow copies of requests sent to a candidate version (the version label), by outcome: agree or "
            "disagree with the primary's answer, error, or skipped (too many copies running).",
            ["model", "version", "outcome"],
            registry=own_registry,
        )
        self.shadow_duration = Histogram(
            "gateway_shadow_duration_seconds",
            "Time the candidate version took to answer a shadow copy, from queued to answered.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=own_registry,
        )
        self.repository_stale = Gauge(
            "gateway_repository_stale",
            "1 while the shared model repository (s3://, file://...) cannot be polled: this replica serves what "
            "it has; else 0.",
            multiprocess_mode="max",
            registry=own_registry,
        )
        self.repository_last_sync = Gauge(
            "gateway_repository_last_sync_timestamp_seconds",
            "Unix time of this replica's last successful poll of the shared model repository.",
            multiprocess_mode="max",
            registry=own_registry,
        )
        self.repository_downloaded_bytes = Counter(
            "gateway_repository_downloaded_bytes",
            "Bytes of model files this replica downloaded from the shared model repository into its cache.",
            registry=own_registry,
        )

    def for_version(self, model: str, version: int) -> VersionMetrics:
        """The children of one loaded version, looked up once (its eviction and load counters shown from 0)."""
        labels = (model, str(version))
        self.evictions.labels(*labels)
        self.loads_on_request.labels(*labels)
        return VersionMetrics(
            metrics=self,
            labels=labels,
            queue_duration=self.queue_duration.labels(*labels),
            compute_duration=self.compute_duration.labels(*labels),
            batch_size=self.batch_size.labels(*labels),
            inflight=self.inflight.labels(*labels),
        )

    def count_request(self, model: str, version: str, protocol: str, status: str) -> None:
        """Count a request that failed before a version was chosen (unknown model, not ready...)."""
        self.requests.labels(model, version, protocol, status).inc()


@dataclass(slots=True)
class Duration:
    """Triton's ``StatisticDuration``: how many events, and their total duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Add ``count`` events lasting ``seconds`` in all."""
        self.count += count
        self.ns += round(seconds * 1e9)


@dataclass(slots=True)
class BatchStatistics:
    """Triton's ``InferBatchStatistics`` of one batch size: the model runs of that size, by part."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class InferenceStatistics:
    """Triton's statistics extension (``ModelStatistics``) of one loaded version, since it loaded.

    Attributes:
        last_inference_ms: when the last request was answered, in milliseconds since the epoch (0: never).
        inference_count: items inferred successfully (each item of a batched request counts).
        execution_count: model runs with at least one successful request (a merged batch is one run).
        success, fail: requests answered and failed after reaching the version: count, total server-side ns.
        queue: time requests waited for an instance.
        compute_input, compute_infer, compute_output: per request, the merging, running and splitting
            time of the batch it ran in (each request of a batch counts the batch's time, as Triton).
        batches: by batch size (items in a run), the runs' compute times.
    """

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStatistics] = field(default_factory=dict)

    def add_run(self, items: int, input_seconds: float, infer_seconds: float, output_seconds: float) -> None:
        """Count one model run of ``items`` items in :attr:`batches`, with its compute seconds by part."""
        by_size = self.batches.get(items)
        if by_size is None:
            by_size = self.batches[items] = BatchStatistics()
        by_size.compute_input.add(input_seconds)
        by_size.compute_infer.add(infer_seconds)
        by_size.compute_output.add(output_seconds)


class RunShare(NamedTuple):
    """One request's part in the model run (batch) that answered it, for Triton's statistics elsewhere.

    A model runner sends it with each answer, as a JSON array (a tuple, so that it needs no conversion),
    so that the front end that received the request keeps the version's :class:`InferenceStatistics`
    (the runner's scheduler records the Prometheus metrics).

    Attributes:
        queue_seconds: how long the request waited in the queue.
        items: the request's items (first-dim rows).
        batch_items: items in the whole run.
        input_seconds, infer_seconds, output_seconds: the run's merging, backend and splitting seconds.
        first: whether the request was the run's first (the one that counts the run itself).
    """

    queue_seconds: float
    items: int
    batch_items: int
    input_seconds: float
    infer_seconds: float
    output_seconds: float
    first: bool


@dataclass
class VersionMetrics:
    """The metric children of one model version, plus per-protocol children created on first use.

    Also keeps the version's Triton statistics (:attr:`statistics`), updated by the same calls.
    """

    metrics: Metrics
    labels: tuple[str, str]
    queue_duration: Histogram
    compute_duration: Histogram
    batch_size: Histogram
    inflight: Gauge
    statistics: InferenceStatistics = field(default_factory=InferenceStatistics)
    _durations: dict[str, Histogram] = field(default_factory=dict)
    _counters: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def observe_batch(
        self,
        waits: Sequence[float],
        sizes: Sequence[int],
        succeeded: Sequence[bool],
        input_seconds: float,
        infer_seconds: float,
        output_seconds: float,
    ) -> None:
        """Record one model run (a batch of one or more requests).

        Args:
            waits: per request of the batch, the seconds it waited in the queue.
            sizes: per request, its items (first-dim rows; 1 without a batch dim).
            succeeded: per request, whether it got its outputs.
            input_seconds, infer_seconds, output_seconds: the run's merging, backend and splitting
                seconds (their sum is the compute time of the metrics).
        """
        self.compute_duration.observe(input_seconds + infer_seconds + output_seconds)
        items = sum(sizes)
        self.batch_size.observe(items)
        for wait in waits:
            self.queue_duration.observe(wait)
        statistics = self.statistics
        requests = len(sizes)
        statistics.queue.add(sum(waits), requests)
        statistics.compute_input.add(input_seconds * requests, requests)
        statistics.compute_infer.add(infer_seconds * requests, requests)
        statistics.compute_output.add(output_seconds * requests, requests)
        statistics.add_run(items, input_seconds, infer_seconds, output_seconds)
        inferred = sum(size for size, ok in zip(sizes, succeeded, strict=True) if ok)
        if inferred:
            statistics.inference_count += inferred
            statistics.execution_count += 1

    def observe_run_share(self, share: RunShare, succeeded: bool) -> None:
        """Record in the statistics (not in Prometheus) one request's part in a run that happened elsewhere."""
        statistics = self.statistics
        statistics.queue.add(share.queue_seconds)
        statistics.compute_input.add(share.input_seconds)
        statistics.compute_infer.add(share.infer_seconds)
        statistics.compute_output.add(share.output_seconds)
        if succeeded:
            statistics.inference_count += share.items
        if share.first:
            statistics.add_run(share.batch_items, share.input_seconds, share.infer_seconds, share.output_seconds)
            if succeeded:
                statistics.execution_count += 1

    def observe_request(self, protocol: str, status: str, seconds: float) -> None:
        """Count one answered request and record its server-side duration in seconds."""
        statistics = self.statistics
        (statistics.success if status == SUCCESS else statistics.fail).add(seconds)
        statistics.last_inference_ms = time.time_ns() // 1_000_000
        counter = self._counters.get((protocol, status))
        if counter is None:
            counter = self._counters[(protocol, status)] = self.metrics.requests.labels(*self.labels, protocol, status)
        counter.inc()
        duration = self._durations.get(protocol)
        if duration is None:
            duration = self._durations[protocol] = self.metrics.request_duration.labels(*self.labels, protocol)
        duration.observe(seconds)


def error_status(error: BaseException) -> str:
    """The ``status`` label of a failed request: the error class without ``Error`` (e.g. ``InvalidArgument``)."""
    name = type(error).__name__
    return name.removesuffix("Error") or name
