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
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.repository_control import PeerAction

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


#: What a worker sends to the supervisor.
WorkerMessage = FollowRequest | Applied
#: What the supervisor sends to a worker.
SupervisorMessage = FollowDone | ApplyRequest
