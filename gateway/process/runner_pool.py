"""The supervisor's model runners: one process per loaded version, shared by every front end.

A front end (worker) that loads a version asks for its runner (:class:`~gateway.process.messages.RunnerWanted`).
:class:`RunnerPool` starts one runner process per key (the same model, version, files and config)
and answers every front end that asked once the runner has loaded the version and listens on its
socket; a second front end asking for the same key gets the running one. A runner is stopped (SIGTERM)
when no front end uses it any more. A runner that dies while front ends use it is restarted on the
same socket path (after :data:`RESTART_DELAY_SECONDS`, doubling up to :data:`MAX_RESTART_DELAY_SECONDS`
while its loads keep failing); the front ends fail its in-flight requests at once and connect again
when it is back (:class:`~gateway.runtime.runner_client.RunnerClient`).

The pool is driven by the supervisor's loop (:mod:`gateway.process.supervisor`): :meth:`RunnerPool.waitables`
lists the pipes and process sentinels to wait on, and :meth:`RunnerPool.tick` starts restarts that are due.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from gateway.process.children import children_context
from gateway.process.messages import (
    RunnerAnswer,
    RunnerFailed,
    RunnerLoaded,
    RunnerSpec,
    RunnerWanted,
    SupervisorMessage,
)
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: Seconds before a runner that died is started again; doubled after each failed restart.
RESTART_DELAY_SECONDS = 0.5
#: Longest wait between two restarts of a runner whose load keeps failing.
MAX_RESTART_DELAY_SECONDS = 30.0

#: A model runner process's entry point (:func:`gateway.process.runner.run_runner`): it loads the spec's
#: version, listens on the socket path, and tells the supervisor over the connection. Module-level (spawned).
RunnerMain = Callable[[GatewaySettings, RunnerSpec, str, Connection], None]
#: Sends a message to the worker of the given index.
SendToWorker = Callable[[int, SupervisorMessage], None]


@dataclass(eq=False)
class _Runner:
    spec: RunnerSpec
    socket_path: str
    process: BaseProcess | None = None
    connection: Connection | None = None
    loaded: RunnerLoaded | None = None
    # Per worker index, how many of its loaded versions use this runner.
    users: Counter[int] = field(default_factory=Counter)
    # (worker index, request id) of the RunnerWanted waiting for the load.
    waiting: list[tuple[int, int]] = field(default_factory=list)
    restart_at: float | None = None
    failed_restarts: int = 0

    @property
    def label(self) -> str:
        return f"model {self.spec.model} version {self.spec.version}"


class RunnerPool:
    """The model runner processes of one machine, started and stopped as the front ends need them.

    Args:
        settings: the server settings, handed to every runner.
        runner_main: each runner process's entry point.
        send: how to answer a worker.
    """

    def __init__(self, settings: GatewaySettings, runner_main: RunnerMain, send: SendToWorker) -> None:
        self.settings = settings
        self.runner_main = runner_main
        self.send = send
        self.context = children_context()
        self.socket_dir = Path(tempfile.mkdtemp(prefix="gateway-runners-"))
        self.runners: dict[str, _Runner] = {}  # by key: the runner the front ends get
        self.stopping: list[_Runner] = []  # no longer wanted, not yet exited
        self._sockets = 0
        self.closing = False

    def __bool__(self) -> bool:
        """Whether any runner process is still alive (the supervisor waits for them before it exits)."""
        return any(r.process is not None for r in [*self.runners.values(), *self.stopping])

    def want(self, worker: int, message: RunnerWanted) -> None:
        """A worker serves a version: answer with its runner, starting it first unless one runs for the key."""
        spec = message.spec
        if self.closing:
            stopping = RunnerFailed("ModelLoadError", "the gateway is stopping")
            self.send(worker, RunnerAnswer(message.request_id, "", stopping))
            return
        runner = self.runners.get(spec.key)
        if runner is None:
            self._sockets += 1
            runner = _Runner(spec, str(self.socket_dir / f"runner-{self._sockets}.sock"))
            if not spec.check_only:
                self.runners[spec.key] = runner
            else:
                self.stopping.append(runner)  # a check answers once and exits by itself
            self._start(runner)
        if runner.loaded is not None and runner.process is not None:
            runner.users[worker] += 1
            self.send(worker, RunnerAnswer(message.request_id, runner.socket_path, runner.loaded))
        else:
            runner.waiting.append((worker, message.request_id))

    def unwanted(self, worker: int, key: str) -> None:
        """A worker no longer serves the version of ``key``; the runner stops when no worker does."""
        runner = self.runners.get(key)
        if runner is None:
            return
        runner.users[worker] -= 1
        if runner.users[worker] <= 0:
            del runner.users[worker]
        self._stop_if_unused(runner)

    def worker_exited(self, worker: int) -> None:
        """A worker is gone: it uses no runner any more (a restarted worker asks again as it loads)."""
        for runner in list(self.runners.values()):
            runner.users.pop(worker, None)
            runner.waiting = [(index, request) for index, request in runner.waiting if index != worker]
            self._stop_if_unused(runner)

    def waitables(self) -> dict[object, Callable[[], None]]:
        """The runners' pipes and process sentinels to wait on, each with what to do when it is ready."""
        ready: dict[object, Callable[[], None]] = {}
        for runner in [*self.runners.values(), *self.stopping]:
            if runner.connection is not None:
                ready[runner.connection] = lambda runner=runner: self._read(runner)  # type: ignore[misc]
            if runner.process is not None:
                ready[runner.process.sentinel] = lambda runner=runner: self._exited(runner)  # type: ignore[misc]
        return ready

    def tick(self) -> None:
        """Start the restarts that are due."""
        now = time.monotonic()
        for runner in self.runners.values():
            if runner.restart_at is not None and runner.restart_at <= now and not self.closing:
                runner.restart_at = None
                self._start(runner)

    def close(self) -> None:
        """Stop every runner (SIGTERM): the front ends are gone."""
        self.closing = True
        for runner in list(self.runners.values()):
            self._terminate(runner)
        self.runners.clear()

    def kill(self) -> None:
        """Kill the runners that did not stop in time."""
        for runner in [*self.runners.values(), *self.stopping]:
            if runner.process is not None and runner.process.is_alive():
                logger.error(
                    "model runner of %s (pid %s) did not stop in time; killing it", runner.label, runner.process.pid
                )
                runner.process.kill()

    def remove_sockets(self) -> None:
        """Remove the folder of the runners' sockets (once they have all exited)."""
        with contextlib.suppress(OSError):
            for entry in self.socket_dir.iterdir():
                entry.unlink()
            self.socket_dir.rmdir()

    def _start(self, runner: _Runner) -> None:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=self.runner_main,
            args=(self.settings, runner.spec, runner.socket_path, child_end),
            name=f"gateway-runner-{runner.spec.model}-{runner.spec.version}",
            daemon=False,
        )
        process.start()
        child_end.close()
        runner.process, runner.connection, runner.loaded = process, parent_end, None
        logger.info("model runner of %s started (pid %s)", runner.label, process.pid)

    def _read(self, runner: _Runner) -> None:
        assert runner.connection is not None
        try:
            while runner.connection.poll():
                outcome = runner.connection.recv()
                if isinstance(outcome, RunnerLoaded):
                    self._loaded(runner, outcome)
                elif isinstance(outcome, RunnerFailed):
                    self._failed(runner, outcome)
        except (EOFError, OSError):  # the runner is exiting; its sentinel tells the rest
            runner.connection.close()
            runner.connection = None

    def _loaded(self, runner: _Runner, loaded: RunnerLoaded) -> None:
        runner.loaded = loaded
        runner.failed_restarts = 0
        if runner.users:
            logger.info("model runner of %s is back", runner.label)
        for worker, request_id in runner.waiting:
            runner.users[worker] += 1
            self.send(worker, RunnerAnswer(request_id, runner.socket_path, loaded))
        runner.waiting.clear()
        if runner.spec.check_only:
            runner.users.clear()

    def _failed(self, runner: _Runner, failure: RunnerFailed) -> None:
        for worker, request_id in runner.waiting:
            self.send(worker, RunnerAnswer(request_id, runner.socket_path, failure))
        runner.waiting.clear()
        if runner.users:
            logger.error("model runner of %s could not load the version again: %s", runner.label, failure.message)
        elif self.runners.get(runner.spec.key) is runner:
            del self.runners[runner.spec.key]  # a first load that failed: nobody uses it
            self.stopping.append(runner)

    def _exited(self, runner: _Runner) -> None:
        process = runner.process
        assert process is not None
        process.join()
        if process.pid is not None:
            mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        if runner.connection is not None:
            self._read(runner)  # what it said before it exited
            if runner.connection is not None:
                runner.connection.close()
                runner.connection = None
        runner.process = None
        if runner in self.stopping:
            self.stopping.remove(runner)
            return
        if runner.waiting:  # died during its first load without a word
            exited = RunnerFailed("ModelLoadError", f"its model runner exited with status {process.exitcode}")
            self._failed(runner, exited)
        if self.runners.get(runner.spec.key) is not runner:
            return
        if not runner.users or self.closing:
            del self.runners[runner.spec.key]
            return
        delay = min(RESTART_DELAY_SECONDS * 2**runner.failed_restarts, MAX_RESTART_DELAY_SECONDS)
        if runner.loaded is None:
            runner.failed_restarts += 1
        logger.error(
            "model runner of %s (pid %s) exited with status %s; restarting it in %.1f s",
            runner.label,
            process.pid,
            process.exitcode,
            delay,
        )
        runner.loaded = None
        runner.restart_at = time.monotonic() + delay

    def _stop_if_unused(self, runner: _Runner) -> None:
        if runner.users or runner.waiting:
            return
        if self.runners.get(runner.spec.key) is runner:
            del self.runners[runner.spec.key]
        self._terminate(runner)

    def _terminate(self, runner: _Runner) -> None:
        runner.restart_at = None
        if runner.process is None:
            return
        if runner not in self.stopping:
            self.stopping.append(runner)
        if runner.process.pid is not None and runner.process.is_alive():
            logger.info("stopping the model runner of %s (pid %s)", runner.label, runner.process.pid)
            os.kill(runner.process.pid, signal.SIGTERM)
