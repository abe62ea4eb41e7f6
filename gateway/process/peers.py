"""A worker process's link to the other workers, through its pipe to the supervisor.

:class:`PeerWorkers` is the :class:`gateway.core.repository_control.Peers` the server hands to
repository control in a worker process: :meth:`PeerWorkers.follow` asks every other worker to do what
this one just did, and the supervisor's requests that this worker follow another are applied to its
repository as they arrive, as are the evictions of the model runners its versions run in (the
supervisor's memory budget). The messages are those of :mod:`gateway.process.messages`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Coroutine
from multiprocessing.connection import Connection

from gateway.core.repository_control import PeerAction
from gateway.errors import GatewayError, NotFoundError, UnavailableError
from gateway.process.messages import (
    Applied,
    ApplyRequest,
    FollowDone,
    FollowRequest,
    RunnerAnswer,
    RunnerEvicted,
    WorkerMessage,
)
from gateway.process.runner_host import RunnerHost
from gateway.repository.model_repository import ModelRepository

logger = logging.getLogger(__name__)


class PeerWorkers:
    """The other workers, as one worker's repository control sees them.

    Args:
        connection: this worker's end of its pipe to the supervisor.
        repository: this worker's model repository, which follows the other workers' requests.
        runners: with model runners, this front end's host of them, which gets the supervisor's answers
            about runners.
    """

    def __init__(self, connection: Connection, repository: ModelRepository, runners: RunnerHost | None = None) -> None:
        self._connection = connection
        self._repository = repository
        self._runners = runners
        self._waiting: dict[int, asyncio.Future[tuple[str, ...]]] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start reading the supervisor's messages on the running event loop."""
        asyncio.get_running_loop().add_reader(self._connection.fileno(), self._on_readable)

    async def follow(self, action: PeerAction, name: str, config_override: str | None = None) -> None:
        """Have every other worker load (with ``config_override``) or unload model ``name`` too; return once all have.

        Raises:
            UnavailableError: some worker failed (the message has each one's reason), or the
                supervisor is gone.
        """
        request_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._send(FollowRequest(request_id, action, name, config_override))
            failures = await answer
        finally:
            self._waiting.pop(request_id, None)
        if failures:
            raise UnavailableError(f"model '{name}': {action} failed in other workers: " + "; ".join(failures))

    def _send(self, message: WorkerMessage) -> None:
        try:
            self._connection.send(message)
        except OSError as error:
            raise UnavailableError(f"the worker supervisor cannot be reached: {error}") from None

    def _on_readable(self) -> None:
        try:
            while self._connection.poll():
                message = self._connection.recv()
                if isinstance(message, FollowDone):
                    answer = self._waiting.get(message.request_id)
                    if answer is not None and not answer.done():
                        answer.set_result(message.failures)
                elif isinstance(message, RunnerAnswer) and self._runners is not None:
                    self._runners.on_answer(message)
                elif isinstance(message, RunnerEvicted) and self._runners is not None:
                    client = self._runners.client(message.socket_path)
                    if client is not None:
                        self._start(self._repository.evict_hosted(client, message.resident_bytes))
                elif isinstance(message, ApplyRequest):
                    self._start(self._apply(message))
        except (EOFError, OSError):  # the supervisor is gone: nothing more will come
            asyncio.get_running_loop().remove_reader(self._connection.fileno())
            if self._runners is not None:
                self._runners.supervisor_gone()
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(UnavailableError("the worker supervisor is gone"))

    def _start(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, request: ApplyRequest) -> None:
        failure = None
        try:
            if request.action == "load":
                await self._repository.load(request.model, request.config_override)
            else:
                await self._repository.unload(request.model)
        except NotFoundError:
            if request.action == "load":
                failure = f"worker {os.getpid()}: model '{request.model}' not found"
        except GatewayError as error:
            failure = f"worker {os.getpid()}: {error.message}"
        logger.info(
            "followed another worker: %s model %s%s", request.action, request.model, f" ({failure})" if failure else ""
        )
        if request.key is not None:
            self._send(Applied(request.key, failure))
