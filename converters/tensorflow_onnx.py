"""Keras models, ``.keras`` files and TensorFlow SavedModels as conversion sources, exported with tf2onnx
or, natively, to a SavedModel ``model.savedmodel/`` that the gateway's tensorflow backend serves.

Both sources convert a TensorFlow function: a Keras model is first exported to a temporary SavedModel
(``model.export(..., format="tf_saved_model")``, so Keras 3 models work: tf2onnx's own ``from_keras``
does not support them), a SavedModel is converted through one of its signatures. The function is
wrapped in a ``tf.function`` that takes the inputs positionally (in input spec order) and returns a
dict keyed by the output names, and that wrapper goes through ``tf2onnx.convert.from_function``.
The resulting graph is then finished here: inputs and outputs named exactly as the specs and
:attr:`~converters.model.SourceModel.output_names`, every dynamic dim named by its label (ONNX
``dim_param``), operators without an ONNX translation reported as a
:class:`~converters.model.ConversionError`, and the model checked with ``onnx.checker``.

tensorflow, keras and tf2onnx are imported lazily, inside the functions that need them: this module
imports with only numpy and onnx installed. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 (errors only) to
quiet TensorFlow's C++ logging, and tf2onnx's log records are captured during a conversion (and used
in error messages) instead of being printed.

A native export (:func:`write_saved_model`, also used for JAX through jax2tf) saves one
``serving_default`` signature that takes the inputs by spec name and returns a dict keyed by the
output names, so the served model has the same names as the ONNX export would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends.tensorflow_savedmodel import ARTIFACT as SAVED_MODEL
from backends.tensorflow_savedmodel import DEFAULT_SIGNATURE
from converters.model import (
    BATCH_LABEL,
    ConversionError,
    Dim,
    DynamicAxes,
    InputSpec,
    SourceModel,
    default_output_names,
    specs_from_examples,
)
from converters.onnx_graph import graph_dims, save_onnx, set_dims

__all__ = [
    "EXAMPLE_AXIS_LENGTH",
    "EXAMPLE_BATCH_SIZE",
    "KerasSource",
    "SavedModelSource",
    "load_keras_file",
    "load_saved_model",
    "write_saved_model",
]

#: Batch size of the example inputs built from declared shapes (``.keras`` files, SavedModels).
EXAMPLE_BATCH_SIZE = 2
#: Length of the example inputs along dynamic non-batch axes built from declared shapes.
EXAMPLE_AXIS_LENGTH = 8

#: Names TensorFlow accepts for a placeholder (a ``tf.TensorSpec`` name); others are renamed in the graph.
_TF_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
#: Operator domains whose operators must have an ONNX schema (anything else came through untranslated).
_STANDARD_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}
_TF2ONNX_LOGGER = "tf2onnx"
#: The name Keras gives an unnamed symbolic input.
_KERAS_AUTO_NAME = re.compile(r"(keras_tensor|input_layer)(_\d+)?")
#: ONNX's protobuf limit: a single-file model must serialize to less than 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 1


def _advice(opset: int | None) -> str:
    """What to try when a conversion fails."""
    used = f" (this export used opset {opset})" if opset is not None else ""
    return f"Try a newer tf2onnx{used}, or rewrite that part of the model with operations tf2onnx supports."


# --------------------------------------------------------------------------------------------------
# Lazy imports
# --------------------------------------------------------------------------------------------------


def _import_tensorflow() -> Any:
    """Import tensorflow with its C++ logging quieted (``TF_CPP_MIN_LOG_LEVEL=3`` unless already set).

    Raises:
        ImportError: tensorflow is not installed (the message says what to install).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "TensorFlow/Keras sources need tensorflow and tf2onnx: pip install tensorflow-cpu tf2onnx"
        ) from error
    return tf


def _import_keras() -> Any:
    """Import keras (after tensorflow, so the TensorFlow log level applies to it too)."""
    _import_tensorflow()
    import keras

    return keras


def _import_tf2onnx() -> Any:
    """Import tf2onnx (after tensorflow).

    Raises:
        ImportError: tf2onnx is not installed.
    """
    _import_tensorflow()
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


def _example_array(dtype: np.dtype[Any], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An example array: uniform [0, 1) for floats, zeros for integers and bools, ``b""`` for strings."""
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    if dtype == np.dtype(object) or np.issubdtype(dtype, np.bytes_) or np.issubdtype(dtype, np.str_):
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=dtype)


def _examples_for_specs(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """One example per spec: ``EXAMPLE_BATCH_SIZE`` long along ``batch``, ``EXAMPLE_AXIS_LENGTH`` along other labels."""
    rng = np.random.default_rng(seed)
    examples: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(
            dim if isinstance(dim, int) else EXAMPLE_BATCH_SIZE if dim == BATCH_LABEL else EXAMPLE_AXIS_LENGTH
            for dim in spec.dims
        )
        examples[spec.name] = _example_array(spec.dtype, shape, rng)
    return examples


def _check_dynamic_axes(dynamic_axes: DynamicAxes, shapes: Mapping[str, Sequence[int | None]]) -> None:
    """Check that ``dynamic_axes`` names known inputs and existing axes.

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


def _tf_specs(specs: Sequence[InputSpec]) -> list[Any]:
    """``tf.TensorSpec`` per input spec: ``None`` for dynamic dims, the spec's name where TF accepts it."""
    tf = _import_tensorflow()
    return [
        tf.TensorSpec(
            shape=[None if isinstance(dim, str) else dim for dim in spec.dims],
            dtype=tf.as_dtype(spec.dtype),
            name=spec.name if _TF_NAME.fullmatch(spec.name) else f"tf_input_{index}",
        )
        for index, spec in enumerate(specs)
    ]


def _rename_values(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    """Rename values (node inputs and outputs, graph inputs, outputs and value infos) in place, subgraphs included."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name in names:
            value.name = names[value.name]
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                node.input[index] = names[name]
        for index, name in enumerate(node.output):
            if name in names:
                node.output[index] = names[name]
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _rename_values(attribute.g, names)
            for subgraph in attribute.graphs:
                _rename_values(subgraph, names)


def _untranslated_ops(graph: onnx.GraphProto, found: Counter[str] | None = None) -> Counter[str]:
    """Count nodes (subgraphs included) in a standard ONNX domain whose op type has no ONNX schema.

    tf2onnx leaves a TensorFlow op it cannot translate in the graph under its TF name (e.g.
    ``SelfAdjointEigV2``); those are the nodes found here.
    """
    found = Counter() if found is None else found
    for node in graph.node:
        domain = _STANDARD_DOMAINS.get(node.domain)
        if domain is not None and not onnx.defs.has(node.op_type, domain):
            found[node.op_type] += 1
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _untranslated_ops(attribute.g, found)
            for subgraph in attribute.graphs:
                _untranslated_ops(subgraph, found)
    return found


def _inferred_output_dims(model: onnx.ModelProto) -> dict[str, list[Dim | None]]:
    """Output dims as ONNX shape inference derives them from the (already labelled) graph inputs.

    Returns an empty dict when inference fails (it is only used to name symbolic output dims).
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort
        return {}
    return {value.name: graph_dims(value, unknown=None) for value in inferred.graph.output}


def _label_output_dims(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> None:
    """Name every symbolic or unknown output dim, in place.

    A dim keeps its size when fixed; otherwise it takes the input label ONNX shape inference
    propagates to it (e.g. ``batch``), else ``batch`` for dim 0 (when some input has a batch dim 0),
    else ``<output>_<axis>``.
    """
    labels = {dim for spec in specs for dim in spec.dims if isinstance(dim, str)}
    has_batch = any(spec.dims and spec.dims[0] == BATCH_LABEL for spec in specs)
    inferred = _inferred_output_dims(model)
    for value in model.graph.output:
        dims = graph_dims(value, unknown=None)
        if not dims:  # unknown rank, or a scalar: no dim to name
            continue
        guess = inferred.get(value.name, [])
        new_dims: list[Dim | None] = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                new_dims.append(dim)
                continue
            hint = guess[axis] if axis < len(guess) and len(guess) == len(dims) else None
            if (isinstance(hint, str) and hint in labels) or isinstance(hint, int):
                new_dims.append(hint)
            elif axis == 0 and has_batch:
                new_dims.append(BATCH_LABEL)
            else:
                new_dims.append(f"{value.name}_{axis}")
        set_dims(value, new_dims)


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
    untranslated = _untranslated_ops(model.graph)
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
        _rename_values(model.graph, renames)
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
    _label_output_dims(model, specs)

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


def _convert_tf_function(
    call: Callable[[list[Any]], list[Any]],
    specs: Sequence[InputSpec],
    output_names: Sequence[str],
    *,
    what: str,
    opset: int | None,
) -> onnx.ModelProto:
    """Convert ``call`` (input tensors in spec order -> output tensors in ``output_names`` order) with tf2onnx.

    Raises:
        ConversionError: tracing or conversion fails, or the graph does not pass :func:`_finish_graph`.
    """
    tf = _import_tensorflow()
    tf2onnx = _import_tf2onnx()
    if opset is None:
        opset = int(tf2onnx.constants.PREFERRED_OPSET)
    tf_specs = _tf_specs(specs)
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
        ConversionError: tracing or saving fails (the message names the cause).
    """
    tf = _import_tensorflow()
    module = tf.Module()
    module.model = keep
    module.serve = tf.function(
        _outputs_by_name(call, output_names, what), input_signature=_tf_specs(specs), autograph=False
    )
    version_dir.mkdir(parents=True, exist_ok=True)
    try:
        signature = module.serve.get_concrete_function()
        tf.saved_model.save(module, str(version_dir / SAVED_MODEL), signatures={DEFAULT_SIGNATURE: signature})
    except ConversionError:
        raise
    except Exception as error:  # TF raises many types
        raise ConversionError(f"cannot save {what} as a TF SavedModel: {type(error).__name__}: {error}") from error


# --------------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------------


def _keras_input_names(model: Any, count: int) -> list[str]:
    """The model's input names (``model.inputs[i].name``), else ``input`` / ``input_0, input_1, ...``."""
    defaults = ["input"] if count == 1 else [f"input_{index}" for index in range(count)]
    try:
        names = [str(tensor.name) for tensor in model.inputs]
    except (AttributeError, TypeError, ValueError):  # subclassed models may have no symbolic inputs
        return defaults
    if len(names) != count:
        return defaults
    # keras.Input() without a name (or a Sequential built by a call) gets "keras_tensor_<n>": not a name to keep.
    names = [
        default if not name or _KERAS_AUTO_NAME.fullmatch(name) else name
        for name, default in zip(names, defaults, strict=True)
    ]
    return names if len(set(names)) == count else defaults


def _keras_structure(model: Any, items: Sequence[Any]) -> Any:
    """Arrange ``items`` (one per input, in ``model.inputs`` order) as the model takes them.

    A functional model gets its own input structure (one tensor, a list or a dict); other models get
    the single item, or a list of them.
    """
    keras = _import_keras()
    structure = getattr(model, "_inputs_struct", None)
    if structure is not None and len(keras.tree.flatten(structure)) == len(items):
        return keras.tree.pack_sequence_as(structure, list(items))
    return items[0] if len(items) == 1 else list(items)


def _require_tensorflow_keras(action: str) -> None:
    """Check that Keras runs on TensorFlow, which ``action`` needs.

    Raises:
        ConversionError: Keras runs on another backend (JAX, PyTorch).
    """
    keras = _import_keras()
    if keras.backend.backend() != "tensorflow":
        raise ConversionError(
            f"the Keras backend is {keras.backend.backend()!r}; {action} needs KERAS_BACKEND=tensorflow "
            "(set it before keras is imported)"
        )


class KerasSource(SourceModel):
    """A Keras 3 model, exported through a temporary TF SavedModel and tf2onnx.

    Inputs are named after the model's inputs (``model.inputs[i].name``; ``input`` / ``input_<i>``
    when the model has no symbolic inputs, e.g. a subclassed model) and described by the example
    arrays (:func:`~converters.model.specs_from_examples`: dim 0 is ``batch``, other dims fixed unless
    ``dynamic_axes`` labels them). Outputs are the model's outputs flattened (dict outputs by sorted
    key), named ``output`` or ``output_0, output_1, ...``. Export needs the TensorFlow Keras backend.

    Args:
        model: a built Keras model; a functional model takes its own input structure, other models one
            tensor or a list.
        example_inputs: one array per model input in ``model.inputs`` order, batch first, e.g. float32
            ``[2, 64]``.
        dynamic_axes: per input name, axis -> label for dims other than the batch.
        opset: ONNX opset for tf2onnx (None: tf2onnx's default, 15 for tf2onnx 1.17).

    Raises:
        ValueError: bad examples or dynamic axes (see ``specs_from_examples``), or the model fails on
            the examples.
    """

    framework = "keras"
    native_backend = "tensorflow"

    def __init__(
        self,
        model: Any,
        example_inputs: Sequence[np.ndarray],
        dynamic_axes: DynamicAxes | None = None,
        *,
        opset: int | None = None,
    ) -> None:
        arrays = [np.asarray(array) for array in example_inputs]
        names = _keras_input_names(model, len(arrays))
        self.input_specs = specs_from_examples(names, arrays, dynamic_axes)
        self.example_inputs = dict(zip(names, arrays, strict=True))
        self.model = model
        self.opset = opset
        try:
            outputs = self._call(arrays)
        except Exception as error:  # any framework error on the examples
            raise ValueError(
                f"the Keras model fails on the example inputs "
                f"({', '.join(spec.describe() for spec in self.input_specs)}): {error}"
            ) from error
        self._output_names = default_output_names(len(outputs))

    def _call(self, arrays: Sequence[Any]) -> list[Any]:
        """Call the model (inference mode) on one array/tensor per input; return its outputs, flattened."""
        keras = _import_keras()
        outputs = self.model(_keras_structure(self.model, arrays), training=False)
        return list(keras.tree.flatten(outputs))

    @property
    def output_names(self) -> list[str]:
        """``output`` for one output, else ``output_0, output_1, ...``."""
        return list(self._output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the Keras model (``training=False``) on ``inputs``; return numpy outputs by name."""
        keras = _import_keras()
        arrays = [np.asarray(inputs[spec.name], dtype=spec.dtype) for spec in self.input_specs]
        outputs = self._call(arrays)
        return {
            name: np.asarray(keras.ops.convert_to_numpy(output))
            for name, output in zip(self._output_names, outputs, strict=True)
        }

    def export_onnx(self, path: Path) -> None:
        """Export to a temporary SavedModel beside ``path``, convert it with tf2onnx, write ``path`` atomically.

        Raises:
            ConversionError: the Keras backend is not TensorFlow, the SavedModel export fails, or
                tf2onnx cannot convert (the message names the TensorFlow ops without a translation).
        """
        tf = _import_tensorflow()
        _require_tensorflow_keras("converting a Keras model to ONNX")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tf_specs = _tf_specs(self.input_specs)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.savedmodel.") as staging:
            saved = Path(staging) / "saved_model"
            try:
                self.model.export(
                    str(saved),
                    format="tf_saved_model",
                    input_signature=[_keras_structure(self.model, tf_specs)],
                    verbose=False,
                )
                loaded = tf.saved_model.load(str(saved))
            except Exception as error:  # Keras and TF raise many types
                raise ConversionError(
                    f"cannot export the Keras model as a TF SavedModel: {type(error).__name__}: {error}"
                ) from error
            endpoint = loaded.serve

            def call(tensors: list[Any]) -> list[Any]:
                return list(tf.nest.flatten(endpoint(_keras_structure(self.model, tensors))))

            model = _convert_tf_function(
                call, self.input_specs, self._output_names, what="the Keras model", opset=self.opset
            )
        save_onnx(model, path)

    def export_native(self, version_dir: Path) -> None:
        """Save the model (called with ``training=False``) as ``version_dir/model.savedmodel/``.

        See :func:`write_saved_model`; the model's variables are saved with it.

        Raises:
            ConversionError: the Keras backend is not TensorFlow, or tracing or saving fails.
        """
        _require_tensorflow_keras("saving a Keras model as a SavedModel")
        write_saved_model(
            self._call, self.input_specs, self._output_names, version_dir, what="the Keras model", keep=self.model
        )


def _keras_declared_examples(
    model: Any, dynamic_axes: DynamicAxes
) -> tuple[list[np.ndarray], dict[str, dict[int, str]]]:
    """Example arrays and completed dynamic axes from the model's declared input shapes and dtypes.

    Dim 0 is the batch (``EXAMPLE_BATCH_SIZE`` long when undeclared); other undeclared (None) dims
    become dynamic with the label ``dynamic_axes`` gives, else ``<input>_<axis>``, and are
    ``EXAMPLE_AXIS_LENGTH`` long in the examples.

    Raises:
        ValueError: the model declares no input shapes, or ``dynamic_axes`` names unknown inputs/axes.
    """
    try:
        inputs = list(model.inputs)
    except (AttributeError, TypeError, ValueError) as error:
        raise ValueError(
            f"the Keras model declares no inputs ({error}); pass example_inputs to describe them"
        ) from error
    if not inputs:
        raise ValueError("the Keras model declares no inputs; pass example_inputs to describe them")
    names = _keras_input_names(model, len(inputs))
    shapes = {name: tuple(tensor.shape) for name, tensor in zip(names, inputs, strict=True)}
    _check_dynamic_axes(dynamic_axes, shapes)
    rng = np.random.default_rng(0)
    arrays: list[np.ndarray] = []
    labels: dict[str, dict[int, str]] = {}
    for name, tensor in zip(names, inputs, strict=True):
        if not shapes[name]:
            raise ValueError(f"Keras input {name!r} is a scalar; inputs need a batch dimension (dim 0)")
        given = dict(dynamic_axes.get(name, {}))
        axes: dict[int, str] = {}
        sizes: list[int] = []
        for axis, size in enumerate(shapes[name]):
            if axis == 0:
                sizes.append(EXAMPLE_BATCH_SIZE if size is None else int(size))
                if 0 in given:
                    axes[0] = given[0]
            elif size is None or axis in given:
                axes[axis] = given.get(axis, f"{name}_{axis}")
                sizes.append(EXAMPLE_AXIS_LENGTH if size is None else int(size))
            else:
                sizes.append(int(size))
        arrays.append(_example_array(np.dtype(str(tensor.dtype)), tuple(sizes), rng))
        labels[name] = axes
    return arrays, labels


def load_keras_file(
    path: Path,
    dynamic_axes: DynamicAxes | None = None,
    example_inputs: Sequence[np.ndarray] | None = None,
    *,
    opset: int | None = None,
) -> KerasSource:
    """Load a Keras 3 ``.keras`` file (``safe_mode=True``, never compiled) as a :class:`KerasSource`.

    Without ``example_inputs`` the examples are built from the model's declared inputs
    (``model.inputs[i].shape`` and ``.dtype``): batch ``EXAMPLE_BATCH_SIZE``, floats uniform in
    [0, 1), integers and bools zero. Undeclared (None) dims other than dim 0 become dynamic, labelled
    by ``dynamic_axes`` or ``<input>_<axis>``, and are ``EXAMPLE_AXIS_LENGTH`` long in the examples.

    Args:
        path: a ``.keras`` file.
        dynamic_axes: per input name, axis -> label.
        example_inputs: one array per model input (in ``model.inputs`` order), if the declared
            shapes are not enough (e.g. the model needs typical values).
        opset: ONNX opset for tf2onnx (None: tf2onnx's default).

    Raises:
        ValueError: ``path`` is not an existing ``.keras`` file, Keras cannot load it (a corrupt
            file, an unknown custom class, or a ``Lambda`` layer, which safe mode refuses because it
            holds arbitrary Python code), or the inputs cannot be described.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path} is not a Keras 3 model file: expected a .keras file")
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    keras = _import_keras()
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, zipfile errors...
        text = str(error)
        if "Lambda" in text or "safe_mode" in text:
            raise ValueError(
                f"refusing to load {path}: it holds a Lambda layer (arbitrary Python code), which Keras "
                "safe mode does not deserialize and this gateway never loads unsafely. Rebuild the model "
                "without Lambda layers, or export it as a TF SavedModel (model.export(folder)) and "
                "convert that."
            ) from error
        raise ValueError(f"cannot load Keras file {path}: {type(error).__name__}: {text}") from error
    axes: DynamicAxes = dynamic_axes or {}
    if example_inputs is None:
        arrays, axes = _keras_declared_examples(model, axes)
        return KerasSource(model, arrays, axes, opset=opset)
    return KerasSource(model, example_inputs, axes, opset=opset)


# --------------------------------------------------------------------------------------------------
# SavedModel
# --------------------------------------------------------------------------------------------------


def _signature_specs(signature: Any, dynamic_axes: DynamicAxes) -> list[InputSpec]:
    """Input specs from a SavedModel signature's keyword TensorSpecs, sorted by name.

    Raises:
        ValueError: an input of unknown rank or a scalar, or ``dynamic_axes`` naming unknown inputs,
            missing axes or axes the signature fixes.
    """
    _, keyword_specs = signature.structured_input_signature
    shapes: dict[str, list[int | None]] = {}
    for name in sorted(keyword_specs):
        shape = keyword_specs[name].shape
        if shape.rank is None:
            raise ValueError(f"signature input {name!r} has an unknown rank; give it a shape in the signature")
        if shape.rank == 0:
            raise ValueError(f"signature input {name!r} is a scalar; inputs need a batch dimension (dim 0)")
        shapes[name] = list(shape.as_list())
    _check_dynamic_axes(dynamic_axes, shapes)
    specs: list[InputSpec] = []
    for name, shape in shapes.items():
        given = dynamic_axes.get(name, {})
        fixed = sorted(axis for axis in given if shape[axis] is not None)
        if fixed:
            raise ValueError(
                f"dynamic axes {fixed} of input {name!r} are fixed in the signature (shape {shape}); "
                "only its None dims can be dynamic"
            )
        dims: list[Dim] = []
        for axis, size in enumerate(shape):
            if size is not None:
                dims.append(int(size))
            else:
                dims.append(given.get(axis, BATCH_LABEL if axis == 0 else f"{name}_{axis}"))
        dtype = np.dtype(keyword_specs[name].dtype.as_numpy_dtype)
        specs.append(InputSpec(name, dtype, tuple(dims)))
    return specs


class SavedModelSource(SourceModel):
    """One signature of a TensorFlow SavedModel folder, converted with tf2onnx.

    Inputs are the signature's inputs sorted by name (the signature's keys), with dtypes and shapes
    from the signature: None dims are dynamic (dim 0 ``batch``, others ``<input>_<axis>``, unless
    ``dynamic_axes`` labels them). Outputs are the signature's output keys, sorted. Example inputs
    are built from the specs (batch ``EXAMPLE_BATCH_SIZE``, other dynamic dims
    ``EXAMPLE_AXIS_LENGTH``; floats uniform in [0, 1), integers and bools zero).

    Args:
        path: the SavedModel folder (holding ``saved_model.pb``).
        signature: the signature key.
        dynamic_axes: per input name, axis -> label (only for dims the signature leaves None).
        opset: ONNX opset for tf2onnx (None: tf2onnx's default).

    Raises:
        ValueError: not a SavedModel folder, TF cannot load it, the signature does not exist, or the
            inputs cannot be described (unknown rank, scalar, bad ``dynamic_axes``).
    """

    framework = "tensorflow"
    native_backend = "tensorflow"

    def __init__(
        self,
        path: Path,
        signature: str = "serving_default",
        dynamic_axes: DynamicAxes | None = None,
        *,
        opset: int | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_dir() or not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
            raise ValueError(f"{path} is not a TF SavedModel folder (it has no saved_model.pb)")
        tf = _import_tensorflow()
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:  # TF raises many types for a bad folder
            raise ValueError(f"cannot load the SavedModel {path}: {type(error).__name__}: {error}") from error
        signatures = dict(loaded.signatures)
        if signature not in signatures:
            available = sorted(signatures) or "none"
            raise ValueError(f"the SavedModel {path} has no signature {signature!r}; its signatures: {available}")
        function = signatures[signature]
        self.path = path
        self.signature = signature
        self.opset = opset
        self._loaded = loaded  # keeps the signature's variables alive
        self._function = function
        self.input_specs = _signature_specs(function, dynamic_axes or {})
        self.example_inputs = _examples_for_specs(self.input_specs)
        outputs = function.structured_outputs
        if not isinstance(outputs, Mapping):
            raise ValueError(f"signature {signature!r} of {path} does not return a dict of named outputs")
        self._output_names = sorted(str(name) for name in outputs)

    @property
    def output_names(self) -> list[str]:
        """The signature's output keys, sorted."""
        return list(self._output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature with one tensor per input (by name); return numpy outputs by name."""
        tf = _import_tensorflow()
        tensors = {
            spec.name: tf.convert_to_tensor(np.asarray(inputs[spec.name]), dtype=tf.as_dtype(spec.dtype))
            for spec in self.input_specs
        }
        outputs = self._function(**tensors)
        return {name: np.asarray(outputs[name].numpy()) for name in self._output_names}

    def export_onnx(self, path: Path) -> None:
        """Convert the signature with tf2onnx and write ``path`` atomically (one self-contained file).

        Raises:
            ConversionError: tf2onnx cannot convert the signature (the message names the TensorFlow
                ops without an ONNX translation).
        """
        model = _convert_tf_function(
            self._call_signature,
            self.input_specs,
            self._output_names,
            what=f"signature {self.signature!r} of the SavedModel {self.path}",
            opset=self.opset,
        )
        save_onnx(model, Path(path))

    def export_native(self, version_dir: Path) -> None:
        """Save the signature again, as ``serving_default`` of ``version_dir/model.savedmodel/``.

        The loaded SavedModel (variables, assets) is saved with it; the signature keeps its input
        names and output keys.

        Raises:
            ConversionError: tracing or saving fails.
        """
        write_saved_model(
            self._call_signature,
            self.input_specs,
            self._output_names,
            version_dir,
            what=f"signature {self.signature!r} of the SavedModel {self.path}",
            keep=self._loaded,
        )

    def _call_signature(self, tensors: list[Any]) -> list[Any]:
        """Call the signature with one tensor per input spec (in spec order); its outputs in output order."""
        outputs = self._function(**{spec.name: tensor for spec, tensor in zip(self.input_specs, tensors, strict=True)})
        return [outputs[name] for name in self._output_names]


def load_saved_model(
    path: Path,
    signature: str = "serving_default",
    dynamic_axes: DynamicAxes | None = None,
    *,
    opset: int | None = None,
) -> SavedModelSource:
    """Load one signature of a TF SavedModel folder as a :class:`SavedModelSource` (see there)."""
    return SavedModelSource(path, signature, dynamic_axes, opset=opset)
