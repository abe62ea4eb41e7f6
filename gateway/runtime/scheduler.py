"""Scheduling of inference calls onto a model version's backend instances, with dynamic batching.

A :class:`Scheduler` owns the loaded instances of one model version and a queue of requests. Each
instance runs one batch at a time; with ``instance_count`` instances a version runs that many
batches side by side. With dynamic batching (Triton's ``dynamic_batching``), requests whose inputs
agree on every dimension but the first are merged along the first dimension, run once, and the
outputs are split back, so each client gets exactly the rows it would get unbatched.

When a batch is sent (Triton's meanings of the settings, with one difference):

- at once, when it holds the preferred batch size (the largest ``preferred_batch_size``, else
  ``max_batch_size``) or when no instance is busy: a request that finds the queue empty and the
  backend idle runs without added delay (Triton would wait ``max_queue_delay``); for a version whose
  batches run in threads (below), at the end of the current event-loop turn, so that the requests
  that turn has already read join it (a model runner reads a burst of messages in one turn);
- otherwise when the oldest request has waited ``max_queue_delay`` or an instance frees up with no
  other instance busy. Requests keep arriving while instances run, so under load batches form by
  themselves.

A request whose inputs cannot merge with the head of the queue (another length along a dynamic
axis) waits for a later batch. If a merged batch fails, each of its requests is run again alone, so
that only the request at fault gets the error.

Where a batch runs: ONNX Runtime and the other backends release the GIL while they compute, so a
batch normally runs in a worker thread and the event loop keeps serving. Handing a call to a thread
and back costs 45 to 110 us (``bench/README.md``), many times what a small model takes, so a version
whose recent batches took less than :data:`INLINE_COMPUTE_SECONDS` runs them on the event loop
instead; it moves back to threads as soon as its batches get slower. Batches are timed in CPU
seconds of the thread running them (a moving average), since a worker thread's wall time also holds
its waits for the GIL.

Queue, deadlines and cancellation: a request finding ``max_queue_size`` requests waiting is refused
at once (:class:`~gateway.errors.UnavailableError`, 503). A request may carry a deadline (the
earliest of a gRPC deadline, Triton's ``timeout`` parameter and the server's request timeout): when
it passes, the request gets :class:`~gateway.errors.DeadlineExceededError` (504 / DEADLINE_EXCEEDED);
if it was still queued it is taken off the queue and never runs, if it was running the backend
finishes (a run cannot be interrupted) and the result is discarded. A request whose caller is
cancelled (a gRPC client that cancels, or whose deadline passes) or whose client disconnects (the
``disconnected`` watch of :meth:`Scheduler.run`) is likewise taken off the queue and never runs.

Draining: when a version is retired (reloaded or unloaded), :meth:`Scheduler.drain` waits until no
request is queued or running, then :meth:`Scheduler.close` releases the instances and the worker
threads.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from backends import Backend
from gateway.errors import DeadlineExceededError, InternalError, UnavailableError
from gateway.metrics import RunShare, VersionMetrics

#: Seconds: a version whose batches take less than this (moving average) runs them on the event loop.
INLINE_COMPUTE_SECONDS = 100e-6
#: Weight of the newest batch in the moving average of compute seconds.
_AVERAGE_WEIGHT = 0.2
#: Largest CPU time one batch adds to the moving average: three slow batches in a row move a version to threads.
_CPU_SECONDS_CAP = 2 * INLINE_COMPUTE_SECONDS
#: Most requests waiting for a version without dynamic batching (whose config has no ``max_queue_size``).
DEFAULT_MAX_QUEUE_SIZE = 1024

#: Seconds a request waits in the queue before its client is watched for a disconnect. Watching costs
#: a task per request (about 5 us); requests that wait less run about as soon as a drop would happen.
WATCH_CLIENT_AFTER_SECONDS = 0.05

#: A coroutine function whose coroutine returns when the client of a request has gone away.
Disconnected = Callable[[], Coroutine[Any, Any, object]]

Tensors = dict[str, np.ndarray]


class VersionScheduler(Protocol):
    """What runs a loaded version's requests: a :class:`Scheduler` in process, or a model runner's client
    (:class:`gateway.runtime.runner_client.RunnerClient`), which hands them to the runner's scheduler."""

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        batch_size: int = 1,
        deadline: float | None = None,
        disconnected: Disconnected | None = None,
        queued_since: float | None = None,
    ) -> Tensors:
        """Run one request and return its outputs (see :meth:`Scheduler.run` for the arguments and errors)."""
        ...

    async def drain(self) -> None:
        """Wait until no request is queued or running, then :meth:`close`."""
        ...

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` until no request is queued or running; whether that happened."""
        ...

    def close(self) -> None:
        """Release the instances (or the runner) now; requests still queued get UnavailableError."""
        ...


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How requests are merged (Triton's ``dynamic_batching``, resolved against the model).

    Attributes:
        max_batch_size: most items (first-dim rows) in one batch.
        preferred_batch_size: items at which a batch is sent without waiting (<= max_batch_size).
        max_queue_delay_seconds: longest a request waits for others to join it, in seconds.
    """

    max_batch_size: int
    preferred_batch_size: int
    max_queue_delay_seconds: float


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """When one batch ran and how long each part took, in ``time.perf_counter()`` seconds.

    Attributes:
        started: when the batch began to run.
        input_seconds: merging the requests' inputs into one batch (0 for a request run alone).
        infer_seconds: the backend's runs.
        output_seconds: splitting the outputs back into the requests' (0 for a request run alone).
        cpu_seconds: CPU time of the thread that ran the batch (all three parts).
    """

    started: float
    input_seconds: float
    infer_seconds: float
    output_seconds: float
    cpu_seconds: float


@dataclass(slots=True, eq=False)  # compared by identity: taken off the queue with deque.remove
class _Request:
    inputs: Mapping[str, np.ndarray]
    output_names: Sequence[str]
    batch_size: int
    future: asyncio.Future[Tensors]
    enqueued: float
    # Inputs' names, dtypes and shapes without the first dim: requests merge only when these agree.
    merge_key: tuple[tuple[str, str, tuple[int, ...]], ...] = field(default=())
    # Set when the request is taken off the queue to run.
    running: bool = False
    # The task watching for the client's disconnect, once the request has waited a while.
    watcher: asyncio.Task[object] | None = None
    # Told the request's part in the run that answers it (a model runner sends it to the front end).
    on_run: Callable[[RunShare], None] | None = None


class Scheduler:
    """The loaded instances of one model version and the queue of requests waiting for them.

    Args:
        instances: one or more loaded instances of the same version.
        metrics: where queue time, compute time and batch sizes are recorded (None: nowhere).
        batching: how to merge requests; None runs each request alone.
        max_queue_size: most requests waiting (not yet running); 0 for no limit (Triton's meaning
            of ``dynamic_batching.max_queue_size: 0``).
    """

    def __init__(
        self,
        instances: Sequence[Backend],
        metrics: VersionMetrics | None = None,
        batching: BatchingPolicy | None = None,
        max_queue_size: int = 0,
    ) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        self._idle = list(instances)
        self._busy = 0
        self._metrics = metrics
        self._batching = batching
        self._max_queue_size = max_queue_size
        self._queue: deque[_Request] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix="backend")
        self._average_compute_seconds = float("inf")  # unknown until a batch ran: start in threads
        self._dispatch_pending = False  # a dispatch is scheduled for the end of this event loop turn
        self._closed = False
        # Set by drain(): resolved once no request is queued or running.
        self._drained: asyncio.Future[None] | None = None

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        batch_size: int = 1,
        deadline: float | None = None,
        disconnected: Disconnected | None = None,
        queued_since: float | None = None,
        on_run: Callable[[RunShare], None] | None = None,
    ) -> Tensors:
        """Queue one request, wait for its batch to run, and return its outputs.

        Args:
            inputs: one array per model input, checked against the model by the caller; with
                batching, the first dim of every input is the request's ``batch_size``.
            output_names: the outputs to return, a non-empty subset of the model's outputs.
            batch_size: items (first-dim rows) in the request; 1 for a model without a batch dim.
            deadline: when the answer is due, in ``time.perf_counter()`` seconds, or None for no
                deadline. Past it, a request still queued is dropped (never run) and one running
                has its result discarded.
            disconnected: a coroutine function whose coroutine returns when the client goes away;
                called (watched in a task) only once the request has waited in the queue for
                :data:`WATCH_CLIENT_AFTER_SECONDS`, so that a request that does not wait long costs
                nothing more. When it returns, the request is dropped from the queue (or, if it
                started meanwhile, its answer discarded) and this call raises ``asyncio.CancelledError``.
            queued_since: when the request began to wait for this version, if before this call (for its
                model to load), in ``time.perf_counter()`` seconds: its queue time counts from then.
            on_run: called with the request's part in the run that answers it, before the answer.

        Returns:
            The requested outputs; with batching, each holds this request's ``batch_size`` rows.

        Raises:
            UnavailableError: the queue holds ``max_queue_size`` requests already, or the version
                was unloaded (the scheduler is closed).
            DeadlineExceededError: ``deadline`` passed before the outputs were ready.
            asyncio.CancelledError: the caller was cancelled, or ``disconnected`` returned; the
                request was taken off the queue if it had not started.
            InferenceInputError: the backend rejected the inputs (see :meth:`backends.Backend.run`).
            InternalError: a merged batch's outputs do not have the batch's size along the first dim.
            Exception: whatever else the backend raised.
        """
        if self._closed:
            raise UnavailableError("the model version was unloaded while the request was on its way; retry it")
        if self._max_queue_size and len(self._queue) >= self._max_queue_size:
            raise UnavailableError(f"the model's queue is full ({self._max_queue_size} requests waiting)")
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()
        if deadline is not None and deadline <= enqueued:
            raise DeadlineExceededError("the request's deadline passed before it was queued; it was not run")
        request = _Request(
            inputs, output_names, batch_size, loop.create_future(), enqueued if queued_since is None else queued_since
        )
        request.on_run = on_run
        if self._batching is not None:
            request.merge_key = tuple(
                (name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())
            )
        self._queue.append(request)
        if self._batching is not None and self._average_compute_seconds >= INLINE_COMPUTE_SECONDS:
            # Dispatched once this turn of the event loop is over, so that the requests it has already
            # read (e.g. a model runner's burst of messages from the front ends) join the same batch.
            if not self._dispatch_pending:
                self._dispatch_pending = True
                loop.call_soon(self._dispatch_soon)
        else:
            self._dispatch()
        future = request.future
        if future.done():  # it ran on the event loop already: no waiting, so nothing to watch
            return future.result()
        return await self._wait(request, deadline, disconnected)

    async def _wait(self, request: _Request, deadline: float | None, disconnected: Disconnected | None) -> Tensors:
        """Await a queued or running request's answer, watching its deadline and its client."""
        loop = asyncio.get_running_loop()
        timer = None
        if deadline is not None:
            timer = loop.call_later(deadline - time.perf_counter(), self._expire, request)
        watch = None
        if disconnected is not None and not request.running:
            watch = loop.call_later(WATCH_CLIENT_AFTER_SECONDS, self._watch_client, request, disconnected)
        try:
            return await request.future
        except asyncio.CancelledError:  # the caller was cancelled (e.g. a gRPC client cancelled) or went away
            self._withdraw(request)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if watch is not None:
                watch.cancel()
            if request.watcher is not None:
                request.watcher.cancel()

    def _watch_client(self, request: _Request, disconnected: Disconnected) -> None:
        """The request has waited a while: if it is still queued, watch for its client going away."""
        if request.running or request.future.done():
            return
        watcher = request.watcher = asyncio.get_running_loop().create_task(disconnected())
        watcher.add_done_callback(functools.partial(self._on_disconnected, request))

    def _withdraw(self, request: _Request) -> bool:
        """Take a request that has not started off the queue (it will never run); False if it was not queued.

        The caller settles the request's future.
        """
        try:
            self._queue.remove(request)
        except ValueError:  # running or answered already
            return False
        self._note_idle()
        return True

    def _expire(self, request: _Request) -> None:
        """The request's deadline passed: drop it if queued, discard its result if running."""
        if request.future.done():
            return
        if self._withdraw(request):
            message = "the request's deadline passed while it waited in the queue; it was not run"
        else:
            message = "the request's deadline passed while the model ran it; its result was discarded"
        request.future.set_exception(DeadlineExceededError(message))

    def _on_disconnected(self, request: _Request, watcher: asyncio.Task[object]) -> None:
        """The disconnect watch of a request ended: unless we stopped it, the client is gone."""
        if watcher.cancelled():
            return
        watcher.exception()  # retrieved: a watch that failed counts as the client gone
        if not request.future.done():
            self._withdraw(request)  # if it is running instead, the backend finishes and the answer is dropped
            request.future.cancel()

    async def drain(self) -> None:
        """Wait until no request is queued or running, then :meth:`close`.

        Requests that arrive meanwhile are still served (the repository no longer routes any here,
        but one may have been on its way); after the close, :meth:`run` raises UnavailableError.
        """
        if not self._closed and not self._is_idle():
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        self.close()

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` until no request is queued or running here; whether that happened.

        The version keeps serving (a promote waits so for the version it took the ``stable`` label from).
        """
        deadline = time.perf_counter() + timeout_seconds
        while not self._is_idle():
            if time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def close(self) -> None:
        """Release the instances and worker threads now; requests still queued get UnavailableError.

        A batch already running finishes in its worker thread and its requests get their answers.
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, deque()
        for request in queue:
            if not request.future.done():
                request.future.set_exception(UnavailableError("the model version was unloaded; retry the request"))
        self._idle.clear()
        self._executor.shutdown(wait=False)

    def _is_idle(self) -> bool:
        return self._busy == 0 and all(request.future.done() for request in self._queue)

    def _note_idle(self) -> None:
        """Resolve a pending :meth:`drain` once nothing is queued or running."""
        drained = self._drained
        if drained is not None and not drained.done() and self._is_idle():
            drained.set_result(None)

    def _dispatch(self) -> None:
        """Send batches to idle instances while there are requests that should go now."""
        while self._idle and self._queue:
            batch = self._next_batch()
            if batch is None:
                return
            instance = self._idle.pop()
            self._busy += 1
            for request in batch:
                request.running = True
            if self._average_compute_seconds < INLINE_COMPUTE_SECONDS:
                self._finish(instance, batch, *self._compute(instance, batch))
            else:
                asyncio.get_running_loop().create_task(self._compute_in_thread(instance, batch))

    def _next_batch(self) -> list[_Request] | None:
        """Take the requests of the next batch off the queue, or None when it should wait (timer armed)."""
        queue = self._queue
        while queue and queue[0].future.done():  # its client went away
            queue.popleft()
        if not queue:
            return None
        policy = self._batching
        if policy is None:
            return [queue.popleft()]
        head = queue[0]
        chosen: list[_Request] = []
        items = 0
        for request in queue:
            if request.merge_key == head.merge_key and not request.future.done():
                if items + request.batch_size > policy.max_batch_size:
                    break
                chosen.append(request)
                items += request.batch_size
        waited = time.perf_counter() - head.enqueued
        if items < policy.preferred_batch_size and self._busy and waited < policy.max_queue_delay_seconds:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(
                    policy.max_queue_delay_seconds - waited, self._on_timer
                )
            return None
        if all(queue[index] is request for index, request in enumerate(chosen)):
            for _ in chosen:
                queue.popleft()
        else:
            taken = set(map(id, chosen))
            self._queue = deque(request for request in queue if id(request) not in taken)
        return chosen

    def _dispatch_soon(self) -> None:
        self._dispatch_pending = False
        if not self._closed:
            self._dispatch()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    async def _compute_in_thread(self, instance: Backend, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            answers, timing = await loop.run_in_executor(self._executor, self._compute, instance, batch)
        except asyncio.CancelledError:  # the event loop is closing
            for request in batch:
                request.future.cancel()
            raise
        self._finish(instance, batch, answers, timing)
        self._dispatch()

    def _finish(
        self, instance: Backend, batch: list[_Request], answers: list[Tensors | BaseException], timing: BatchTiming
    ) -> None:
        """On the event loop: free the instance, record the batch's metrics, answer its requests."""
        self._busy -= 1
        if not self._closed:
            self._idle.append(instance)
        # Clamped, so that one slow batch (a page fault, a garbage collection) cannot flip the choice.
        cpu_seconds = min(timing.cpu_seconds, _CPU_SECONDS_CAP)
        average = self._average_compute_seconds
        self._average_compute_seconds = (
            cpu_seconds if average == float("inf") else average + _AVERAGE_WEIGHT * (cpu_seconds - average)
        )
        if self._metrics is not None:
            self._metrics.observe_batch(
                [timing.started - request.enqueued for request in batch],
                [request.batch_size for request in batch],
                [not isinstance(answer, BaseException) for answer in answers],
                timing.input_seconds,
                timing.infer_seconds,
                timing.output_seconds,
            )
        items = 0  # the run's items, counted for the first request that wants its share (a runner's)
        for index, (request, answer) in enumerate(zip(batch, answers, strict=True)):
            if request.future.done():
                continue
            if request.on_run is not None:
                items = items or sum(queued.batch_size for queued in batch)
                request.on_run(
                    RunShare(
                        timing.started - request.enqueued,
                        request.batch_size,
                        items,
                        timing.input_seconds,
                        timing.infer_seconds,
                        timing.output_seconds,
                        first=index == 0,
                    )
                )
            if isinstance(answer, BaseException):
                request.future.set_exception(answer)
            else:
                request.future.set_result(answer)
        if self._drained is not None:
            self._note_idle()

    def _compute(self, instance: Backend, batch: list[_Request]) -> tuple[list[Tensors | BaseException], BatchTiming]:
        """Run one batch: each request's rows or error, and the batch's timing.

        Never raises: a failure becomes the answer of the requests it concerns. Safe in a worker
        thread (touches no shared state). The CPU seconds of the calling thread tell how costly the
        batch is without the waits for the GIL that a worker thread's wall time holds.
        """
        started, cpu_started = time.perf_counter(), time.thread_time()
        answers: list[Tensors | BaseException]
        phases = (0.0, 0.0, 0.0)
        try:
            if len(batch) == 1:
                answers = [self._run_one(instance, batch[0])]
                phases = (0.0, time.perf_counter() - started, 0.0)
            else:
                answers, phases = self._run_merged(instance, batch)
        except Exception as error:  # e.g. out of memory while merging: answer every request rather than hang
            answers = [error for _ in batch]
            phases = (0.0, time.perf_counter() - started, 0.0)
        return answers, BatchTiming(started, *phases, cpu_seconds=time.thread_time() - cpu_started)

    @staticmethod
    def _run_one(instance: Backend, request: _Request) -> Tensors | BaseException:
        try:
            return instance.run(request.inputs, request.output_names)
        except Exception as error:
            return error

    def _run_merged(
        self, instance: Backend, batch: list[_Request]
    ) -> tuple[list[Tensors | BaseException], tuple[float, float, float]]:
        """Run requests as one batch along the first dim and split the outputs; alone again if it fails.

        Returns each request's answer, and the seconds spent merging, running and splitting.
        """
        started = time.perf_counter()
        output_names = list(dict.fromkeys(name for request in batch for name in request.output_names))
        feeds = {name: np.concatenate([request.inputs[name] for request in batch]) for name in batch[0].inputs}
        total = sum(request.batch_size for request in batch)
        merged = time.perf_counter()
        try:
            outputs = instance.run(feeds, output_names)
        except Exception:  # find which request is at fault: each gets what it would get alone
            alone = [self._run_one(instance, request) for request in batch]
            return alone, (merged - started, time.perf_counter() - merged, 0.0)
        ran = time.perf_counter()
        unbatched = [name for name, array in outputs.items() if array.shape[:1] != (total,)]
        if unbatched:
            error = InternalError(
                f"output {', '.join(unbatched)} of a batch of {total} does not have {total} rows; "
                "the model does not batch along the first dim (set max_batch_size: 0)"
            )
            return [error for _ in batch], (merged - started, ran - merged, 0.0)
        answers: list[Tensors | BaseException] = []
        start = 0
        for request in batch:
            stop = start + request.batch_size
            answers.append({name: outputs[name][start:stop] for name in request.output_names})
            start = stop
        return answers, (merged - started, ran - merged, time.perf_counter() - ran)
