"""TensorFlow SavedModel folders as conversion sources: one signature, exported to ONNX with tf2onnx or,
natively, saved again as the ``serving_default`` signature of ``model.savedmodel/``.

The signature is converted as a TensorFlow function
(:func:`converters.tensorflow_function.convert_tf_function`) and saved with
:func:`converters.tensorflow_function.write_saved_model`; its inputs and outputs keep their names.

tensorflow is imported lazily, inside the functions that need it: this module imports with only
numpy and onnx installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import BATCH_LABEL, Dim, DynamicAxes, InputSpec, SourceModel
from converters.onnx_graph import save_onnx
from converters.tensorflow_function import (
    check_dynamic_axes,
    convert_tf_function,
    examples_for_specs,
    import_tensorflow,
    write_saved_model,
)

__all__ = ["SavedModelSource", "load_saved_model"]


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
    check_dynamic_axes(dynamic_axes, shapes)
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
        tf = import_tensorflow()
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
        self.example_inputs = examples_for_specs(self.input_specs)
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
        tf = import_tensorflow()
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
        model = convert_tf_function(
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
