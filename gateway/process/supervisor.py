"""Several worker processes (front ends) serving one model repository on the same REST and gRPC ports.

``gateway serve --workers N`` (or ``--model-runners``) runs :func:`run_supervisor`. The supervisor
starts N worker processes (forked from a fork server that imported their modules once,
:mod:`gateway.process.children`), restarts one that dies, and stops them all on SIGTERM or SIGINT.
Each worker runs the worker entry point the caller hands in
(:func:`gateway.process.children.worker_entry`, which runs :func:`gateway.process.server.run_worker`;
this process never imports the server): the REST and gRPC
servers, the core and the repository. With model runners (the default with several workers), its
versions run in runner processes that the supervisor starts, shares among the workers, restarts and
stops (:mod:`gateway.process.runner_pool`); without, each worker loads every model with its own
batchers and ``cores / N`` CPU cores for its instances. Its listening sockets are opened with
SO_REUSEPORT, so the kernel spreads new connections over the workers (a connection stays with one
worker: a client that sends everything down one HTTP/2 connection is served by one worker).

Metrics add up across workers and runners: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh folder before it starts them (see :mod:`gateway.metrics`) and, when one exits, marks it dead there.

A management request (upload, load, unload) reaches one worker. That worker does it, then asks the
supervisor to have every other worker follow (load or unload the same model from the shared
repository folder), and answers once they all have (:class:`gateway.process.peers.PeerWorkers` on
the worker's side). The messages are the dataclasses of :mod:`gateway.process.messages`, over one
pipe per worker. A worker started in place of one that died also loads the models loaded through
the management API so far (what explicit mode needs), shortly after it turns ready.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from pydantic import SecretStr

from gateway.admin_token import server_token
from gateway.metrics import MULTIPROCESS_DIR_VARIABLE
from gateway.process.children import children_context
from gateway.process.messages import (
    WORKER_START_FAILED,
    Applied,
    ApplyRequest,
    FollowDone,
    FollowKey,
    FollowRequest,
    RunnerUnwanted,
    RunnerWanted,
    SupervisorMessage,
)
from gateway.process.runner_pool import RunnerMain, RunnerPool
from gateway.settings import GatewaySettings

__all__ = ["WorkerMain", "run_supervisor"]

logger = logging.getLogger(__name__)

#: Seconds between restarts of a worker that keeps dying.
RESTART_DELAY_SECONDS = 1.0
#: Seconds the supervisor waits for the workers beyond their exit timeout before it kills them.
KILL_AFTER_EXTRA_SECONDS = 10.0

#: A worker process's entry point: it serves ``settings`` and talks to the supervisor over the
#: connection; it exits with :data:`~gateway.process.messages.WORKER_START_FAILED` when it cannot start.
#: It must be a module-level function (worker processes are spawned: it is pickled by name).
WorkerMain = Callable[[GatewaySettings, Connection], None]


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    connection: Connection


@dataclass
class _Pending:
    """A follow request: who asked, and the workers it still waits for."""

    origin: int
    request_id: int
    waiting_for: set[int]
    failures: list[str] = field(default_factory=list)


class _Supervisor:
    """Starts, restarts and stops the workers (and their model runners), and relays follow requests between them."""

    def __init__(self, settings: GatewaySettings, worker_main: WorkerMain, runner_main: RunnerMain | None) -> None:
        self.settings = settings
        self.worker_main = worker_main
        self.context = children_context()
        self.workers: dict[int, _Worker] = {}
        self.runners = RunnerPool(settings, runner_main, self.send) if runner_main is not None else None
        self.pending: dict[FollowKey, _Pending] = {}
        # Models loaded through the management API, in order, with their config overrides: a restarted
        # worker loads them too.
        self.requested_loads: dict[str, str | None] = {}
        self.stopping = False
        self.exit_status = 0
        self.stop_deadline = float("inf")

    def start_worker(self, index: int) -> None:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=self.worker_main, args=(self.settings, child_end), name=f"gateway-worker-{index}", daemon=False
        )
        process.start()
        child_end.close()
        self.workers[index] = _Worker(index, process, parent_end)
        logger.info("worker %d started (pid %s)", index, process.pid)
        for name, config in self.requested_loads.items():  # read once the worker runs; no one waits for the answers
            self.send(index, ApplyRequest(None, "load", name, config))

    def stop(self, exit_status: int = 0) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_status = exit_status
            self.stop_deadline = time.monotonic() + self.settings.exit_timeout_seconds + KILL_AFTER_EXTRA_SECONDS
        for worker in self.workers.values():
            if worker.process.pid is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)

    def on_signal(self, signal_number: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping the workers", signal.Signals(signal_number).name)
        self.stop()

    def run(self) -> None:
        for index in range(self.settings.workers):
            self.start_worker(index)
        runners = self.runners
        while self.workers or runners:
            if self.stopping and time.monotonic() > self.stop_deadline:
                for worker in self.workers.values():
                    logger.error(
                        "worker %d (pid %s) did not stop in time; killing it", worker.index, worker.process.pid
                    )
                    worker.process.kill()
                if runners is not None:
                    runners.kill()
                self.stop_deadline = float("inf")
            if runners is not None and not self.workers and not runners.closing:
                runners.close()  # the front ends are gone (stopped, or could not start): the runners go last
            by_object: dict[Any, _Worker | Callable[[], None]] = {}
            for worker in self.workers.values():
                by_object[worker.connection] = worker
                by_object[worker.process.sentinel] = worker
            timeout = 0.5
            if runners is not None:
                runners.tick()
                by_object.update(runners.waitables())
                timeout = runners.wait_seconds()
            for ready in wait(list(by_object), timeout=timeout):
                target = by_object[ready]
                if not isinstance(target, _Worker):
                    target()  # a runner's pipe or sentinel
                    continue
                worker = target
                if ready is worker.connection:
                    self.read_messages(worker)
                elif self.workers.get(worker.index) is worker:
                    self.on_exit(worker)

    def read_messages(self, worker: _Worker) -> None:
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if isinstance(message, FollowRequest):
                    self.relay(worker.index, message)
                elif isinstance(message, Applied):
                    self.applied(worker.index, message)
                elif isinstance(message, RunnerWanted) and self.runners is not None:
                    self.runners.want(worker.index, message)
                elif isinstance(message, RunnerUnwanted) and self.runners is not None:
                    self.runners.unwanted(worker.index, message.socket_path)
        except (EOFError, OSError):
            pass  # the worker is exiting; its sentinel tells the rest

    def relay(self, origin: int, request: FollowRequest) -> None:
        key = (origin, request.request_id)
        self.requested_loads.pop(request.model, None)
        if request.action == "load":
            self.requested_loads[request.model] = request.config_override
        others = {index for index in self.workers if index != origin}
        self.pending[key] = _Pending(origin, request.request_id, others)
        for index in others:
            self.send(index, ApplyRequest(key, request.action, request.model, request.config_override))
        self.settle(key)

    def applied(self, index: int, answer: Applied) -> None:
        pending = self.pending.get(answer.key)
        if pending is None:
            return
        pending.waiting_for.discard(index)
        if answer.failure:
            pending.failures.append(answer.failure)
        self.settle(answer.key)

    def settle(self, key: FollowKey) -> None:
        """Answer a follow request once no worker is left to hear from."""
        pending = self.pending[key]
        if pending.waiting_for:
            return
        del self.pending[key]
        if pending.origin in self.workers:
            self.send(pending.origin, FollowDone(pending.request_id, tuple(pending.failures)))

    def send(self, index: int, message: SupervisorMessage) -> None:
        with contextlib.suppress(OSError):  # the worker is exiting; its sentinel tells the rest
            self.workers[index].connection.send(message)

    def on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        status = worker.process.exitcode
        del self.workers[worker.index]
        worker.connection.close()
        if self.runners is not None:
            self.runners.worker_exited(worker.index)
        if worker.process.pid is not None:
            mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]
        for key, pending in list(self.pending.items()):
            if key[0] == worker.index:
                del self.pending[key]
            elif worker.index in pending.waiting_for:
                pending.waiting_for.discard(worker.index)
                pending.failures.append(f"worker {worker.process.pid} exited")
                self.settle(key)
        if self.stopping:
            logger.info("worker %d (pid %s) exited with status %s", worker.index, worker.process.pid, status)
        elif status == WORKER_START_FAILED:
            logger.error("worker %d could not start; stopping", worker.index)
            self.stop(exit_status=1)
        else:
            logger.error(
                "worker %d (pid %s) died with status %s; restarting it", worker.index, worker.process.pid, status
            )
            time.sleep(RESTART_DELAY_SECONDS)
            self.start_worker(worker.index)


def run_supervisor(settings: GatewaySettings, worker_main: WorkerMain, runner_main: RunnerMain | None = None) -> int:
    """Serve with ``settings.workers`` worker processes until SIGTERM or SIGINT; return the exit status.

    The admin token (given, or generated once and written to the token file) is handed to every
    worker, and the metrics folder is made before and removed after them.

    Args:
        settings: the server settings, given to every worker.
        worker_main: each worker process's entry point (:func:`gateway.process.children.worker_entry`).
        runner_main: with model runners, each runner process's entry point
            (:func:`gateway.process.children.runner_entry`); the workers are then front ends whose versions
            run in runners (:mod:`gateway.process.runner_pool`), stopped after the workers.

    Returns:
        0 after a requested stop, 1 when a worker could not start.
    """
    given = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    with server_token(given, settings.admin_token_dir, settings.http_port) as token:
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROCESS_DIR_VARIABLE] = metrics_dir
        logger.info("starting %d workers; worker metrics in %s", settings.workers, metrics_dir)
        supervisor = _Supervisor(
            settings.model_copy(update={"admin_token": SecretStr(token)}), worker_main, runner_main
        )
        previous = {
            signal_number: signal.signal(signal_number, supervisor.on_signal)
            for signal_number in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            supervisor.run()
        finally:
            for signal_number, handler in previous.items():
                signal.signal(signal_number, handler)
            supervisor.stop()
            if supervisor.runners is not None:
                supervisor.runners.close()
                supervisor.runners.remove_sockets()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            del os.environ[MULTIPROCESS_DIR_VARIABLE]
    logger.info("all workers stopped")
    return supervisor.exit_status
