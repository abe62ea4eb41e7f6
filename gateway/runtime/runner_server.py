"""A model runner's side of the hand-off: one version's scheduler, served to every front end on a Unix socket.

:class:`RunnerServer` listens on the runner's socket; each front end connects once (its shared-memory
arena named in a ``hello``), then sends ``run`` and ``withdraw`` messages
(:mod:`gateway.runtime.shared_tensors`). Every request goes to the one
:class:`~gateway.runtime.scheduler.Scheduler` of the version, so its dynamic batcher merges the
requests of all front ends. The inputs are read as views of the front end's shared memory (the
batcher's merge is the one copy), and the outputs are written back into the request's slot, or into
a one-off arena when they do not fit. How busy the runner is goes into a :class:`RunnerActivity` that
the supervisor reads (its memory budget evicts idle runners only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import time
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, UnavailableError
from gateway.metrics import RunShare
from gateway.runtime.scheduler import Scheduler, Tensors
from gateway.runtime.shared_tensors import (
    Arena,
    FrameWriter,
    layout_size,
    read_message,
    read_tensors,
    tensor_bytes,
    write_tensors,
)

logger = logging.getLogger(__name__)


class RunnerActivity:
    """How busy a model runner is, in memory shared with the supervisor, which reads it to choose the least
    recently used idle runner to evict (:mod:`gateway.process.runner_pool`).

    Args:
        values: two doubles in shared memory (a ``multiprocessing`` ``RawArray("d", 2)`` the supervisor
            made and handed the runner): the requests queued or running in the runner, and when the last
            one began (``time.monotonic()`` seconds: on Linux the same clock in every process). Written
            by the runner's event loop only; an aligned double is read whole.
    """

    def __init__(self, values: ctypes.Array[ctypes.c_double]) -> None:
        self._values = values

    @property
    def inflight(self) -> int:
        """Requests queued or running in the runner now."""
        return int(self._values[0])

    @property
    def last_used(self) -> float:
        """When a request last began in the runner, or when it loaded (``time.monotonic()`` seconds)."""
        return float(self._values[1])

    def touch(self) -> None:
        """Make the runner the most recently used (its load has just ended)."""
        self._values[1] = time.monotonic()

    def enter(self) -> None:
        """A request begins: it is busy, and the most recently used."""
        self._values[0] += 1
        self._values[1] = time.monotonic()

    def leave(self) -> None:
        """A request has ended (answered, failed or withdrawn)."""
        self._values[0] -= 1


class RunnerServer:
    """Serves ``scheduler`` to the front ends on the Unix socket ``socket_path``.

    Args:
        scheduler: the version's scheduler (its instances loaded and warmed up).
        socket_path: where to listen; a stale socket file there is replaced.
        activity: where the requests queued or running are counted (None: nowhere).
    """

    def __init__(self, scheduler: Scheduler, socket_path: Path, activity: RunnerActivity | None = None) -> None:
        self.scheduler = scheduler
        self.socket_path = socket_path
        self.activity = activity
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Listen on the socket.

        Raises:
            OSError: the socket cannot be made.
        """
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve_front_end, self.socket_path)

    async def stop(self, timeout_seconds: float) -> bool:
        """Stop listening, wait up to ``timeout_seconds`` for the requests queued or running, then close the
        front ends' connections; whether the requests finished."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        finished = await self.scheduler.wait_idle(timeout_seconds)
        for writer in self._connections.values():
            writer.close()  # each connection's task then ends on its own (not cancelled by the loop's close)
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        return finished

    async def _serve_front_end(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        requests: dict[int, asyncio.Task[None]] = {}
        arena: Arena | None = None
        try:
            hello = await read_message(reader)
            arena = Arena.attach(str(hello["arena"]))
            answers = FrameWriter(writer)
            answers.send({"op": "ready"})
            while True:
                message = await read_message(reader)
                if message.get("op") == "run":
                    request_id = int(message["id"])
                    run = asyncio.create_task(self._run(message, arena, answers))
                    requests[request_id] = run
                    run.add_done_callback(functools.partial(_forget, requests, request_id))
                elif message.get("op") == "withdraw":
                    withdrawn = requests.get(int(message["id"]))
                    if withdrawn is not None:
                        withdrawn.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end went away: what it still had queued here is dropped
        except (OSError, ValueError, KeyError) as error:
            logger.error("closing a front end's connection: %s", error)
        finally:
            for run in list(requests.values()):
                run.cancel()
            writer.close()
            if arena is not None:
                arena.close()
            self._connections.pop(task, None)

    async def _run(self, message: dict[str, Any], arena: Arena, answers: FrameWriter) -> None:
        """Run one request through the scheduler and answer it (outputs, or the error's class and message)."""
        request_id = message["id"]
        own = None
        if self.activity is not None:
            self.activity.enter()
        try:
            if "arena" in message:  # inputs too large for a slot
                own = Arena.attach(str(message["arena"]))
                own.unlink()
            buffer = (own or arena).buffer
            inputs = read_tensors(buffer, message["inputs"])
            shares: list[RunShare] = []
            outputs = await self.scheduler.run(
                inputs,
                message["outputs"],
                int(message["batch"]),
                message["deadline"],
                None,
                message["queued_since"],
                shares.append,
            )
            del inputs
            answer = self._place_outputs(request_id, outputs, arena, message.get("output_space"))
            if shares:
                answer["run"] = shares[0]
        except asyncio.CancelledError:
            answer = {"id": request_id, "error": "CancelledError", "message": "withdrawn"}
        except GatewayError as error:
            answer = {"id": request_id, "error": type(error).__name__, "message": error.message}
        except Exception as error:  # the backend's own failure: its class name and message
            answer = {"id": request_id, "error": type(error).__name__, "message": str(error)}
        finally:
            if own is not None:
                own.close()
            if self.activity is not None:
                self.activity.leave()
        answers.send(answer)

    @staticmethod
    def _place_outputs(request_id: int, outputs: Tensors, arena: Arena, space: list[int] | None) -> dict[str, Any]:
        """Write outputs into the request's slot when they fit its free space, else into an arena of their own."""
        raw = {name: tensor_bytes(array) for name, array in outputs.items()}
        size = layout_size(outputs, raw)
        if space is not None and size <= space[1]:
            return {"id": request_id, "outputs": write_tensors(arena.buffer, space[0], outputs, raw)}
        try:
            own = Arena.create(size, reserve=True)
        except OSError as error:
            raise UnavailableError(
                f"no room in shared memory (/dev/shm) for {size} bytes of outputs: {error}"
            ) from None
        try:
            descriptors = write_tensors(own.buffer, 0, outputs, raw)
        except BaseException:
            own.unlink()
            raise
        finally:
            own.close()
        return {"id": request_id, "outputs": descriptors, "arena": own.name}


def _forget(requests: dict[int, asyncio.Task[None]], request_id: int, _: asyncio.Task[None]) -> None:
    requests.pop(request_id, None)
