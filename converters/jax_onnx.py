"""A JAX function as a conversion source, exported to ONNX with jax2onnx, or natively to a SavedModel with jax2tf.

The function takes its inputs positionally (its parameters, e.g. trained weights, are closed over)
and returns one array or a tuple/list of arrays. It is exported with ``jax2onnx.to_onnx`` on
``jax.ShapeDtypeStruct`` inputs whose dynamic dims are JAX symbolic dims named after the labels (one
symbolic scope, so inputs sharing a label share the dim); the graph's inputs, outputs and dynamic
dims then carry the spec names and labels.

The native export converts the function with ``jax.experimental.jax2tf`` (the same symbolic dims,
lowered for CPU and CUDA) and saves it as the ``serving_default`` signature of a SavedModel, which the
gateway's tensorflow backend serves; the parameters closed over become constants of the graph.

jax, jax2onnx and tensorflow are imported lazily: this module imports with only numpy and onnx
installed. JAX runs on the CPU unless ``JAX_PLATFORMS`` says otherwise (it is set to ``cpu`` only
when unset).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converters.model import ConversionError, DynamicAxes, ExampleDescribedSource, InputSpec, parameter_names
from converters.onnx_graph import rename_dim_params, save_onnx, set_dims

__all__ = ["DEFAULT_OPSET", "JaxSource"]

#: ONNX opset of the export: 21 is the newest that onnxruntime 1.18 (the oldest the gateway supports) runs.
DEFAULT_OPSET = 21

#: Names JAX accepts for a symbolic dim; other labels use a stand-in during export and are renamed after.
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: jax2onnx's message for a primitive without a plugin: "No plugins registered for primitive 'cumsum'".
_NO_PLUGIN = re.compile(r"primitive '([^']+)'")
_ADVICE = "Try a newer jax2onnx, or rewrite that part with jax.numpy operations jax2onnx supports."


def _import_jax() -> Any:
    """Import jax, on the CPU unless ``JAX_PLATFORMS`` is set.

    Raises:
        ImportError: jax is not installed.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
    except ImportError as error:
        raise ImportError("JAX sources need jax and jax2onnx: pip install jax jax2onnx") from error
    return jax


def _error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes/contexts, outermost first, without repeats."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _conversion_error(error: Exception) -> ConversionError:
    """Turn a jax2onnx/JAX export failure into a :class:`ConversionError` naming the primitive if known."""
    chain = _error_chain(error)
    for link in chain:
        found = _NO_PLUGIN.search(str(link))
        if found and "No plugins registered" in str(link):
            return ConversionError(
                f"cannot convert the JAX function to ONNX: jax2onnx has no ONNX plugin for the JAX primitive "
                f"{found.group(1)!r}. {_ADVICE}"
            )
    for link in chain:
        if isinstance(link, NotImplementedError):
            return ConversionError(
                f"cannot convert the JAX function to ONNX: jax2onnx does not support this use of a JAX "
                f"operation: {link}. {_ADVICE}"
            )
    text = str(error)
    if "symbolic" in text.lower() or "dimension" in text.lower():
        return ConversionError(
            f"cannot convert the JAX function to ONNX with its dynamic dims: {type(error).__name__}: {text}. "
            f"The function must work for any size along the dynamic axes; declare fewer dynamic axes or fix "
            f"the function. {_ADVICE}"
        )
    return ConversionError(f"cannot convert the JAX function to ONNX: {type(error).__name__}: {text}. {_ADVICE}")


class JaxSource(ExampleDescribedSource):
    """A JAX callable (parameters closed over) exported with jax2onnx.

    Inputs are named after the function's positional parameters
    (:func:`~converters.model.parameter_names`, else ``input`` / ``input_<i>``) and described by the
    example arrays (:class:`~converters.model.ExampleDescribedSource`: dim 0 is ``batch``, other dims
    fixed unless ``dynamic_axes`` labels them). Outputs are the leaves of what the function returns
    (one array, or a tuple/list of arrays), named ``output`` or ``output_0, output_1, ...``.

    Args:
        function: takes one array per input positionally, returns an array or a tuple/list of arrays.
        example_inputs: one array per input, batch first, e.g. float32 ``[2, 64]``.
        dynamic_axes: per input name, axis -> label for dims other than the batch, e.g.
            ``{"x": {1: "sequence"}, "mask": {1: "sequence"}}``.
        opset: ONNX opset of the export (default :data:`DEFAULT_OPSET`).

    Raises:
        ValueError: bad examples or dynamic axes (see ``specs_from_examples``), or the function fails
            on the examples.
    """

    framework = "jax"
    native_backend = "tensorflow"

    def __init__(
        self,
        function: Callable[..., Any],
        example_inputs: Sequence[np.ndarray],
        dynamic_axes: DynamicAxes | None = None,
        *,
        opset: int = DEFAULT_OPSET,
    ) -> None:
        jax = _import_jax()
        self.function = function
        self.opset = opset
        super().__init__(
            example_inputs,
            dynamic_axes,
            input_names=lambda count: parameter_names(function, count),
            count_outputs=lambda arrays: len(jax.tree_util.tree_leaves(jax.eval_shape(function, *arrays))),
            what="the JAX function",
        )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the function on ``inputs`` as JAX arrays; return numpy outputs by name."""
        jax = _import_jax()
        arrays = [jax.numpy.asarray(np.asarray(inputs[spec.name], dtype=spec.dtype)) for spec in self.input_specs]
        leaves = jax.tree_util.tree_leaves(self.function(*arrays))
        return {name: np.asarray(leaf) for name, leaf in zip(self._output_names, leaves, strict=True)}

    def export_onnx(self, path: Path) -> None:
        """Export with ``jax2onnx.to_onnx`` and write ``path`` atomically (one self-contained file).

        Dynamic dims are JAX symbolic dims named by their labels, so the graph's ``dim_param`` are
        the labels (``batch``, ``sequence``...) on inputs and, where jax2onnx can tell, on outputs.

        Raises:
            ConversionError: jax2onnx cannot convert the function (the message names the primitive
                without a plugin when that is the cause), or the result is not a valid ONNX model.
        """
        jax = _import_jax()
        from jax import export as jax_export

        try:
            from jax2onnx import to_onnx
        except ImportError as error:
            raise ImportError("converting JAX functions to ONNX needs jax2onnx: pip install jax2onnx") from error

        symbols = self._symbols()
        scope = jax_export.SymbolicScope()
        structs = [
            jax.ShapeDtypeStruct(jax_export.symbolic_shape(_shape_text(spec, symbols), scope=scope), spec.dtype)
            for spec in self.input_specs
        ]
        double = any(spec.dtype == np.float64 for spec in self.input_specs)
        try:
            model = to_onnx(
                self.function,
                structs,
                model_name="jax_model",
                opset=self.opset,
                enable_double_precision=double,
                input_names=[spec.name for spec in self.input_specs],
                output_names=self._output_names,
            )
        except Exception as error:  # jax2onnx and jax.export raise many types
            raise _conversion_error(error) from error
        if not isinstance(model, onnx.ModelProto):
            raise ConversionError("cannot convert the JAX function to ONNX: jax2onnx returned no ONNX model")

        rename_dim_params(model, {symbol: label for label, symbol in symbols.items() if symbol != label})
        initializers = {init.name for init in model.graph.initializer}
        graph_inputs = [value for value in model.graph.input if value.name not in initializers]
        got_inputs = [value.name for value in graph_inputs]
        got_outputs = [value.name for value in model.graph.output]
        if got_inputs != [spec.name for spec in self.input_specs] or got_outputs != self._output_names:
            raise ConversionError(
                f"cannot convert the JAX function to ONNX: the graph has inputs {got_inputs} and outputs "
                f"{got_outputs}, expected {[spec.name for spec in self.input_specs]} and {self._output_names}"
            )
        for value, spec in zip(graph_inputs, self.input_specs, strict=True):
            set_dims(value, spec.dims)
        try:
            onnx.checker.check_model(model)
        except Exception as error:  # the checker raises ValidationError and others
            raise ConversionError(f"the ONNX model converted from the JAX function is invalid: {error}") from error
        save_onnx(model, Path(path))

    def export_native(self, version_dir: Path) -> None:
        """Convert with ``jax2tf.convert`` (shape-polymorphic along the labelled dims, lowered for CPU
        and CUDA, without gradients) and save as ``version_dir/model.savedmodel/`` (see
        :func:`converters.tensorflow_function.write_saved_model`).

        Raises:
            ImportError: tensorflow is not installed.
            ConversionError: jax2tf cannot convert the function, or saving fails.
        """
        jax = _import_jax()
        from converters.tensorflow_function import write_saved_model

        try:
            from jax.experimental import jax2tf
        except ImportError as error:
            raise ImportError("serving a JAX function natively needs tensorflow: pip install tensorflow-cpu") from error

        symbols = self._symbols()
        converted = jax2tf.convert(
            self.function,
            polymorphic_shapes=[f"({_shape_text(spec, symbols)})" for spec in self.input_specs],
            native_serialization_platforms=("cpu", "cuda"),
            with_gradient=False,  # served for inference only; a custom gradient would warn at every load
        )

        def call(tensors: list[Any]) -> list[Any]:
            try:
                return list(jax.tree_util.tree_leaves(converted(*tensors)))
            except Exception as error:  # jax2tf raises many types while tracing
                raise ConversionError(
                    f"cannot convert the JAX function with jax2tf: {type(error).__name__}: {error}. "
                    "The function must work for any size along the dynamic axes; declare fewer dynamic axes "
                    "or fix the function."
                ) from error

        write_saved_model(call, self.input_specs, self._output_names, version_dir, what="the JAX function")

    def _symbols(self) -> dict[str, str]:
        """Per dynamic label of the input specs, the JAX symbol that stands for it in symbolic shapes."""
        labels = sorted({dim for spec in self.input_specs for dim in spec.dims if isinstance(dim, str)})
        return {
            label: label if _SYMBOL.fullmatch(label) else f"dynamic_dim_{index}" for index, label in enumerate(labels)
        }


def _shape_text(spec: InputSpec, symbols: Mapping[str, str]) -> str:
    """The spec's dims as JAX symbolic shape text, e.g. ``batch, sequence, 4``."""
    return ", ".join(symbols[dim] if isinstance(dim, str) else str(dim) for dim in spec.dims)
