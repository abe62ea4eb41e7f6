"""The messages between the worker supervisor and its worker processes (``gateway serve --workers N``).

Each worker has one pipe to the supervisor (:class:`multiprocessing.connection.Connection`); the
messages are these dataclasses, pickled by the connection. A management request (load, unload,
upload) reaching one worker becomes:

1. worker -> supervisor: :class:`FollowRequest` (have every other worker do the same);
2. supervisor -> each other worker: :class:`ApplyRequest`;
3. each other worker -> supervisor: :class:`Applied` (with its failure, if any);
4. supervisor -> the first worker: :class:`FollowDone` once every other worker answered or exited.

A worker started in place of one that died gets an :class:`ApplyRequest` without a ``key`` for each
model loaded through the management API so far; nobody waits for those.

With model runners (:mod:`gateway.process.runner_pool`), a worker (a front end) that loads a version
sends :class:`RunnerWanted`; the supervisor starts the version's runner unless one already runs for
the same files and config, and answers :class:`RunnerAnswer` once the runner is loaded (or failed);
the worker sends :class:`RunnerUnwanted` when it no longer serves that version. A runner tells the
supervisor :class:`RunnerLoaded` or :class:`RunnerFailed` over its own pipe. With a memory budget the
supervisor evicts an idle runner to make room for a load: it sends :class:`RunnerEvicted` to the runner
(which counts the eviction) and to each worker that uses it (each takes the version out of service,
drains it, and sends :class:`RunnerUnwanted`; the runner stops once none uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.core.repository_control import PeerAction
from gateway.repository.config import ModelConfig

#: Exit status of a worker that could not start (e.g. a port it cannot bind): the supervisor stops.
WORKER_START_FAILED = 3

#: Which follow request an apply belongs to: (index of the worker that asked, its request id).
FollowKey = tuple[int, int]


@dataclass(frozen=True, slots=True)
class FollowRequest:
    """Worker -> supervisor: have every other worker apply ``action`` to ``model``; answer ``request_id``."""

    request_id: int
    action: PeerAction
    model: str
    config_override: str | None = None


@dataclass(frozen=True, slots=True)
class FollowDone:
    """Supervisor -> worker: every other worker applied follow request ``request_id``, or failed as ``failures`` say."""

    request_id: int
    failures: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """Supervisor -> worker: apply ``action`` to ``model`` as another worker did (a load with its config override).

    ``key`` names the follow request waiting for the answer; None for a replay to a restarted
    worker, which nobody waits for.
    """

    key: FollowKey | None
    action: PeerAction
    model: str
    config_override: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """Worker -> supervisor: the :class:`ApplyRequest` ``key`` is done; ``failure`` says why it failed, if it did."""

    key: FollowKey
    failure: str | None


#: Exit status of a model runner whose version failed to load (it said why in :class:`RunnerFailed`).
RUNNER_LOAD_FAILED = 4


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """What a model runner loads: one version of a model, from its folder, with its config as read.

    Attributes:
        key: names the load: the same model, version, files and config give the same key, and share a runner.
        model, version: the model and version.
        path: the version folder.
        config: the model's config as read (completed by the runner from the artifact).
        model_bytes: bytes of the version's files.
        check_only: load one instance to check the files (an upload's trial load), answer, and exit.
    """

    key: str
    model: str
    version: int
    path: str
    config: ModelConfig
    model_bytes: int
    check_only: bool = False


@dataclass(frozen=True, slots=True)
class RunnerLoaded:
    """Runner -> supervisor -> worker: the version is loaded, warmed up, and its runner listens.

    Attributes:
        platform, backend_parameters: the backend's platform and how it runs the version.
        config: the completed config (None after a check only).
        resident_bytes, peak_bytes: the bytes the version holds, and held at its load's peak.
        gpu_bytes: the bytes the runner holds on each CUDA device (device number -> bytes), measured at its load.
    """

    platform: str = ""
    config: ModelConfig | None = None
    backend_parameters: dict[str, Any] = field(default_factory=dict)
    resident_bytes: int = 0
    peak_bytes: int = 0
    gpu_bytes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunnerFailed:
    """Runner -> supervisor -> worker: the load failed; ``error`` is the exception's class name."""

    error: str
    message: str


@dataclass(frozen=True, slots=True)
class RunnerWanted:
    """Worker -> supervisor: this worker serves the version of ``spec``; answer ``request_id`` once its runner is up.

    ``room_wait_seconds``: how long, from its arrival, a load this starts may wait for room within the
    memory budget (the time left until the deadline of the request that asked for it); None for
    :data:`~gateway.runtime.memory_budget.DEFAULT_ROOM_WAIT_SECONDS`.
    """

    request_id: int
    spec: RunnerSpec
    room_wait_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RunnerUnwanted:
    """Worker -> supervisor: this worker no longer serves the version of the runner listening on ``socket_path``
    (once per :class:`RunnerAnswer` that gave it; the socket path names one runner, an evicted one
    apart from its successor for the same key)."""

    socket_path: str


@dataclass(frozen=True, slots=True)
class RunnerAnswer:
    """Supervisor -> worker: the runner asked for by :class:`RunnerWanted` ``request_id`` listens on
    ``socket_path``, or its load failed.

    ``started`` is true for the one want whose answer ends the runner's first load (the first of the
    wants that waited for it); false for the wants that joined a runner another want had started, and
    after a restart. A front end counts a load only when it is true, so a load is counted once
    however many front ends use the runner.
    """

    request_id: int
    socket_path: str
    outcome: RunnerLoaded | RunnerFailed
    started: bool = False


@dataclass(frozen=True, slots=True)
class RunnerEvicted:
    """Supervisor -> worker and runner: a runner is evicted to make room within the memory budget.

    Attributes:
        socket_path: the runner's socket (what names it in :class:`RunnerAnswer`).
        resident_bytes: the bytes the runner held.
        idle_seconds: seconds since its last request began.
    """

    socket_path: str
    resident_bytes: int
    idle_seconds: float


#: What a worker sends to the supervisor.
WorkerMessage = FollowRequest | Applied | RunnerWanted | RunnerUnwanted
#: What the supervisor sends to a worker.
SupervisorMessage = FollowDone | ApplyRequest | RunnerAnswer | RunnerEvicted
#: What a model runner sends to the supervisor.
RunnerMessage = RunnerLoaded | RunnerFailed
