"""Scheduling of inference calls onto a model version's backend instances.

Every call runs in a worker thread, off the event loop (ONNX Runtime releases the GIL while it
computes), so a slow model never stalls the server. Each instance runs one call at a time; with
``instance_count`` instances a version runs that many calls side by side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import numpy as np

from backends import Backend
from gateway.metrics import VersionMetrics


class InstancePool:
    """The loaded instances of one model version, handed out one call at a time.

    Args:
        instances: one or more loaded instances of the same version.
        metrics: where queue time, compute time and batch sizes are recorded (None: nowhere).
    """

    def __init__(self, instances: Sequence[Backend], metrics: VersionMetrics | None = None) -> None:
        if not instances:
            raise ValueError("an instance pool needs at least one instance")
        self._metrics = metrics
        self._idle: asyncio.Queue[Backend] = asyncio.Queue()
        for instance in instances:
            self._idle.put_nowait(instance)

    async def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], batch_size: int = 1
    ) -> dict[str, np.ndarray]:
        """Wait for an idle instance, then run one call on it in a worker thread.

        Shapes and dtypes are as for :meth:`backends.Backend.run`, whose errors pass through.
        ``batch_size`` (items in the call) is recorded in the batch size histogram; the wait for an
        instance and the run are recorded as queue and compute time, in seconds.
        """
        queued = time.perf_counter()
        instance = await self._idle.get()
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(instance.run, inputs, output_names)
        finally:
            self._idle.put_nowait(instance)
            if self._metrics is not None:
                self._metrics.queue_duration.observe(started - queued)
                self._metrics.compute_duration.observe(time.perf_counter() - started)
                self._metrics.batch_size.observe(batch_size)
