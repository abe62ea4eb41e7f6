"""Running a pipeline (Triton's ensemble): its steps, in process, each through its own model's scheduler.

A pipeline's loaded version holds its steps in dependency order (checked at load by
:mod:`gateway.repository.pipelines`). A request's checked inputs become the first pipeline tensors;
each step takes the tensors its ``input_map`` names as its model's inputs (numpy arrays, passed as
they are: no encoding between steps), is checked against that model's loaded version like a
request, is queued on that version's scheduler (so it is batched with the model's other requests
by its own dynamic batching), and adds its outputs under the names of its ``output_map``. A step
whose model is itself a pipeline runs that pipeline. Errors name the pipeline and the failing step.
"""

from __future__ import annotations

import logging

import numpy as np

from backends import InferenceInputError
from gateway.core.checks import check_inputs, check_outputs
from gateway.core.types import InferTensor, RequestedOutput
from gateway.datatypes import v2_datatype
from gateway.errors import GatewayError, InternalError, InvalidArgumentError
from gateway.repository.config import PipelineStep
from gateway.repository.model_repository import LoadedVersion, ModelRepository
from gateway.runtime.scheduler import Disconnected

logger = logging.getLogger(__name__)


async def run_version(
    repository: ModelRepository,
    loaded: LoadedVersion,
    feeds: dict[str, np.ndarray],
    output_names: list[str],
    deadline: float | None = None,
    disconnected: Disconnected | None = None,
    queued_since: float | None = None,
) -> dict[str, np.ndarray]:
    """Run checked inputs on a loaded version: its scheduler, or its steps for a pipeline.

    While it runs, the version counts as busy for the memory budget (never evicted) and becomes its
    most recently used version.

    Args:
        repository: where a pipeline's step models are looked up (their loaded versions now).
        loaded: the version; ``feeds`` and ``output_names`` were checked against it.
        feeds: input name -> array of the version's datatype and shape.
        output_names: the outputs to return.
        deadline, disconnected: as :meth:`gateway.runtime.scheduler.Scheduler.run`, for every step.
        queued_since: as :meth:`Scheduler.run` (when the request began to wait for the version to load).

    Returns:
        Output name -> array.

    Raises:
        InvalidArgumentError: the backend (of a step) rejected the inputs; for a step, the tensors
            do not fit the step's model (the message names the pipeline and the step).
        NotFoundError, UnavailableError: a step's model does not serve (named too).
        DeadlineExceededError, asyncio.CancelledError: as :meth:`Scheduler.run`.
        InternalError: the backend failed on a request that passed every check.
    """
    if loaded.steps:
        return await _run_pipeline(repository, loaded, feeds, output_names, deadline, disconnected)
    assert loaded.scheduler is not None
    budget = repository.budget
    budget.enter(loaded.usage)
    try:
        batch_size = next(iter(feeds.values())).shape[0] if loaded.max_batch_size > 0 and feeds else 1
        return await loaded.scheduler.run(feeds, output_names, batch_size, deadline, disconnected, queued_since)
    except InferenceInputError as error:
        raise InvalidArgumentError(f"model '{loaded.name}' rejected the inputs: {error}") from None
    except GatewayError:  # e.g. the queue is full, or the deadline passed
        raise
    except Exception as error:
        logger.exception("model %s version %d failed on a valid request", loaded.name, loaded.version)
        raise InternalError(f"model '{loaded.name}' failed: {error}") from error
    finally:
        budget.leave(loaded.usage)


async def _run_pipeline(
    repository: ModelRepository,
    pipeline: LoadedVersion,
    feeds: dict[str, np.ndarray],
    output_names: list[str],
    deadline: float | None,
    disconnected: Disconnected | None,
) -> dict[str, np.ndarray]:
    tensors = dict(feeds)
    for step in pipeline.steps:
        try:
            results = await _run_step(repository, step, tensors, deadline, disconnected)
        except GatewayError as error:
            raise type(error)(f"pipeline '{pipeline.name}' {_where(pipeline, step)}: {error.message}") from None
        for output, tensor in step.output_map.items():
            tensors[tensor] = results[output]
    return {name: tensors[name] for name in output_names}


async def _run_step(
    repository: ModelRepository,
    step: PipelineStep,
    tensors: dict[str, np.ndarray],
    deadline: float | None,
    disconnected: Disconnected | None,
) -> dict[str, np.ndarray]:
    """One step: its model's version now (loaded again first if the memory budget evicted it), the tensors
    checked against it, run."""
    version = None if step.model_version < 0 else str(step.model_version)
    queued_since = await repository.load_for_request(step.model_name, version, deadline=deadline)
    model = repository.get(step.model_name, version)
    inputs = [
        InferTensor(name, v2_datatype(tensors[tensor].dtype), list(tensors[tensor].shape), tensors[tensor])
        for name, tensor in step.input_map.items()
    ]
    step_feeds = check_inputs(model, inputs)
    output_names = check_outputs(model, [RequestedOutput(name) for name in step.output_map])
    return await run_version(repository, model, step_feeds, output_names, deadline, disconnected, queued_since)


def _where(pipeline: LoadedVersion, step: PipelineStep) -> str:
    """``step N (model 'm')``, N counted in the config's order."""
    steps = pipeline.config.pipeline.steps if pipeline.config.pipeline is not None else list(pipeline.steps)
    return f"step {steps.index(step) + 1} (model '{step.model_name}')"
