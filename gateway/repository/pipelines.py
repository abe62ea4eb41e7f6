"""Pipelines (Triton's ensembles): a model whose config declares steps of other models, checked at load.

A pipeline's config lists its own ``inputs`` and ``outputs`` and its ``pipeline.steps`` (see
:class:`gateway.repository.config.PipelineConfig`). At load the graph is checked and put in the
order the steps run (:func:`plan_pipeline`); the core runs it (:mod:`gateway.core.pipeline`). A
load error names what is wrong: a tensor nothing produces, an output produced twice, a step whose
model is not in the repository, a cycle between steps (a step needing what a later one produces)
or between pipelines (a pipeline that is, through its steps, a step of itself).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.repository.config import ModelConfig, ModelConfigError, PipelineStep

#: The platform name of a pipeline in metadata (Triton's, for an ensemble).
PIPELINE_PLATFORM = "ensemble"


def plan_pipeline(
    name: str, config: ModelConfig, step_config: Callable[[str], ModelConfig | None]
) -> tuple[PipelineStep, ...]:
    """Check a pipeline's graph and return its steps in an order in which each step's inputs are ready.

    Args:
        name: the pipeline model's name.
        config: its config (``pipeline`` set).
        step_config: the config of a model of the repository by name, or None when there is no such
            model (it may raise ModelConfigError for a model whose config is invalid).

    Raises:
        ModelConfigError: the message names the step (``step 2 (model 'x')``) and what is wrong.
    """
    assert config.pipeline is not None
    steps = config.pipeline.steps
    produced: dict[str, str] = {tensor.name: "the pipeline's inputs" for tensor in config.inputs}
    for index, step in enumerate(steps):
        where = _step(index, step)
        if step.model_name == name:
            raise ModelConfigError(f"pipeline cycle: {where} is the pipeline itself")
        try:
            model = step_config(step.model_name)
        except ModelConfigError as error:
            raise ModelConfigError(f"{where}: the model's config is invalid: {error}") from None
        if model is None:
            raise ModelConfigError(f"{where}: there is no model '{step.model_name}' in the repository")
        _check_no_cycle(name, [name, step.model_name], model, step_config)
        for tensor in step.output_map.values():
            if tensor in produced:
                raise ModelConfigError(f"{where}: tensor '{tensor}' is produced already by {produced[tensor]}")
            produced[tensor] = where
    for output in config.outputs:
        if output.name not in produced:
            raise ModelConfigError(f"output '{output.name}' of the pipeline is produced by no step")
    return _in_dependency_order(steps, {tensor.name for tensor in config.inputs}, produced)


def _in_dependency_order(
    steps: list[PipelineStep], inputs: set[str], produced: dict[str, str]
) -> tuple[PipelineStep, ...]:
    """The steps in an order where each one's inputs come from the pipeline's inputs or earlier steps."""
    ready = set(inputs)
    ordered: list[PipelineStep] = []
    waiting = list(enumerate(steps))
    while waiting:
        runnable = [(index, step) for index, step in waiting if set(step.input_map.values()) <= ready]
        if not runnable:
            for index, step in waiting:
                missing = sorted(set(step.input_map.values()) - ready - set(produced))
                if missing:
                    raise ModelConfigError(
                        f"{_step(index, step)}: input tensor {', '.join(repr(t) for t in missing)} is produced by "
                        "no step and is not an input of the pipeline"
                    )
            cycle = ", ".join(_step(index, step) for index, step in waiting)
            raise ModelConfigError(f"pipeline cycle: {cycle} each need a tensor another of them produces")
        for index, step in runnable:
            ordered.append(step)
            ready |= set(step.output_map.values())
            waiting.remove((index, step))
    return tuple(ordered)


def _check_no_cycle(
    name: str, path: list[str], model: ModelConfig, step_config: Callable[[str], ModelConfig | None]
) -> None:
    """Follow the steps of pipeline ``model`` (reached through ``path``) back to ``name``: a cycle is an error."""
    if model.pipeline is None:
        return
    for step in model.pipeline.steps:
        if step.model_name == name:
            raise ModelConfigError(f"pipeline cycle: {' -> '.join([*path, name])}")
        if step.model_name in path:
            continue  # a cycle that does not go through this pipeline: that pipeline's own load error
        try:
            inner = step_config(step.model_name)
        except ModelConfigError:
            continue  # that model's own load error
        if inner is not None:
            _check_no_cycle(name, [*path, step.model_name], inner, step_config)


def _step(index: int, step: PipelineStep) -> str:
    return f"step {index + 1} (model '{step.model_name}')"
