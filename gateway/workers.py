"""Several worker processes serving one model repository on the same REST and gRPC ports.

``gateway serve --workers N`` runs :func:`run_supervisor`. The supervisor starts N worker
processes (``spawn``: each a fresh interpreter), restarts one that dies, and stops them all on
SIGTERM or SIGINT. Each worker is a whole gateway (:func:`gateway.server.serve`): the REST and gRPC
servers, every model loaded, its own batchers, and ``cores / N`` CPU cores for its model
instances. Its listening sockets are opened with SO_REUSEPORT, so the kernel spreads new
connections over the workers (a connection stays with one worker: a client that sends everything
down one HTTP/2 connection is served by one worker).

Metrics add up across workers: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before it starts them (see :mod:`gateway.metrics`) and, when a worker exits, marks it dead there.

A management request (upload, load, unload) reaches one worker. That worker does it, then asks the
supervisor to have every other worker follow (load or unload the same model from the shared
repository folder), and answers once they all have: the :class:`PeerWorkers` protocol below. The
messages are small JSON objects over one pipe per worker. A worker started in place of one that died
also loads the models loaded through the management API so far (what explicit mode needs), shortly
after it turns ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Literal

from prometheus_client.multiprocess import mark_process_dead
from pydantic import SecretStr

from gateway.admin_token import server_token
from gateway.errors import GatewayError, NotFoundError, UnavailableError
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROCESS_DIR_VARIABLE
from gateway.repository import ModelRepository
from gateway.settings import GatewaySettings

__all__ = ["WORKER_START_FAILED", "PeerWorkers", "run_supervisor"]

logger = logging.getLogger(__name__)

#: Exit status of a worker that could not start (e.g. a port it cannot bind): the supervisor stops.
WORKER_START_FAILED = 3
#: Seconds between restarts of a worker that keeps dying.
RESTART_DELAY_SECONDS = 1.0
#: Seconds the supervisor waits for the workers beyond their exit timeout before it kills them.
KILL_AFTER_EXTRA_SECONDS = 10.0

PeerAction = Literal["load", "unload"]


class PeerWorkers:
    """A worker's link to the other workers, through the supervisor's pipe.

    :meth:`follow` asks every other worker to do what this one just did; messages from the
    supervisor asking this worker to follow another are applied to ``repository`` as they arrive.

    Args:
        connection: this worker's end of its pipe to the supervisor.
        repository: this worker's model repository.
    """

    def __init__(self, connection: Connection, repository: ModelRepository) -> None:
        self._connection = connection
        self._repository = repository
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start reading the supervisor's messages on the running event loop."""
        asyncio.get_running_loop().add_reader(self._connection.fileno(), self._on_readable)

    async def follow(self, action: PeerAction, name: str) -> None:
        """Have every other worker load (or unload) model ``name`` too; return once all have.

        Raises:
            UnavailableError: some worker failed (the message has each one's reason), or the
                supervisor is gone.
        """
        request_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._send({"kind": "follow", "id": request_id, "action": action, "model": name})
            failures = await answer
        finally:
            self._waiting.pop(request_id, None)
        if failures:
            raise UnavailableError(f"model '{name}': {action} failed in other workers: " + "; ".join(failures))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._connection.send_bytes(json.dumps(message).encode())
        except OSError as error:
            raise UnavailableError(f"the worker supervisor cannot be reached: {error}") from None

    def _on_readable(self) -> None:
        try:
            while self._connection.poll():
                message = json.loads(self._connection.recv_bytes())
                if message["kind"] == "done":
                    answer = self._waiting.get(message["id"])
                    if answer is not None and not answer.done():
                        answer.set_result(message["failures"])
                else:  # "apply": follow another worker
                    task = asyncio.create_task(self._apply(message["key"], message["action"], message["model"]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (EOFError, OSError):  # the supervisor is gone: nothing more will come
            asyncio.get_running_loop().remove_reader(self._connection.fileno())
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(UnavailableError("the worker supervisor is gone"))

    async def _apply(self, key: list[int], action: PeerAction, name: str) -> None:
        failure = None
        try:
            if action == "load":
                await self._repository.load(name)
            else:
                await self._repository.unload(name)
        except NotFoundError:
            if action == "load":
                failure = f"worker {os.getpid()}: model '{name}' not found"
        except GatewayError as error:
            failure = f"worker {os.getpid()}: {error.message}"
        logger.info("followed another worker: %s model %s%s", action, name, f" ({failure})" if failure else "")
        self._send({"kind": "applied", "key": key, "failure": failure})


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
    """Starts, restarts and stops the workers, and relays follow requests between them."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.pending: dict[tuple[int, int], _Pending] = {}
        # Models loaded through the management API, in order: a restarted worker loads them too.
        self.requested_loads: dict[str, None] = {}
        self.stopping = False
        self.exit_status = 0
        self.stop_deadline = float("inf")

    def start_worker(self, index: int) -> None:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(self.settings, child_end), name=f"gateway-worker-{index}", daemon=False
        )
        process.start()
        child_end.close()
        self.workers[index] = _Worker(index, process, parent_end)
        logger.info("worker %d started (pid %s)", index, process.pid)
        for name in self.requested_loads:  # read once the worker runs; no one waits for the answers
            self.send(index, {"kind": "apply", "key": [-1, 0], "action": "load", "model": name})

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
        while self.workers:
            if self.stopping and time.monotonic() > self.stop_deadline:
                for worker in self.workers.values():
                    logger.error(
                        "worker %d (pid %s) did not stop in time; killing it", worker.index, worker.process.pid
                    )
                    worker.process.kill()
                self.stop_deadline = float("inf")
            by_object: dict[Any, _Worker] = {}
            for worker in self.workers.values():
                by_object[worker.connection] = worker
                by_object[worker.process.sentinel] = worker
            for ready in wait(list(by_object), timeout=0.5):
                worker = by_object[ready]
                if ready is worker.connection:
                    self.read_messages(worker)
                elif self.workers.get(worker.index) is worker:
                    self.on_exit(worker)

    def read_messages(self, worker: _Worker) -> None:
        try:
            while worker.connection.poll():
                message = json.loads(worker.connection.recv_bytes())
                if message["kind"] == "follow":
                    self.relay(worker.index, message)
                else:  # "applied"
                    self.applied(worker.index, tuple(message["key"]), message["failure"])
        except (EOFError, OSError):
            pass  # the worker is exiting; its sentinel tells the rest

    def relay(self, origin: int, message: dict[str, Any]) -> None:
        key = (origin, int(message["id"]))
        self.requested_loads.pop(message["model"], None)
        if message["action"] == "load":
            self.requested_loads[message["model"]] = None
        others = {index for index in self.workers if index != origin}
        self.pending[key] = _Pending(origin, key[1], others)
        for index in others:
            self.send(
                index, {"kind": "apply", "key": list(key), "action": message["action"], "model": message["model"]}
            )
        self.settle(key)

    def applied(self, index: int, key: tuple[int, ...], failure: str | None) -> None:
        pending = self.pending.get((key[0], key[1]))
        if pending is None:
            return
        pending.waiting_for.discard(index)
        if failure:
            pending.failures.append(failure)
        self.settle((key[0], key[1]))

    def settle(self, key: tuple[int, int]) -> None:
        """Answer a follow request once no worker is left to hear from."""
        pending = self.pending[key]
        if pending.waiting_for:
            return
        del self.pending[key]
        if pending.origin in self.workers:
            self.send(pending.origin, {"kind": "done", "id": pending.request_id, "failures": pending.failures})

    def send(self, index: int, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the worker is exiting; its sentinel tells the rest
            self.workers[index].connection.send_bytes(json.dumps(message).encode())

    def on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        status = worker.process.exitcode
        del self.workers[worker.index]
        worker.connection.close()
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


def run_supervisor(settings: GatewaySettings) -> int:
    """Serve with ``settings.workers`` worker processes until SIGTERM or SIGINT; return the exit status.

    The admin token (given, or generated once and written to the token file) is handed to every
    worker, and the metrics folder is made before and removed after them.

    Returns:
        0 after a requested stop, 1 when a worker could not start.
    """
    given = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    with server_token(given, settings.admin_token_dir, settings.http_port) as token:
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[MULTIPROCESS_DIR_VARIABLE] = metrics_dir
        logger.info("starting %d workers; worker metrics in %s", settings.workers, metrics_dir)
        supervisor = _Supervisor(settings.model_copy(update={"admin_token": SecretStr(token)}))
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
            shutil.rmtree(metrics_dir, ignore_errors=True)
            del os.environ[MULTIPROCESS_DIR_VARIABLE]
    logger.info("all workers stopped")
    return supervisor.exit_status


def _worker_main(settings: GatewaySettings, connection: Connection) -> None:
    """A worker process: one gateway on shared ports, linked to the supervisor by ``connection``."""
    configure_logging(settings.log_level, settings.log_format)
    from gateway.server import StartupError, run_gateway

    try:
        run_gateway(settings, connection)
    except StartupError as error:
        logger.error("worker cannot start: %s", error)
        sys.exit(WORKER_START_FAILED)
