"""What every framework source offers the conversion pipeline, and the input specs it is described by.

A :class:`SourceModel` wraps one model of one framework (a torch module, a Keras model, a
SavedModel signature, a JAX callable, an ONNX file) together with the named, typed description of
its inputs. The pipeline (:mod:`converters.pipeline`) asks it to export itself to ONNX and to run
itself as the reference for the parity check; it never touches the framework directly.

Dimensions are ``int`` when fixed and a ``str`` label when dynamic (``"batch"``, ``"sequence"``):
inputs whose dims carry the same label must have the same length there, and the exported ONNX graph
names that dim with the label (an ONNX ``dim_param``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import default_output_names

__all__ = [
    "BATCH_LABEL",
    "ConversionError",
    "Dim",
    "DynamicAxes",
    "ExampleDescribedSource",
    "InputSpec",
    "SourceModel",
    "default_output_names",
    "parameter_names",
    "specs_from_examples",
]

#: Label of the batch dimension (dim 0 of every input unless told otherwise).
BATCH_LABEL = "batch"

Dim = int | str
#: Per input name, dynamic axis -> label, e.g. ``{"input_ids": {0: "batch", 1: "sequence"}}``.
DynamicAxes = Mapping[str, Mapping[int, str]]


class ConversionError(Exception):
    """The model cannot be exported or converted; the message names the cause (e.g. the operator
    without an ONNX translation) and what to try next."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """Name, element dtype and dims of one model input.

    Attributes:
        name: the input's name; also its name in the exported graph and in requests.
        dtype: numpy element dtype, e.g. ``float32`` or ``int64``.
        dims: one entry per dimension: an ``int`` for a fixed size, a ``str`` label for a dynamic
            one (e.g. ``("batch", 64)`` or ``("batch", "sequence")``).
    """

    name: str
    dtype: np.dtype[Any]
    dims: tuple[Dim, ...]

    def dynamic_axes(self) -> dict[int, str]:
        """The dynamic axes of this input: axis -> label."""
        return {axis: dim for axis, dim in enumerate(self.dims) if isinstance(dim, str)}

    def describe(self) -> str:
        """E.g. ``input_ids int64 [batch, sequence]``."""
        return f"{self.name} {self.dtype} [{', '.join(str(d) for d in self.dims)}]"


class SourceModel(ABC):
    """A framework model ready to convert: its inputs, its outputs, its exports and a reference run.

    Attributes:
        framework: ``torch``, ``tensorflow``, ``keras``, ``jax`` or ``onnx``.
        native_backend: the gateway backend that serves :meth:`export_native`'s artifact
            (``torch``, ``tensorflow``, or ``onnxruntime`` for an ONNX file).
        input_specs: the model's inputs, in the order the model takes them.
        example_inputs: arrays the model was described with (one per input spec, by name), or None
            when the source carries no examples (e.g. a TorchScript file with ``--input-spec``).
    """

    framework: str
    native_backend: str
    input_specs: list[InputSpec]
    example_inputs: dict[str, np.ndarray] | None

    @property
    @abstractmethod
    def output_names(self) -> list[str]:
        """Names of the outputs, in order: the names :meth:`run` returns and the exported graph uses."""

    @property
    def has_reference(self) -> bool:
        """Whether :meth:`run` can run the original model (False for an ONNX file taken as it is)."""
        return True

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the original model in its framework (the parity reference).

        Args:
            inputs: one array per input spec, by name, with the spec's dtype and a shape matching
                its dims (any size along dynamic dims).

        Returns:
            One numpy array per output name, in :attr:`output_names` order.
        """

    @abstractmethod
    def export_onnx(self, path: Path) -> None:
        """Write the model as one self-contained ONNX file at ``path``.

        The graph's inputs are named and ordered as :attr:`input_specs`, its outputs as
        :attr:`output_names`; every dynamic dim of the specs is symbolic in the graph.

        Raises:
            ConversionError: the model cannot be converted; the message names what failed (e.g.
                the operator) and what to try next.
        """

    @abstractmethod
    def export_native(self, version_dir: Path) -> None:
        """Write the model into ``version_dir`` in its own framework's format, for :attr:`native_backend`.

        The artifact is the one the backend serves (``model.pt2``: a torch.export ExportedProgram;
        ``model.savedmodel/``: a SavedModel whose ``serving_default`` signature takes the inputs by
        spec name and returns the outputs by :attr:`output_names`), with every dynamic dim of the
        specs left dynamic.

        Raises:
            ConversionError: the model cannot be exported; the message names what failed and what
                to try next.
        """


class ExampleDescribedSource(SourceModel):
    """A source described by example arrays and by one call of the model on them (a Keras model, a JAX function).

    The constructor names the inputs (``input_names``), describes them by the example arrays
    (:func:`specs_from_examples`: dim 0 is ``batch``, other dims fixed unless ``dynamic_axes`` labels
    them), keeps the arrays as :attr:`example_inputs`, and runs the model once on them
    (``count_outputs``) to count its outputs, which are named ``output`` or ``output_0, output_1,
    ...`` (:func:`default_output_names`). Subclasses set what ``count_outputs`` needs (the model)
    before calling it.

    Args:
        example_inputs: one array (or array-like) per input, in the model's order, batch first, e.g.
            float32 ``[2, 64]``.
        dynamic_axes: per input name, axis -> label for dims other than the batch.
        input_names: given the number of inputs, their names (e.g. the function's parameter names).
        count_outputs: runs the model on the example arrays (in input order) and returns how many
            outputs it gives.
        what: the model, for error messages (e.g. ``"the Keras model"``).

    Raises:
        ValueError: bad examples or dynamic axes (see :func:`specs_from_examples`), or the model fails
            on the examples (the message names the inputs' dtypes and dims).
    """

    def __init__(
        self,
        example_inputs: Sequence[np.ndarray],
        dynamic_axes: DynamicAxes | None,
        *,
        input_names: Callable[[int], list[str]],
        count_outputs: Callable[[list[np.ndarray]], int],
        what: str,
    ) -> None:
        arrays = [np.asarray(array) for array in example_inputs]
        names = input_names(len(arrays))
        self.input_specs = specs_from_examples(names, arrays, dynamic_axes)
        self.example_inputs = dict(zip(names, arrays, strict=True))
        try:
            count = count_outputs(arrays)
        except Exception as error:  # any framework error on the examples
            raise ValueError(
                f"{what} fails on the example inputs ({', '.join(spec.describe() for spec in self.input_specs)}): "
                f"{error}"
            ) from error
        self._output_names = default_output_names(count)

    @property
    def output_names(self) -> list[str]:
        """``output`` for one output, else ``output_0, output_1, ...``."""
        return list(self._output_names)


def specs_from_examples(
    names: Sequence[str], arrays: Sequence[np.ndarray], dynamic_axes: DynamicAxes | None = None
) -> list[InputSpec]:
    """Describe inputs by example arrays: dim 0 is ``"batch"``, other dims fixed unless ``dynamic_axes`` labels them.

    Args:
        names: one name per example array.
        arrays: example arrays, batch first, e.g. ``float32 [2, 64]``.
        dynamic_axes: per input name, axis -> label; labels given for axis 0 replace ``"batch"``.

    Raises:
        ValueError: names and arrays differ in number, names repeat, an array is a scalar, or
            ``dynamic_axes`` names an unknown input or an axis the array does not have.
    """
    if len(names) != len(arrays):
        raise ValueError(f"got {len(names)} input names for {len(arrays)} example inputs: {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"input names must be unique, got {list(names)}")
    dynamic_axes = dynamic_axes or {}
    unknown = sorted(set(dynamic_axes) - set(names))
    if unknown:
        raise ValueError(f"dynamic axes given for unknown inputs {unknown}; the inputs are {list(names)}")
    specs: list[InputSpec] = []
    for name, array in zip(names, arrays, strict=True):
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(f"example input {name!r} is a scalar; inputs need a batch dimension (dim 0)")
        labels = {0: BATCH_LABEL, **dynamic_axes.get(name, {})}
        bad_axes = sorted(axis for axis in labels if not 0 <= axis < array.ndim)
        if bad_axes:
            raise ValueError(f"input {name!r} has {array.ndim} dims; dynamic axes {bad_axes} do not exist")
        dims = tuple(labels.get(axis, size) for axis, size in enumerate(array.shape))
        specs.append(InputSpec(name, array.dtype, dims))
    return specs


def parameter_names(function: Callable[..., Any], count: int, *, skip_self: bool = False) -> list[str]:
    """Names for ``count`` positional inputs of ``function``: its parameter names, else ``input_0``...

    Falls back to ``input_0, input_1, ...`` when the signature cannot be read or has fewer than
    ``count`` named positional parameters (e.g. ``*args``).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    if skip_self and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    positional = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= count:
        return positional[:count]
    return [f"input_{index}" for index in range(count)] if count > 1 else ["input"]
