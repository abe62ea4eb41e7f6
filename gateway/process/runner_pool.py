"""The supervisor's model runners: one process per loaded version, shared by every front end.

A front end (worker) that loads a version asks for its runner (:class:`~gateway.process.messages.RunnerWanted`).
:class:`RunnerPool` starts one runner process per key (the same model, version, files and config)
and answers every front end that asked once the runner has loaded the version and listens on its
socket; a second front end asking for the same key gets the running one. A runner is stopped (SIGTERM)
when no front end uses it any more. A runner that dies while front ends use it is restarted on the
same socket path (after :data:`RESTART_DELAY_SECONDS`, doubling up to :data:`MAX_RESTART_DELAY_SECONDS`
while its loads keep failing); the front ends fail its in-flight requests at once and connect again
when it is back (:class:`~gateway.runtime.runner_client.RunnerClient`).

With a memory budget (``--memory-budget-bytes``) the pool accounts for the bytes of every runner, once
per machine: a runner's resident bytes are what its process holds of its own (its private pages,
measured once it has loaded: its version, the runtime's allocations, the interpreter's pages it
changed); a runner that is loading holds a reservation for its load's peak (measured at the last load
of the same key, else twice its files' bytes, plus what the last load held above its files). A
runner starts only once the runners alive fit the budget with its reservation (with
``--memory-budget-scope gateway``, the budget less what the gateway's other processes hold: the
proportional set size of the supervisor, the fork server and the front ends, measured at each look);
to make room, the pool
evicts the least recently used idle runners of other models (:class:`~gateway.runtime.runner_server.RunnerActivity`:
none with a request queued or running) and waits for them to exit. A GPU budget (``--gpu-memory-budget-bytes``,
per CUDA device) is kept the same way: a runner holds the GPU bytes its load measured (its reservation: what the
last load of the same key measured, nothing before the first, whose runner evicts others once it has measured),
and only runners holding bytes on a device over its budget are evicted for that device. Each front end that uses an
evicted runner takes the version out of service, lets its requests in flight finish and releases it; its next
request loads it again. A runner that cannot get room before the deadline of the request that wants it
(of the most patient one, when several do; :data:`~gateway.runtime.memory_budget.DEFAULT_ROOM_WAIT_SECONDS`
for a load no request waits on) fails its load with ``NoRoomError``; one larger than the whole budget
with ``LargerThanBudgetError``.

The pool is driven by the supervisor's loop (:mod:`gateway.process.supervisor`): :meth:`RunnerPool.waitables`
lists the pipes and process sentinels to wait on, and :meth:`RunnerPool.tick` starts restarts that are due
and the loads that now have room.
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
    RunnerEvicted,
    RunnerFailed,
    RunnerLoaded,
    RunnerSpec,
    RunnerWanted,
    SupervisorMessage,
)
from gateway.runtime.gpu_memory import warn_if_unreadable
from gateway.runtime.memory_budget import (
    DEFAULT_ROOM_WAIT_SECONDS,
    budget_share,
    eviction_told,
    gpu_devices_over,
    more_than_gpu_budget,
    more_than_share,
    process_tree,
    proportional_set_bytes,
)
from gateway.runtime.runner_server import RunnerActivity
from gateway.settings import GatewaySettings, MemoryBudgetScope

logger = logging.getLogger(__name__)

#: Seconds before a runner that died is started again; doubled after each failed restart.
RESTART_DELAY_SECONDS = 0.5
#: Longest wait between two restarts of a runner whose load keeps failing.
MAX_RESTART_DELAY_SECONDS = 30.0
#: Seconds between two looks at the runners' activity while a load waits for a busy runner to go idle.
ROOM_CHECK_SECONDS = 0.05

#: A model runner process's entry point (:func:`gateway.process.runner.run_runner`): it loads the spec's
#: version, listens on the socket path, counts its requests in the activity, and tells the supervisor
#: over the connection. Module-level (started by the fork server).
RunnerMain = Callable[[GatewaySettings, RunnerSpec, str, Connection, RunnerActivity], None]
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
    # Its requests queued or running and its last use, written by the runner (made at each start).
    activity: RunnerActivity | None = None
    # What it holds of the memory budget: the reservation for its load, then its resident bytes.
    held_bytes: int = 0
    # What it holds of the GPU budget on each device: the reservation for its load, then what it measured.
    held_gpu: dict[int, int] = field(default_factory=dict)
    # Until when it may wait for room within the budget (time.monotonic()); None: not waiting.
    room_deadline: float | None = None

    @property
    def label(self) -> str:
        return f"model {self.spec.model} version {self.spec.version}"


class RunnerPool:
    """The model runner processes of one machine, started and stopped as the front ends need them.

    Args:
        settings: the server settings, handed to every runner; its ``memory_budget_bytes`` is the budget
            of all the runners together, its ``gpu_memory_budget_bytes`` theirs on each CUDA device.
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
        self.stopping: list[_Runner] = []  # no longer given to front ends (evicted, unwanted), not yet exited
        self._sockets = 0
        self.closing = False
        self.budget_bytes = settings.memory_budget_bytes
        self.gpu_budget_bytes = settings.gpu_memory_budget_bytes
        warn_if_unreadable(self.gpu_budget_bytes)
        self.budget_counts_gateway = settings.memory_budget_scope is MemoryBudgetScope.GATEWAY
        self.waiting_for_room: list[_Runner] = []  # in the order they asked
        self._measured: dict[str, RunnerLoaded] = {}  # by key: its last load's figures
        self._overhead_bytes = 0  # what the last load held above its files' bytes

    @property
    def has_budget(self) -> bool:
        """Whether the runners are under a budget: a memory budget, a GPU budget, or both."""
        return self.budget_bytes is not None or self.gpu_budget_bytes is not None

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
        if runner is not None and runner.loaded is not None and runner.process is not None:
            runner.users[worker] += 1
            self.send(worker, RunnerAnswer(message.request_id, runner.socket_path, runner.loaded))
            return
        if runner is None:
            self._sockets += 1
            runner = _Runner(spec, str(self.socket_dir / f"runner-{self._sockets}.sock"))
            runner.waiting.append((worker, message.request_id))
            if spec.check_only:
                self.stopping.append(runner)  # a check answers once and exits by itself
                self._start(runner)
            else:
                self.runners[spec.key] = runner
                self._start_within_budget(runner, message.room_wait_seconds)
        else:
            runner.waiting.append((worker, message.request_id))
            if runner.room_deadline is not None:  # waiting for room: as long as its most patient want
                runner.room_deadline = max(runner.room_deadline, _room_deadline(message.room_wait_seconds))

    def unwanted(self, worker: int, socket_path: str) -> None:
        """A worker no longer serves the version of the runner on ``socket_path``; it stops when no worker does."""
        for runner in [*self.runners.values(), *self.stopping]:
            if runner.socket_path == socket_path:
                runner.users[worker] -= 1
                if runner.users[worker] <= 0:
                    del runner.users[worker]
                self._stop_if_unused(runner)
                return

    def worker_exited(self, worker: int) -> None:
        """A worker is gone: it uses no runner any more (a restarted worker asks again as it loads)."""
        for runner in [*self.runners.values(), *self.stopping]:
            runner.users.pop(worker, None)
            runner.waiting = [(index, request) for index, request in runner.waiting if index != worker]
            self._stop_if_unused(runner)

    def wait_seconds(self) -> float:
        """How long the supervisor's loop may wait for a pipe or a process before :meth:`tick` is due."""
        return ROOM_CHECK_SECONDS if self.waiting_for_room else 0.5

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
        """Start the restarts that are due, and the loads that have room now (or fail those that waited too long)."""
        now = time.monotonic()
        for runner in list(self.runners.values()):
            if runner.restart_at is not None and runner.restart_at <= now and not self.closing:
                runner.restart_at = None
                self._start_within_budget(runner)
        self._admit()

    def close(self) -> None:
        """Stop every runner (SIGTERM): the front ends are gone."""
        self.closing = True
        self.waiting_for_room.clear()
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

    def runners_budget_bytes(self) -> int | None:
        """The bytes the runners may hold together now: the budget, less what the gateway's other processes hold
        (their proportional set sizes, an upload's trial runner among them) when the budget counts the whole
        gateway; at least 0. None without a memory budget."""
        if self.budget_bytes is None or not self.budget_counts_gateway:
            return self.budget_bytes
        accounted = {
            r.process.pid
            for r in [*self.runners.values(), *self.stopping]
            if r.process is not None and not r.spec.check_only
        }
        own = sum(proportional_set_bytes(pid) for pid in process_tree(os.getpid()) if pid not in accounted)
        return max(self.budget_bytes - own, 0)

    def _start_within_budget(self, runner: _Runner, room_wait_seconds: float | None = None) -> None:
        """Start ``runner`` now, or, with a budget, once the runners alive leave room for its load (waiting
        ``room_wait_seconds`` at most; None: :data:`DEFAULT_ROOM_WAIT_SECONDS`)."""
        if not self.has_budget:
            self._start(runner)
            return
        share = self.runners_budget_bytes()
        model, measured = runner.spec.model, self._measured.get(runner.spec.key)
        runner.held_gpu = dict(measured.gpu_bytes) if measured is not None else {}
        too_large: str | None = None
        if share is not None and self.budget_bytes is not None:
            runner.held_bytes = self._needed_bytes(runner.spec, share)
            if runner.held_bytes > share:
                too_large = f"model '{model}' needs about {runner.held_bytes} bytes, "
                too_large += more_than_share(share, self.budget_bytes)
        larger_on = gpu_devices_over(self.gpu_budget_bytes, [], runner.held_gpu)  # a device alone cannot hold it
        if too_large is None and larger_on:
            assert self.gpu_budget_bytes is not None
            device = larger_on[0]
            too_large = (
                f"model '{model}' needs about {runner.held_gpu[device]} bytes on GPU {device}, "
                f"{more_than_gpu_budget(self.gpu_budget_bytes)}"
            )
        if too_large is not None:
            self._failed(runner, RunnerFailed("LargerThanBudgetError", too_large))
            return
        runner.room_deadline = _room_deadline(room_wait_seconds)
        self.waiting_for_room.append(runner)
        self._admit()

    def _needed_bytes(self, spec: RunnerSpec, share: int) -> int:
        """The bytes a load of ``spec`` reserves: what it will hold at its peak (at most ``share``, the runners'
        budget), and never less than what it will keep (measured at the last load of the key, else estimated from
        its files)."""
        measured = self._measured.get(spec.key)
        if measured is not None:
            kept, peak = measured.resident_bytes, measured.peak_bytes
        else:
            kept, peak = spec.model_bytes + self._overhead_bytes, 2 * spec.model_bytes + self._overhead_bytes
        return max(kept, min(peak, share))

    def _admit(self) -> None:
        """Start the runners waiting for room, in order, while they fit; fail those that waited too long."""
        while self.waiting_for_room:
            runner = self.waiting_for_room[0]
            if self.runners.get(runner.spec.key) is not runner or self.closing:
                self.waiting_for_room.pop(0)  # no longer wanted
                runner.room_deadline = None
                continue
            if self._make_room(runner.spec.model, runner.held_bytes, runner.held_gpu):
                self.waiting_for_room.pop(0)
                runner.room_deadline = None
                self._start(runner)
                continue
            assert runner.room_deadline is not None
            others = any(
                r.process is not None and r.spec.model != runner.spec.model
                for r in [*self.runners.values(), *self.stopping]
            )
            if others and time.monotonic() < runner.room_deadline:
                return  # an eviction under way, or a busy runner, may make room
            self.waiting_for_room.pop(0)
            runner.room_deadline = None
            self._no_room(runner)

    def _make_room(self, model: str, needed_bytes: int, needed_gpu: dict[int, int]) -> bool:
        """Whether ``needed_bytes`` more fit the budget now, and ``needed_gpu`` more (bytes by CUDA device) the GPU
        budget; if not, evict the least recently used idle runners of other models that hold bytes where room is
        short, until they will fit once the runners leaving have exited. With the gateway in the budget, a load that
        fits logs what the gateway holds besides its runners."""
        share = self.runners_budget_bytes()
        alive = self._alive()
        memory, devices = self._short_of(alive, needed_bytes, needed_gpu, share)
        if not memory and not devices:
            if self.budget_counts_gateway and needed_bytes > 0:  # a load about to start
                assert self.budget_bytes is not None and share is not None
                logger.info(
                    "memory budget: the gateway holds %d bytes besides its model runners; the runners may hold %d "
                    "of the %d-byte budget",
                    self.budget_bytes - share,
                    share,
                    self.budget_bytes,
                )
            return True
        staying = [r for r in alive if r not in self.stopping]
        idle = [
            r
            for r in self.runners.values()
            if r.process is not None
            and r.loaded is not None
            and r.spec.model != model
            and r.activity is not None
            and r.activity.inflight == 0
        ]
        for runner in sorted(idle, key=lambda r: r.activity.last_used if r.activity is not None else 0.0):
            memory, devices = self._short_of(staying, needed_bytes, needed_gpu, share)
            if not memory and not devices:
                break
            if memory or any(runner.held_gpu.get(device) for device in devices):
                self._evict(runner)
                staying.remove(runner)
        return False

    def _alive(self) -> list[_Runner]:
        """The runners whose process is alive: those given to front ends, and those stopping."""
        return [r for r in [*self.runners.values(), *self.stopping] if r.process is not None]

    def _short_of(
        self, runners: list[_Runner], needed_bytes: int, needed_gpu: dict[int, int], share: int | None
    ) -> tuple[bool, list[int]]:
        """Whether ``needed_bytes`` more do not fit ``share`` (the runners' part of the memory budget, None: no
        budget) beside ``runners``, and the CUDA devices where ``needed_gpu`` more do not fit the GPU budget."""
        memory = share is not None and sum(r.held_bytes for r in runners) + needed_bytes > share
        return memory, gpu_devices_over(self.gpu_budget_bytes, [r.held_gpu for r in runners], needed_gpu)

    def _evict(self, runner: _Runner) -> None:
        """Take an idle runner from the front ends to make room: each lets its requests finish, then releases it."""
        assert runner.activity is not None
        del self.runners[runner.spec.key]
        self.stopping.append(runner)
        idle_seconds = time.monotonic() - runner.activity.last_used
        evicted = RunnerEvicted(runner.socket_path, runner.held_bytes, idle_seconds)
        told = eviction_told(self.budget_bytes, self.gpu_budget_bytes, runner.held_bytes, runner.held_gpu, idle_seconds)
        logger.info("model runner of %s %s", runner.label, told)
        if runner.connection is not None:
            with contextlib.suppress(OSError):  # it is exiting; its sentinel tells the rest
                runner.connection.send(evicted)
        for worker in runner.users:
            self.send(worker, evicted)
        self._stop_if_unused(runner)

    def _no_room(self, runner: _Runner) -> None:
        """A runner that waited too long for room, or that only its own model's runners keep from room: its load
        fails (a restart is tried again later)."""
        busy = sorted(
            r.label
            for r in self.runners.values()
            if r.spec.model != runner.spec.model and r.activity is not None and r.activity.inflight > 0
        )
        held_by = f"model runners that stayed busy ({', '.join(busy)})" if busy else "its own model's runners"
        share = self.runners_budget_bytes()
        memory, devices = self._short_of(self._alive(), runner.held_bytes, runner.held_gpu, share)
        if share is not None and self.budget_bytes is not None and (memory or not devices):
            needs = f"about {runner.held_bytes} bytes; {budget_share(share, self.budget_bytes)}"
        else:
            device = devices[0] if devices else min(runner.held_gpu, default=0)
            needs = (
                f"about {runner.held_gpu.get(device, 0)} bytes on GPU {device}; the GPU memory budget's "
                f"{self.gpu_budget_bytes} bytes there"
            )
        message = f"model '{runner.spec.model}' needs {needs} are held by {held_by}; retry later"
        self._failed(runner, RunnerFailed("NoRoomError", message))
        if runner.users:
            runner.restart_at = time.monotonic() + MAX_RESTART_DELAY_SECONDS

    def _start(self, runner: _Runner) -> None:
        runner.activity = RunnerActivity(self.context.RawArray("d", 2))  # a fresh count: a dead runner's may be off
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=self.runner_main,
            args=(self.settings, runner.spec, runner.socket_path, child_end, runner.activity),
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
        if self.has_budget and not runner.spec.check_only:
            assert runner.activity is not None
            runner.activity.touch()
            runner.held_bytes, runner.held_gpu = loaded.resident_bytes, dict(loaded.gpu_bytes)
            self._measured[runner.spec.key] = loaded
            self._overhead_bytes = max(0, loaded.resident_bytes - runner.spec.model_bytes)
            self._make_room(runner.spec.model, 0, {})  # it measured more than reserved: back within the budget
        restarted = bool(runner.users)
        if restarted:
            logger.info("model runner of %s is back", runner.label)
        for index, (worker, request_id) in enumerate(runner.waiting):
            runner.users[worker] += 1
            started = index == 0 and not restarted
            self.send(worker, RunnerAnswer(request_id, runner.socket_path, loaded, started))
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
            if runner.process is not None:
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
            self._admit()  # its bytes are free
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


def _room_deadline(room_wait_seconds: float | None) -> float:
    """Until when (``time.monotonic()``) a load may wait for room: ``room_wait_seconds`` from now, None: the default."""
    return time.monotonic() + (DEFAULT_ROOM_WAIT_SECONDS if room_wait_seconds is None else room_wait_seconds)
