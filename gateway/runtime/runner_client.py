"""A front end's side of a model runner: the version's scheduler, as the core sees it, over shared memory.

:class:`RunnerClient` has the :class:`~gateway.runtime.scheduler.VersionScheduler` methods of an
in-process :class:`~gateway.runtime.scheduler.Scheduler`, so the core, the pipelines and the memory
budget do not know whether a version runs in this process or in a model runner process. A request's
inputs are written into a slot of this front end's shared-memory arena, and a ``run`` message goes to
the runner (:mod:`gateway.runtime.shared_tensors` has the wire format); the runner's one dynamic
batcher merges it with the requests of every front end, and writes the outputs back into the slot.

When the runner dies, its socket closes: every request this front end has in flight there fails at
once with :class:`~gateway.errors.UnavailableError` (503 / UNAVAILABLE), never hangs; new requests get
the same error while the process layer restarts the runner, and the client connects again to the
runner's socket as soon as the new runner listens on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import InferenceInputError
from gateway import errors
from gateway.errors import DeadlineExceededError, UnavailableError
from gateway.metrics import RunShare, VersionMetrics
from gateway.runtime.scheduler import WATCH_CLIENT_AFTER_SECONDS, Disconnected, Tensors
from gateway.runtime.shared_tensors import (
    Arena,
    FrameWriter,
    SlotArena,
    frame,
    layout_size,
    read_message,
    read_tensors,
    tensor_bytes,
    write_tensors,
)

logger = logging.getLogger(__name__)

#: Seconds between two attempts to reach a runner that is restarting.
RECONNECT_INTERVAL_SECONDS = 0.1
#: Seconds past a request's deadline that the front end waits for the runner's own deadline answer.
DEADLINE_GRACE_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class _Pending:
    future: asyncio.Future[Tensors]
    slot: int | None  # the slot holding its inputs (and outputs), or None for a one-off arena
    own_arena: Arena | None  # the one-off arena of its inputs


@dataclass(eq=False, slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: FrameWriter
    slots: SlotArena
    pending: dict[int, _Pending] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


def runner_error(name: str, message: str) -> Exception:
    """The exception a runner's error answer stands for: the same :mod:`gateway.errors` class, the backend's
    :class:`~backends.base.InferenceInputError`, else a ``RuntimeError`` with the message."""
    if name == "InferenceInputError":
        return InferenceInputError(message)
    error_class = getattr(errors, name, None)
    if isinstance(error_class, type) and issubclass(error_class, errors.GatewayError):
        return error_class(message)
    return RuntimeError(message)


class RunnerClient:
    """One loaded version, run by a model runner process listening on ``socket_path``.

    Args:
        socket_path: the runner's Unix socket.
        label: the version as messages name it (e.g. ``model 'm' version 2``).
        release: called once, by :meth:`close`: the runner is no longer needed by this front end.
        metrics: where this front end keeps the version's Triton statistics (each answer tells the
            request's part in the run: :class:`~gateway.metrics.RunShare`); the runner records the
            Prometheus metrics of its runs.
    """

    def __init__(
        self, socket_path: Path, label: str, release: Callable[[], None], metrics: VersionMetrics | None = None
    ) -> None:
        self.socket_path = socket_path
        self.label = label
        self._release = release
        self._metrics = metrics
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0

    async def connect(self) -> None:
        """Connect to the runner (it listens once its version is loaded and warmed up).

        Raises:
            UnavailableError: the runner cannot be reached.
        """
        try:
            self._connection = await self._open()
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            raise UnavailableError(f"{self.label}: cannot reach its model runner: {error}") from None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            slots = SlotArena()
        except OSError:
            writer.close()
            raise
        try:
            writer.write(frame({"op": "hello", "arena": slots.arena.name}))
            await read_message(reader)  # the runner has mapped the arena
        except BaseException:
            writer.close()
            slots.arena.unlink()
            slots.arena.close()
            raise
        slots.arena.unlink()
        connection = _Connection(reader, FrameWriter(writer), slots)
        connection.task = asyncio.get_running_loop().create_task(self._read_answers(connection))
        return connection

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        batch_size: int = 1,
        deadline: float | None = None,
        disconnected: Disconnected | None = None,
        queued_since: float | None = None,
    ) -> Tensors:
        """Have the runner run one request; its outputs (see :meth:`gateway.runtime.scheduler.Scheduler.run`).

        Raises:
            UnavailableError: the runner is restarting, died while the request was in flight, or its
                queue is full; or the version was unloaded.
            DeadlineExceededError: the deadline passed (the runner drops the request or its result).
            asyncio.CancelledError: the caller was cancelled or ``disconnected`` returned; the runner
                is told to take the request off its queue.
            InferenceInputError: the backend rejected the inputs.
            GatewayError, RuntimeError: the runner's scheduler or backend failed (its message).
        """
        if self._closed:
            raise UnavailableError("the model version was unloaded while the request was on its way; retry it")
        connection = self._connection
        if connection is None:
            raise UnavailableError(f"{self.label}: its model runner is restarting; retry the request")
        now = time.perf_counter()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError("the request's deadline passed before it was queued; it was not run")
        request_id = next(self._ids)
        message, pending = self._place(connection, request_id, inputs, output_names)
        message.update(batch=batch_size, deadline=deadline, queued_since=now if queued_since is None else queued_since)
        if connection.writer.is_closing():
            self._settle(connection, pending)
            raise UnavailableError(f"{self.label}: its model runner is restarting; retry the request")
        connection.writer.send(message)
        connection.pending[request_id] = pending
        self._enter()
        watch = None
        if disconnected is not None:
            watch = asyncio.get_running_loop().call_later(
                WATCH_CLIENT_AFTER_SECONDS, self._watch_client, pending, disconnected
            )
        try:
            if deadline is None:
                return await pending.future
            # The runner drops the request at its deadline; this guard is for a runner that cannot answer
            # (stopped, or its event loop stuck), so that the request never waits past it for long.
            return await asyncio.wait_for(asyncio.shield(pending.future), deadline - now + DEADLINE_GRACE_SECONDS)
        except TimeoutError:
            pending.future.cancel()
            if not connection.writer.is_closing():
                connection.writer.send({"op": "withdraw", "id": request_id})
            raise DeadlineExceededError(
                f"the request's deadline passed and {self.label}'s model runner did not answer; it was withdrawn"
            ) from None
        except asyncio.CancelledError:  # the caller went away: the runner takes it off its queue if it waits
            pending.future.cancel()
            if not connection.writer.is_closing():
                connection.writer.send({"op": "withdraw", "id": request_id})
            raise
        finally:
            if watch is not None:
                watch.cancel()
            self._leave()

    def _place(
        self, connection: _Connection, request_id: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> tuple[dict[str, Any], _Pending]:
        """Write a request's inputs into shared memory: its message (without times) and its pending record."""
        raw = {name: tensor_bytes(array) for name, array in inputs.items()}
        size = layout_size(inputs, raw)
        slots = connection.slots
        slot = slots.take() if size <= slots.slot_bytes else None
        message: dict[str, Any] = {"op": "run", "id": request_id, "outputs": list(output_names)}
        if slot is not None:
            start = slot * slots.slot_bytes
            message["inputs"] = write_tensors(slots.arena.buffer, start, inputs, raw)
            message["output_space"] = [start + size, slots.slot_bytes - size]
            own = None
        else:
            try:
                own = Arena.create(size, reserve=True)
            except OSError as error:
                raise UnavailableError(
                    f"{self.label}: no room in shared memory (/dev/shm) for the request's {size} bytes of "
                    f"inputs: {error}"
                ) from None
            message["inputs"] = write_tensors(own.buffer, 0, inputs, raw)
            message["arena"] = own.name
        loop = asyncio.get_running_loop()
        return message, _Pending(loop.create_future(), slot, own)

    def _settle(self, connection: _Connection, pending: _Pending) -> None:
        """The runner is done with a request's shared memory: free its slot or one-off arena."""
        if pending.slot is not None:
            connection.slots.give_back(pending.slot)
        if pending.own_arena is not None:
            pending.own_arena.unlink()
            pending.own_arena.close()

    def _watch_client(self, pending: _Pending, disconnected: Disconnected) -> None:
        """The request has waited a while: cancel it if its client goes away before the answer."""
        if pending.future.done():
            return
        watcher = asyncio.get_running_loop().create_task(disconnected())

        def gone(task: asyncio.Task[object]) -> None:
            if not task.cancelled() and not pending.future.done():
                task.exception()  # retrieved: a watch that failed counts as the client gone
                pending.future.cancel()

        watcher.add_done_callback(gone)
        pending.future.add_done_callback(lambda _: watcher.cancel())

    async def _read_answers(self, connection: _Connection) -> None:
        """Read the runner's answers until its socket closes; then fail what is in flight and reconnect."""
        reason = "exited"
        try:
            while True:
                answer = await read_message(connection.reader)
                self._answer(connection, answer)
        except asyncio.IncompleteReadError:
            pass  # the runner closed its socket: it exited
        except (OSError, ValueError, KeyError, TypeError) as error:  # a broken connection or message
            reason = f"failed ({error!r})"
        finally:
            pending, connection.pending = connection.pending, {}
            for request in pending.values():
                if not request.future.done():
                    request.future.set_exception(
                        UnavailableError(f"{self.label}: its model runner stopped while running the request")
                    )
                if request.own_arena is not None:
                    request.own_arena.unlink()
                    request.own_arena.close()
            connection.writer.close()
            connection.slots.arena.close()
            if self._connection is connection:
                self._connection = None
        if not self._closed:
            logger.error("%s: the model runner %s; reconnecting when it is back", self.label, reason)
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _answer(self, connection: _Connection, answer: dict[str, Any]) -> None:
        pending = connection.pending.pop(answer["id"], None)
        if pending is None:
            return
        if "run" in answer and self._metrics is not None:
            self._metrics.observe_run_share(RunShare(*answer["run"]), succeeded="error" not in answer)
        try:
            if "error" in answer:
                result: Tensors | Exception = runner_error(answer["error"], answer.get("message", ""))
            elif "arena" in answer:  # the outputs did not fit the slot: the runner made an arena for them
                outputs = Arena.attach(answer["arena"])
                outputs.unlink()
                try:
                    result = read_tensors(outputs.buffer, answer["outputs"], copy=True)
                finally:
                    outputs.close()
            else:
                buffer = (pending.own_arena or connection.slots.arena).buffer
                result = read_tensors(buffer, answer["outputs"], copy=True)
        except (OSError, ValueError, KeyError, errors.GatewayError) as error:
            result = UnavailableError(f"{self.label}: unreadable answer from its model runner: {error}")
        finally:
            self._settle(connection, pending)
        if pending.future.done():  # cancelled meanwhile
            return
        if isinstance(result, Exception):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(RECONNECT_INTERVAL_SECONDS)
            try:
                connection = await self._open()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                continue
            if self._closed:
                connection.writer.close()
                return
            self._connection = connection
            logger.info("%s: the model runner is back", self.label)
            return

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until this front end has no request in flight here, then :meth:`close`."""
        await self._idle.wait()
        self.close()

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` until this front end has no request in flight here; whether it happened."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        return self._idle.is_set()

    def close(self) -> None:
        """Disconnect from the runner and tell the process layer it is not needed here any more."""
        if self._closed:
            return
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.writer.close()
            if connection.task is not None:  # its reader fails what is still in flight (the loop holds it till then)
                connection.task.cancel()
        self._release()
