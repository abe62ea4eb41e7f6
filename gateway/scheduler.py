"""Scheduling of inference calls onto a model version's backend instances, with dynamic batching.

A :class:`Scheduler` owns the loaded instances of one model version and a queue of requests. Each
instance runs one batch at a time; with ``instance_count`` instances a version runs that many
batches side by side. With dynamic batching (Triton's ``dynamic_batching``), requests whose inputs
agree on every dimension but the first are merged along the first dimension, run once, and the
outputs are split back, so each client gets exactly the rows it would get unbatched.

When a batch is sent (Triton's meanings of the settings, with one difference):

- at once, when it holds the preferred batch size (the largest ``preferred_batch_size``, else
  ``max_batch_size``) or when no instance is busy: a request that finds the queue empty and the
  backend idle runs without added delay (Triton would wait ``max_queue_delay``);
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
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from backends import Backend
from gateway.errors import InternalError, UnavailableError
from gateway.metrics import VersionMetrics

#: Seconds: a version whose batches take less than this (moving average) runs them on the event loop.
INLINE_COMPUTE_SECONDS = 100e-6
#: Weight of the newest batch in the moving average of compute seconds.
_AVERAGE_WEIGHT = 0.2
#: Largest CPU time one batch adds to the moving average: three slow batches in a row move a version to threads.
_CPU_SECONDS_CAP = 2 * INLINE_COMPUTE_SECONDS

Tensors = dict[str, np.ndarray]


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


@dataclass(slots=True)
class _Request:
    inputs: Mapping[str, np.ndarray]
    output_names: Sequence[str]
    batch_size: int
    future: asyncio.Future[Tensors]
    enqueued: float
    # Inputs' names, dtypes and shapes without the first dim: requests merge only when these agree.
    merge_key: tuple[tuple[str, str, tuple[int, ...]], ...] = field(default=())


class Scheduler:
    """The loaded instances of one model version and the queue of requests waiting for them.

    Args:
        instances: one or more loaded instances of the same version.
        metrics: where queue time, compute time and batch sizes are recorded (None: nowhere).
        batching: how to merge requests; None runs each request alone.
        max_queue_size: most requests waiting (not yet running); 0 for no limit.
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

    async def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int = 1) -> Tensors:
        """Queue one request, wait for its batch to run, and return its outputs.

        Args:
            inputs: one array per model input, checked against the model by the caller; with
                batching, the first dim of every input is the request's ``batch_size``.
            output_names: the outputs to return, a non-empty subset of the model's outputs.
            batch_size: items (first-dim rows) in the request; 1 for a model without a batch dim.

        Returns:
            The requested outputs; with batching, each holds this request's ``batch_size`` rows.

        Raises:
            UnavailableError: the queue holds ``max_queue_size`` requests already.
            InferenceInputError: the backend rejected the inputs (see :meth:`backends.Backend.run`).
            InternalError: a merged batch's outputs do not have the batch's size along the first dim.
            Exception: whatever else the backend raised.
        """
        if self._max_queue_size and len(self._queue) >= self._max_queue_size:
            raise UnavailableError(f"the model's queue is full ({self._max_queue_size} requests waiting)")
        loop = asyncio.get_running_loop()
        request = _Request(inputs, output_names, batch_size, loop.create_future(), time.perf_counter())
        if self._batching is not None:
            request.merge_key = tuple(
                (name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())
            )
        self._queue.append(request)
        self._dispatch()
        return await request.future

    def _dispatch(self) -> None:
        """Send batches to idle instances while there are requests that should go now."""
        while self._idle and self._queue:
            batch = self._next_batch()
            if batch is None:
                return
            instance = self._idle.pop()
            self._busy += 1
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

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    async def _compute_in_thread(self, instance: Backend, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            answers, started, seconds, cpu_seconds = await loop.run_in_executor(
                self._executor, self._compute, instance, batch
            )
        except asyncio.CancelledError:  # the event loop is closing
            for request in batch:
                request.future.cancel()
            raise
        self._finish(instance, batch, answers, started, seconds, cpu_seconds)
        self._dispatch()

    def _finish(
        self,
        instance: Backend,
        batch: list[_Request],
        answers: list[Tensors | BaseException],
        started: float,
        seconds: float,
        cpu_seconds: float,
    ) -> None:
        """On the event loop: free the instance, record the batch's metrics, answer its requests.

        ``started`` is when the batch began to run (``time.perf_counter()``), ``seconds`` how long it
        ran, ``cpu_seconds`` the CPU time of the thread that ran it.
        """
        self._busy -= 1
        self._idle.append(instance)
        # Clamped, so that one slow batch (a page fault, a garbage collection) cannot flip the choice.
        cpu_seconds = min(cpu_seconds, _CPU_SECONDS_CAP)
        average = self._average_compute_seconds
        self._average_compute_seconds = (
            cpu_seconds if average == float("inf") else average + _AVERAGE_WEIGHT * (cpu_seconds - average)
        )
        if self._metrics is not None:
            self._metrics.compute_duration.observe(seconds)
            self._metrics.batch_size.observe(sum(request.batch_size for request in batch))
            for request in batch:
                self._metrics.queue_duration.observe(started - request.enqueued)
        for request, answer in zip(batch, answers, strict=True):
            if request.future.done():
                continue
            if isinstance(answer, BaseException):
                request.future.set_exception(answer)
            else:
                request.future.set_result(answer)

    def _compute(
        self, instance: Backend, batch: list[_Request]
    ) -> tuple[list[Tensors | BaseException], float, float, float]:
        """Run one batch: each request's rows or error, when it started, its seconds and its CPU seconds.

        Never raises: a failure becomes the answer of the requests it concerns. Safe in a worker
        thread (touches no shared state). The CPU seconds of the calling thread tell how costly the
        batch is without the waits for the GIL that a worker thread's wall time holds.
        """
        started, cpu_started = time.perf_counter(), time.thread_time()
        answers: list[Tensors | BaseException]
        try:
            answers = [self._run_one(instance, batch[0])] if len(batch) == 1 else self._run_merged(instance, batch)
        except Exception as error:  # e.g. out of memory while merging: answer every request rather than hang
            answers = [error for _ in batch]
        return answers, started, time.perf_counter() - started, time.thread_time() - cpu_started

    @staticmethod
    def _run_one(instance: Backend, request: _Request) -> Tensors | BaseException:
        try:
            return instance.run(request.inputs, request.output_names)
        except Exception as error:
            return error

    def _run_merged(self, instance: Backend, batch: list[_Request]) -> list[Tensors | BaseException]:
        """Run requests as one batch along the first dim and split the outputs; alone again if it fails."""
        output_names = list(dict.fromkeys(name for request in batch for name in request.output_names))
        feeds = {name: np.concatenate([request.inputs[name] for request in batch]) for name in batch[0].inputs}
        total = sum(request.batch_size for request in batch)
        try:
            outputs = instance.run(feeds, output_names)
        except Exception:  # find which request is at fault: each gets what it would get alone
            return [self._run_one(instance, request) for request in batch]
        unbatched = [name for name, array in outputs.items() if array.shape[:1] != (total,)]
        if unbatched:
            error = InternalError(
                f"output {', '.join(unbatched)} of a batch of {total} does not have {total} rows; "
                "the model does not batch along the first dim (set max_batch_size: 0)"
            )
            return [error for _ in batch]
        answers: list[Tensors | BaseException] = []
        start = 0
        for request in batch:
            stop = start + request.batch_size
            answers.append({name: outputs[name][start:stop] for name in request.output_names})
            start = stop
        return answers
