"""A front end's versions, run by model runner processes: the :class:`~gateway.repository.version_loader.VersionHost`
that the server hands the repository when the gateway runs front ends and model runners.

Loading a version asks the supervisor for its runner (:class:`~gateway.process.messages.RunnerWanted`)
and waits for the answer; the supervisor starts one runner per version for all front ends
(:mod:`gateway.process.runner_pool`). The version's scheduler is then a
:class:`~gateway.runtime.runner_client.RunnerClient` connected to the runner's socket; closing it
(the version unloaded, replaced or evicted) tells the supervisor
(:class:`~gateway.process.messages.RunnerUnwanted`). An upload's trial load runs in a one-off runner
too, so that a front end never imports a framework. When the supervisor's memory budget evicts a
runner, :meth:`RunnerHost.client` tells which of this front end's versions it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from multiprocessing.connection import Connection
from pathlib import Path

from backends import ModelLoadError
from gateway.errors import UnavailableError
from gateway.metrics import VersionMetrics
from gateway.process.messages import (
    RunnerAnswer,
    RunnerFailed,
    RunnerLoaded,
    RunnerSpec,
    RunnerUnwanted,
    RunnerWanted,
    WorkerMessage,
)
from gateway.repository.config import ModelConfig, ModelConfigError
from gateway.repository.version_loader import Fingerprint, HostedVersion
from gateway.runtime.memory_budget import LargerThanBudgetError, NoRoomError
from gateway.runtime.runner_client import RunnerClient
from gateway.runtime.warmup import WarmupError

#: The load errors a runner reports, by class name (anything else is a ModelLoadError).
_LOAD_ERRORS: dict[str, type[Exception]] = {
    error.__name__: error
    for error in (ModelLoadError, ModelConfigError, WarmupError, LargerThanBudgetError, NoRoomError)
}


class RunnerHost:
    """Loads versions in model runner processes, through the supervisor.

    Args:
        connection: this front end's pipe to the supervisor (its answers come back through
            :meth:`on_answer`, called by the pipe's reader, :class:`gateway.process.peers.PeerWorkers`).
        loop: the front end's event loop (loads run in other threads; messages are sent from the loop).
    """

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._connection = connection
        self._loop = loop
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[RunnerAnswer]] = {}
        self._clients: dict[str, RunnerClient] = {}  # by socket path: the runners this front end uses

    def load(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        model_bytes: int,
        metrics: VersionMetrics,
        fingerprint: Fingerprint,
        room_deadline: float | None = None,
    ) -> HostedVersion:
        """Blocking: the version's runner (started, or shared with the front ends that give the same files and
        config), connected. The supervisor waits for room in its budget until ``room_deadline``
        (``time.perf_counter()`` seconds; None: its default wait).

        Raises:
            ModelLoadError, ModelConfigError, WarmupError: the runner's load failed (a ModelLoadError too when
                the supervisor or the runner cannot be reached).
            LargerThanBudgetError, NoRoomError: the supervisor's memory budget has no room for it.
        """
        key = _runner_key(name, version, path, config, fingerprint)
        spec = RunnerSpec(key, name, version, str(path), config, model_bytes)
        room_wait_seconds = None if room_deadline is None else max(0.0, room_deadline - time.perf_counter())
        try:
            outcome, answer = self._ask(spec, room_wait_seconds)
        except UnavailableError as error:
            raise ModelLoadError(error.message) from None
        if outcome.config is None:  # only a check answers without one
            raise ModelLoadError("the model runner answered without a config")
        socket_path = answer.socket_path
        client = RunnerClient(
            Path(socket_path), f"model '{name}' version {version}", lambda: self._unwanted(socket_path), metrics
        )
        try:
            asyncio.run_coroutine_threadsafe(self._connect(socket_path, client), self._loop).result()
        except UnavailableError as error:
            self._loop.call_soon_threadsafe(self._unwanted, socket_path)
            raise ModelLoadError(error.message) from None
        return HostedVersion(
            config=outcome.config,
            platform=outcome.platform,
            backend_parameters=outcome.backend_parameters,
            scheduler=client,
            resident_bytes=outcome.resident_bytes,
            peak_bytes=outcome.peak_bytes,
            gpu_bytes=outcome.gpu_bytes,
            joined=not answer.started,
        )

    def check(self, path: Path, config: ModelConfig) -> None:
        """Blocking: load one instance of the files in ``path`` in a one-off runner (an upload's trial load).

        Raises:
            ModelLoadError, ModelConfigError: they do not load, or the config does not fit them.
            UnavailableError: the supervisor cannot be reached.
        """
        config = config.model_copy(update={"instance_count": 1})
        key = _runner_key("", 0, path, config, ())  # a staging folder's path is its own
        self._ask(RunnerSpec(key, path.name, 0, str(path), config, 0, check_only=True), None)

    def client(self, socket_path: str) -> RunnerClient | None:
        """This front end's client of the runner on ``socket_path``, or None when it uses none there."""
        return self._clients.get(socket_path)

    def on_answer(self, answer: RunnerAnswer) -> None:
        """The supervisor's answer to a :class:`RunnerWanted` (on the event loop)."""
        waiting = self._waiting.pop(answer.request_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)

    def supervisor_gone(self) -> None:
        """The pipe to the supervisor closed: the loads waiting for an answer fail."""
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(UnavailableError("the supervisor of the model runners is gone"))
        self._waiting.clear()

    def _ask(self, spec: RunnerSpec, room_wait_seconds: float | None) -> tuple[RunnerLoaded, RunnerAnswer]:
        """Blocking: send :class:`RunnerWanted` and wait for the runner's outcome, and the supervisor's answer."""
        answer = asyncio.run_coroutine_threadsafe(self._want(spec, room_wait_seconds), self._loop).result()
        outcome = answer.outcome
        if isinstance(outcome, RunnerFailed):
            raise _LOAD_ERRORS.get(outcome.error, ModelLoadError)(outcome.message)
        return outcome, answer

    async def _want(self, spec: RunnerSpec, room_wait_seconds: float | None) -> RunnerAnswer:
        request_id = next(self._ids)
        answer: asyncio.Future[RunnerAnswer] = self._loop.create_future()
        self._waiting[request_id] = answer
        self._send(RunnerWanted(request_id, spec, room_wait_seconds))
        return await answer

    async def _connect(self, socket_path: str, client: RunnerClient) -> None:
        await client.connect()
        self._clients[socket_path] = client

    def _unwanted(self, socket_path: str) -> None:
        self._clients.pop(socket_path, None)
        with contextlib.suppress(UnavailableError):  # the supervisor is gone, and its runners with it
            self._send(RunnerUnwanted(socket_path))

    def _send(self, message: WorkerMessage) -> None:
        try:
            self._connection.send(message)
        except OSError as error:
            raise UnavailableError(f"the supervisor of the model runners cannot be reached: {error}") from None


def _runner_key(name: str, version: int, path: Path, config: ModelConfig, fingerprint: Fingerprint) -> str:
    """The runner key of a version: its model, version, folder, config, and the fingerprint of its files."""
    return hashlib.sha256(
        f"{name}\0{version}\0{path}\0{config.model_dump_json()}\0{fingerprint!r}".encode()
    ).hexdigest()
