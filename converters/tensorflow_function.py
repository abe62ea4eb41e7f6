"""What the TensorFlow-side sources share: a TensorFlow function exported to ONNX with tf2onnx, or saved
as a SavedModel ``model.savedmodel/`` that the gateway's tensorflow backend serves.

Every TensorFlow-side source reduces its model to one *call*: input tensors in input spec order ->
output tensors in output name order (a Keras model through a temporary SavedModel export, see
:mod:`converters.keras_onnx`; a SavedModel signature, see :mod:`converters.saved_model_onnx`; a JAX
function through jax2tf, see :mod:`converters.jax_onnx`). That call is wrapped in a ``tf.function``
that takes the inputs positionally and returns a dict keyed by the output names, and

- :func:`convert_tf_function` converts it with ``tf2onnx.convert.from_function`` and finishes the
  graph: inputs and outputs named exactly as the specs and the output names, every dynamic dim named
  by its label (ONNX ``dim_param``), operators without an ONNX translation reported as a
  :class:`~converters.model.ConversionError`, and the model checked with ``onnx.checker``;
- :func:`write_saved_model` saves it as the one ``serving_default`` signature of a SavedModel, taking
  the inputs by spec name and returning a dict keyed by the output names, so the served model has the
  same names as the ONNX export would.

It also builds example inputs from declared shapes (:func:`examples_for_specs`), for sources that
bring none (``.keras`` files, SavedModels).

tensorflow and tf2onnx are imported lazily, inside the functions that need them: this module imports
with only numpy and onnx installed. tensorflow is imported through the gateway's tensorflow backend
(:func:`import_tensorflow`), so converters and server quiet TensorFlow's C++ logging alike
(``TF_CPP_MIN_LOG_LEVEL=2``, errors only, unless set). tf2onnx's log records are captured during a
conversion (and used in error messages) instead of being printed.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends import tensorflow_savedmodel as tensorflow_backend
from backends.base import ModelLoadError
from backends.tensorflow_savedmodel import ARTIFACT as SAVED_MODEL
from backends.tensorflow_savedmodel import DEFAULT_SIGNATURE
from converters.model import BATCH_LABEL, ConversionError, DynamicAxes, InputSpec
from converters.onnx_graph import label_output_dims, rename_values, set_dims, untranslated_ops

__all__ = [
    "EXAMPLE_AXIS_LENGTH",
    "EXAMPLE_BATCH_SIZE",
    "check_dynamic_axes",
    "convert_tf_function",
    "example_array",
    "examples_for_specs",
    "import_tensorflow",
    "tf_tensor_specs",
    "write_saved_model",
]

#: Batch size of the example inputs built from declared shapes (``.keras`` files, SavedModels).
EXAMPLE_BATCH_SIZE = 2
#: Length of the example inputs along dynamic non-batch axes built from declared shapes.
EXAMPLE_AXIS_LENGTH = 8

#: Names TensorFlow accepts for a placeholder (a ``tf.TensorSpec`` name); others are renamed in the graph.
_TF_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
_TF2ONNX_LOGGER = "tf2onnx"
#: ONNX's protobuf limit: a single-file model must serialize to less than 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 1


def _advice(opset: int | None) -> str:
    """What to try when a conversion fails."""
    used = f" (this export used opset {opset})" if opset is not None else ""
    return f"Try a newer tf2onnx{used}, or rewrite that part of the model with operations tf2onnx supports."


# --------------------------------------------------------------------------------------------------
# Lazy imports
# --------------------------------------------------------------------------------------------------


def import_tensorflow() -> Any:
    """Import tensorflow as the gateway's tensorflow backend does, with the converters' install advice.

    The import is :func:`backends.tensorflow_savedmodel.import_tensorflow`'s: TensorFlow's C++
    logging limited to errors (``TF_CPP_MIN_LOG_LEVEL=2`` unless set).

    Returns:
        The ``tensorflow`` module.

    Raises:
        ImportError: tensorflow cannot be imported (the message says what to install:
            ``pip install tensorflow-cpu tf2onnx``; the failed import is chained as its cause).
    """
    try:
        return tensorflow_backend.import_tensorflow()
    except ModelLoadError as error:
        # The backend raises its error "from None" inside the except block of the failed import: that
        # ImportError is its __context__. Chain it, not the backend's error and its install advice.
        raise ImportError(
            "TensorFlow/Keras sources need tensorflow and tf2onnx: pip install tensorflow-cpu tf2onnx"
        ) from (error.__context__ or error)


def _import_tf2onnx() -> Any:
    """Import tf2onnx (after tensorflow).

    Raises:
        ImportError: tf2onnx is not installed.
    """
    import_tensorflow()
    try:
        import tf2onnx
        import tf2onnx.constants
        import tf2onnx.convert
    except ImportError as error:
        raise ImportError("converting TensorFlow/Keras models to ONNX needs tf2onnx: pip install tf2onnx") from error
    return tf2onnx


class _RecordList(logging.Handler):
    """A logging handler that keeps the formatted messages of the records it gets."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's message."""
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a malformed record must not break the conversion
            self.messages.append(str(record.msg))


@contextlib.contextmanager
def _captured_tf2onnx_logs() -> Iterator[list[str]]:
    """Capture tf2onnx's WARNING-and-above log messages (instead of printing them) during the block.

    Yields the list the messages are appended to. The ``tf2onnx`` logger's level, propagation and
    handlers are restored afterwards. Like any change to a shared logger this is process-global.
    """
    logger = logging.getLogger(_TF2ONNX_LOGGER)
    handler = _RecordList(logging.WARNING)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


# --------------------------------------------------------------------------------------------------
# Example inputs from declared shapes
# --------------------------------------------------------------------------------------------------


def example_array(dtype: np.dtype[Any], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An example array of ``shape``: uniform [0, 1) for floats, zeros for integers and bools, ``b""`` for strings.

    Args:
        dtype: the element dtype; floats and integers keep it, strings (``bytes_``, ``str_``,
            ``object``) give an ``object`` array of ``b""``.
        shape: the full shape, e.g. ``(2, 64)``.
        rng: the generator the float values are drawn from.
    """
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    if dtype == np.dtype(object) or np.issubdtype(dtype, np.bytes_) or np.issubdtype(dtype, np.str_):
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=dtype)


def examples_for_specs(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """One example array per spec, by spec name, with the spec's dtype (values: :func:`example_array`).

    Fixed dims keep their size; the ``batch`` dim is :data:`EXAMPLE_BATCH_SIZE` long, other labelled
    dims :data:`EXAMPLE_AXIS_LENGTH` long (e.g. ``float32 [batch, 64]`` -> ``float32 [2, 64]``).

    Args:
        specs: the inputs.
        seed: seed of the generator of the float values (the same seed gives the same arrays).
    """
    rng = np.random.default_rng(seed)
    examples: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(
            dim if isinstance(dim, int) else EXAMPLE_BATCH_SIZE if dim == BATCH_LABEL else EXAMPLE_AXIS_LENGTH
            for dim in spec.dims
        )
        examples[spec.name] = example_array(spec.dtype, shape, rng)
    return examples


def check_dynamic_axes(dynamic_axes: DynamicAxes, shapes: Mapping[str, Sequence[int | None]]) -> None:
    """Check that ``dynamic_axes`` names known inputs and existing axes.

    Args:
        dynamic_axes: per input name, axis -> label.
        shapes: per input name, its declared shape (None for an undeclared dim); only the ranks count.

    Raises:
        ValueError: an unknown input name or an axis the input does not have.
    """
    unknown = sorted(set(dynamic_axes) - set(shapes))
    if unknown:
        raise ValueError(f"dynamic axes given for unknown inputs {unknown}; the inputs are {list(shapes)}")
    for name, axes in dynamic_axes.items():
        rank = len(shapes[name])
        bad = sorted(axis for axis in axes if not 0 <= axis < rank)
        if bad:
            raise ValueError(f"input {name!r} has {rank} dims; dynamic axes {bad} do not exist")


# --------------------------------------------------------------------------------------------------
# Conversion of a TensorFlow function and finishing of the ONNX graph
# --------------------------------------------------------------------------------------------------


def tf_tensor_specs(specs: Sequence[InputSpec]) -> list[Any]:
    """One ``tf.TensorSpec`` per input spec, in order: the spec's dtype, ``None`` for dynamic dims.

    A spec's name becomes the TensorSpec's name where TensorFlow accepts it as a placeholder name,
    else ``tf_input_<index>`` (:func:`convert_tf_function` renames the graph input back).

    Raises:
        ImportError: tensorflow is not installed.
    """
    tf = import_tensorflow()
    return [
        tf.TensorSpec(
            shape=[None if isinstance(dim, str) else dim for dim in spec.dims],
            dtype=tf.as_dtype(spec.dtype),
            name=spec.name if _TF_NAME.fullmatch(spec.name) else f"tf_input_{index}",
        )
        for index, spec in enumerate(specs)
    ]


def _finish_graph(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    output_names: Sequence[str],
    *,
    what: str,
    opset: int | None,
    log: Sequence[str],
) -> onnx.ModelProto:
    """Name, label and check the graph tf2onnx produced; see the module docstring.

    Raises:
        ConversionError: untranslated operators, unexpected graph inputs/outputs, a model over 2 GiB,
            or a model ``onnx.checker`` rejects.
    """
    untranslated = untranslated_ops(model.graph)
    if untranslated:
        failures = [line.splitlines()[0] for line in log if line.startswith("Failed to convert node")]
        detail = f" (tf2onnx: {'; '.join(failures[:3])})" if failures else ""
        ops = ", ".join(f"{op} ({count}x)" for op, count in sorted(untranslated.items()))
        raise ConversionError(
            f"cannot convert {what} to ONNX: TensorFlow op(s) without an ONNX translation in tf2onnx: {ops}"
            f"{detail}. {_advice(opset)}"
        )

    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(graph_inputs) != len(specs):
        raise ConversionError(
            f"cannot convert {what} to ONNX: the converted graph has inputs {[v.name for v in graph_inputs]}, "
            f"expected {[spec.name for spec in specs]}"
        )
    renames = {
        value.name: spec.name for value, spec in zip(graph_inputs, specs, strict=True) if value.name != spec.name
    }
    if renames:
        rename_values(model.graph, renames)
    for value, spec in zip(graph_inputs, specs, strict=True):
        set_dims(value, spec.dims)

    by_name = {value.name: value for value in model.graph.output}
    if sorted(by_name) != sorted(output_names):
        raise ConversionError(
            f"cannot convert {what} to ONNX: the converted graph has outputs {sorted(by_name)}, "
            f"expected {list(output_names)}"
        )
    ordered = [onnx.ValueInfoProto() for _ in output_names]
    for target, name in zip(ordered, output_names, strict=True):
        target.CopyFrom(by_name[name])
    del model.graph.output[:]
    model.graph.output.extend(ordered)
    # tf2onnx's intermediate shapes use its own symbols (unk__12); they are optional, so drop them.
    del model.graph.value_info[:]
    label_output_dims(model, specs)

    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise ConversionError(
            f"cannot convert {what} to ONNX: the model is {size / 2**30:.1f} GiB, over the 2 GiB limit of a "
            "single ONNX file."
        )
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # the checker raises ValidationError and others
        raise ConversionError(f"the ONNX model converted from {what} is invalid: {error}. {_advice(opset)}") from error
    return model


def _outputs_by_name(
    call: Callable[[list[Any]], list[Any]], output_names: Sequence[str], what: str
) -> Callable[..., dict[str, Any]]:
    """A function of the input tensors (positional, in spec order) returning ``call``'s outputs by name.

    Raises (when called):
        ConversionError: ``call`` returned another number of outputs.
    """

    def by_name(*tensors: Any) -> dict[str, Any]:
        outputs = call(list(tensors))
        if len(outputs) != len(output_names):
            raise ConversionError(f"{what} returned {len(outputs)} outputs, expected {len(output_names)}")
        return dict(zip(output_names, outputs, strict=True))

    return by_name


def convert_tf_function(
    call: Callable[[list[Any]], list[Any]],
    specs: Sequence[InputSpec],
    output_names: Sequence[str],
    *,
    what: str,
    opset: int | None,
) -> onnx.ModelProto:
    """Convert ``call`` (input tensors in spec order -> output tensors in ``output_names`` order) with tf2onnx.

    The graph is then finished (see the module docstring): inputs named and shaped as ``specs``
    (dynamic dims by their labels), outputs named and ordered as ``output_names``, output dims
    labelled (:func:`converters.onnx_graph.label_output_dims`), the model checked by ``onnx.checker``.

    Args:
        call: traceable by ``tf.function``; takes one tensor per input spec and returns one tensor
            per output name.
        specs: the inputs, in ``call``'s order.
        output_names: the outputs' names, in ``call``'s order.
        what: the model, for error messages (e.g. ``"the Keras model"``).
        opset: ONNX opset for tf2onnx (None: tf2onnx's preferred opset).

    Returns:
        The finished model, in memory (not saved).

    Raises:
        ImportError: tensorflow or tf2onnx is not installed.
        ConversionError: tracing or conversion fails, TensorFlow ops have no ONNX translation, the
            graph's inputs or outputs are not the expected ones, the model is over 2 GiB, or
            ``onnx.checker`` rejects it.
    """
    tf = import_tensorflow()
    tf2onnx = _import_tf2onnx()
    if opset is None:
        opset = int(tf2onnx.constants.PREFERRED_OPSET)
    tf_specs = tf_tensor_specs(specs)
    function = tf.function(_outputs_by_name(call, output_names, what), input_signature=tf_specs, autograph=False)
    with _captured_tf2onnx_logs() as log:
        try:
            model, _ = tf2onnx.convert.from_function(function, input_signature=tf_specs, opset=opset)
        except ConversionError:
            raise
        except Exception as error:  # tf2onnx and TF raise many types
            found = re.search(r"Unsupported ops: (.*)", "\n".join(log))
            cause = f" (tf2onnx: unsupported ops {found.group(1)})" if found else ""
            raise ConversionError(
                f"cannot convert {what} to ONNX: {type(error).__name__}: {error}{cause}. {_advice(opset)}"
            ) from error
    if not isinstance(model, onnx.ModelProto):
        raise ConversionError(f"cannot convert {what} to ONNX: tf2onnx returned no model. {_advice(opset)}")
    return _finish_graph(model, specs, output_names, what=what, opset=opset, log=log)


def write_saved_model(
    call: Callable[[list[Any]], list[Any]],
    specs: Sequence[InputSpec],
    output_names: Sequence[str],
    version_dir: Path,
    *,
    what: str,
    keep: Any = None,
) -> None:
    """Save ``call`` as the ``serving_default`` signature of ``version_dir/model.savedmodel/``.

    The signature takes one tensor per input spec, named as the spec (None along dynamic dims), and
    returns a dict keyed by ``output_names``.

    Args:
        call: input tensors in spec order -> output tensors in ``output_names`` order, traceable by
            ``tf.function``.
        specs: the inputs.
        output_names: the outputs' names.
        version_dir: the folder to write into (created if missing).
        what: the model, for error messages (e.g. ``"the Keras model"``).
        keep: an object whose variables the function uses (e.g. the Keras model), saved with it.

    Raises:
        ImportError: tensorflow is not installed.
        ConversionError: tracing or saving fails (the message names the cause).
    """
    tf = import_tensorflow()
    module = tf.Module()
    module.model = keep
    module.serve = tf.function(
        _outputs_by_name(call, output_names, what), input_signature=tf_tensor_specs(specs), autograph=False
    )
    version_dir.mkdir(parents=True, exist_ok=True)
    try:
        signature = module.serve.get_concrete_function()
        tf.saved_model.save(module, str(version_dir / SAVED_MODEL), signatures={DEFAULT_SIGNATURE: signature})
    except ConversionError:
        raise
    except Exception as error:  # TF raises many types
        raise ConversionError(f"cannot save {what} as a TF SavedModel: {type(error).__name__}: {error}") from error
