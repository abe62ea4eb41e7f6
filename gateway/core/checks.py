"""Checks of a request's tensors against a loaded version: inputs (names, datatypes, shapes, batch) and outputs.

The one place these rules live: :class:`gateway.core.dataplane.DataPlane` checks a request with
them, the pipeline runner (:mod:`gateway.core.pipeline`) each step's tensors, the shadow copies
(:mod:`gateway.core.shadow`) the candidate's.
"""

from __future__ import annotations

import numpy as np

from gateway.core.types import InferTensor, RequestedOutput
from gateway.errors import InvalidArgumentError
from gateway.repository.model_repository import LoadedVersion


def check_inputs(loaded: LoadedVersion, inputs: list[InferTensor]) -> dict[str, np.ndarray]:
    """The inputs as arrays by name, once each matches the version's signature (datatype, shape, batch size).

    Raises:
        InvalidArgumentError: a missing, unknown or repeated input; a datatype or shape that does not
            match; a batch over max_batch_size; inputs disagreeing on the batch size.
    """
    feeds: dict[str, np.ndarray] = {}
    batch_sizes: set[int] = set()
    for tensor in inputs:
        signature = loaded.inputs.get(tensor.name)
        if signature is None:
            raise InvalidArgumentError(
                f"unknown input '{tensor.name}' for model '{loaded.name}'; {_expected_inputs(loaded)}"
            )
        if tensor.name in feeds:
            raise InvalidArgumentError(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != signature.datatype:
            raise InvalidArgumentError(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match the model's {signature.datatype}"
            )
        shape = tuple(tensor.shape)
        if len(shape) != len(signature.shape) or any(
            expected not in (-1, actual) for expected, actual in zip(signature.shape, shape, strict=True)
        ):
            raise InvalidArgumentError(
                f"input '{tensor.name}': shape {list(shape)} does not match the model's "
                f"{list(signature.shape)} (-1: any size)"
            )
        if loaded.max_batch_size > 0:
            if shape[0] > loaded.max_batch_size:
                raise InvalidArgumentError(
                    f"input '{tensor.name}': batch size {shape[0]} exceeds the model's "
                    f"max_batch_size {loaded.max_batch_size}"
                )
            batch_sizes.add(shape[0])
        feeds[tensor.name] = tensor.data
    missing = [name for name in loaded.inputs if name not in feeds]
    if missing:
        raise InvalidArgumentError(f"missing input {', '.join(repr(n) for n in missing)}; {_expected_inputs(loaded)}")
    if len(batch_sizes) > 1:
        raise InvalidArgumentError(f"inputs disagree on the batch size (first dim): {sorted(batch_sizes)}")
    return feeds


def check_outputs(loaded: LoadedVersion, requested: list[RequestedOutput]) -> list[str]:
    """The names of the outputs to return: those requested (each once), or every output of the version.

    Raises:
        InvalidArgumentError: an output the version does not have.
    """
    if not requested:
        return list(loaded.outputs)
    names: list[str] = []
    for output in requested:
        if output.name not in loaded.outputs:
            raise InvalidArgumentError(
                f"unknown output '{output.name}' for model '{loaded.name}'; it has {', '.join(loaded.outputs)}"
            )
        if output.name not in names:
            names.append(output.name)
    return names


def _expected_inputs(loaded: LoadedVersion) -> str:
    described = ", ".join(
        f"'{name}' ({signature.datatype} {list(signature.shape)})" for name, signature in loaded.inputs.items()
    )
    return f"the model expects {described}"
