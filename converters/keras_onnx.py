"""Keras 3 models and ``.keras`` files as conversion sources, exported to ONNX with tf2onnx or, natively, to
a SavedModel ``model.savedmodel/`` that the gateway's tensorflow backend serves.

A Keras model is first exported to a temporary SavedModel (``model.export(..., format="tf_saved_model")``,
so Keras 3 models work: tf2onnx's own ``from_keras`` does not support them); that SavedModel's
endpoint is then converted as a TensorFlow function (:func:`converters.tensorflow_function.convert_tf_function`).
The native export saves the model's call (``training=False``) with
:func:`converters.tensorflow_function.write_saved_model`. Both need Keras on its TensorFlow backend.

keras and tensorflow are imported lazily, inside the functions that need them: this module imports
with only numpy and onnx installed.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import ConversionError, DynamicAxes, ExampleDescribedSource
from converters.onnx_graph import save_onnx
from converters.tensorflow_function import (
    EXAMPLE_AXIS_LENGTH,
    EXAMPLE_BATCH_SIZE,
    check_dynamic_axes,
    convert_tf_function,
    example_array,
    import_tensorflow,
    tf_tensor_specs,
    write_saved_model,
)

__all__ = ["KerasSource", "load_keras_file"]

#: The name Keras gives an unnamed symbolic input.
_KERAS_AUTO_NAME = re.compile(r"(keras_tensor|input_layer)(_\d+)?")


def _import_keras() -> Any:
    """Import keras (after tensorflow, so the TensorFlow log level applies to it too)."""
    import_tensorflow()
    import keras

    return keras


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


class KerasSource(ExampleDescribedSource):
    """A Keras 3 model, exported through a temporary TF SavedModel and tf2onnx.

    Inputs are named after the model's inputs (``model.inputs[i].name``; ``input`` / ``input_<i>``
    when the model has no symbolic inputs, e.g. a subclassed model) and described by the example
    arrays (:class:`~converters.model.ExampleDescribedSource`: dim 0 is ``batch``, other dims fixed
    unless ``dynamic_axes`` labels them). Outputs are the model's outputs flattened (dict outputs by sorted
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
        self.model = model
        self.opset = opset
        super().__init__(
            example_inputs,
            dynamic_axes,
            input_names=lambda count: _keras_input_names(model, count),
            count_outputs=lambda arrays: len(self._call(arrays)),
            what="the Keras model",
        )

    def _call(self, arrays: Sequence[Any]) -> list[Any]:
        """Call the model (inference mode) on one array/tensor per input; return its outputs, flattened."""
        keras = _import_keras()
        outputs = self.model(_keras_structure(self.model, arrays), training=False)
        return list(keras.tree.flatten(outputs))

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
        tf = import_tensorflow()
        _require_tensorflow_keras("converting a Keras model to ONNX")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tf_specs = tf_tensor_specs(self.input_specs)
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

            model = convert_tf_function(
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
    check_dynamic_axes(dynamic_axes, shapes)
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
        arrays.append(example_array(np.dtype(str(tensor.dtype)), tuple(sizes), rng))
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
