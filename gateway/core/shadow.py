"""Shadow traffic: a copy of a fraction of the routed requests, sent to a candidate version and compared.

The model's traffic policy may name a shadow label (:class:`gateway.repository.config.ShadowConfig`).
Once the primary version has answered a request that the policy routed (one naming no version),
:meth:`ShadowCopies.copy` sends a copy of its inputs to the candidate with probability ``fraction``,
in a task of its own: the client's answer is already encoded and on its way, so the copy adds no
latency to it beyond the copy's scheduling, and whatever happens to the copy (a failure, a slow
answer) never reaches the client. At most ``max_inflight`` copies of one model run at once; a copy
finding them all busy is skipped, so a slow candidate costs a bounded amount of work.

The candidate's outputs are compared with the primary's (``allclose`` or ``argmax``) and the
outcome counted in ``gateway_shadow_requests{model, version, outcome}`` (agree, disagree, error,
skipped), its time in ``gateway_shadow_duration_seconds`` (see :mod:`gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import numpy as np

from gateway.core.checks import check_inputs
from gateway.core.pipeline import run_version
from gateway.core.types import InferRequest, InferResponse
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.repository.config import ShadowConfig
from gateway.repository.model_repository import LoadedVersion, ModelRepository

logger = logging.getLogger(__name__)


class ShadowCopies:
    """The shadow copies of one process: started, bounded per model, compared and counted.

    Args:
        repository: where the candidate's loaded version is found.
        metrics: where the outcomes and times are counted.
    """

    def __init__(self, repository: ModelRepository, metrics: Metrics) -> None:
        self._repository = repository
        self._metrics = metrics
        self._running: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(self, shadow: ShadowConfig, primary: LoadedVersion, request: InferRequest, answer: InferResponse) -> None:
        """Maybe (``shadow.fraction``) send a copy of ``request`` to the candidate, in the background.

        Nothing is raised: a candidate that is missing, busy or failing is counted, never reported.
        """
        if shadow.fraction < 1 and random.random() >= shadow.fraction:
            return
        name = primary.name
        try:
            candidate = self._repository.get(name, None, shadow.label)
        except GatewayError as error:
            self._metrics.shadow_requests.labels(name, "", "error").inc()
            logger.debug("shadow copy of model %s not sent: %s", name, error.message)
            return
        if candidate.version == primary.version:
            return  # the candidate answered already: nothing to compare
        version = str(candidate.version)
        if self._running.get(name, 0) >= shadow.max_inflight:
            self._metrics.shadow_requests.labels(name, version, "skipped").inc()
            return
        self._running[name] = self._running.get(name, 0) + 1
        expected = {tensor.name: tensor.data for tensor in answer.outputs}
        task = asyncio.get_running_loop().create_task(self._run(shadow, candidate, request, expected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, shadow: ShadowConfig, candidate: LoadedVersion, request: InferRequest, expected: dict[str, np.ndarray]
    ) -> None:
        version = str(candidate.version)
        started = time.perf_counter()
        try:
            feeds = check_inputs(candidate, request.inputs)
            outputs = await run_version(self._repository, candidate, feeds, list(expected))
            outcome = "agree" if agree(shadow, expected, outputs) else "disagree"
        except Exception as error:  # the candidate's failures are counted, never raised
            outcome = "error"
            logger.info("shadow copy on model %s version %s failed: %s", candidate.name, version, error)
        finally:
            self._running[candidate.name] -= 1
        self._metrics.shadow_duration.labels(candidate.name, version).observe(time.perf_counter() - started)
        self._metrics.shadow_requests.labels(candidate.name, version, outcome).inc()


def agree(shadow: ShadowConfig, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> bool:
    """Whether the candidate's outputs ``actual`` agree with the primary's ``expected`` as ``shadow.compare`` says.

    ``allclose``: every output of the same shape, within ``atol + rtol * |expected|`` (numeric
    outputs; other datatypes must be equal). ``argmax``: the same argmax along the last axis.
    """
    for name, primary in expected.items():
        candidate = actual.get(name)
        if candidate is None or candidate.shape != primary.shape:
            return False
        if shadow.compare == "argmax":
            if primary.ndim and not np.array_equal(np.argmax(primary, axis=-1), np.argmax(candidate, axis=-1)):
                return False
        elif primary.dtype.kind in "fiub" and candidate.dtype.kind in "fiub":
            if not np.allclose(candidate, primary, rtol=shadow.rtol, atol=shadow.atol):
                return False
        elif not np.array_equal(candidate, primary):
            return False
    return True
