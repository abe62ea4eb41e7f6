"""An ONNX file as a source: taken as it is, after ``onnx.checker``."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from backends.onnxruntime import ARTIFACT as ONNX_ARTIFACT
from converters.model import BATCH_LABEL, ConversionError, InputSpec, SourceModel
from converters.onnx_graph import UNKNOWN_DIM, graph_dims

__all__ = ["OnnxFileSource"]


class OnnxFileSource(SourceModel):
    """A ``.onnx`` file served as it is: checked with ``onnx.checker`` and copied, never converted.

    There is no original framework model to compare with, so there is no parity reference
    (:attr:`has_reference` is False). Input specs come from the graph: symbolic dims keep their
    names (a first dim that is unknown is called ``batch``), unknown dims are ``<input>_<axis>``.

    Raises:
        ValueError: the file is not valid ONNX (the checker's message says why), stores weights in
            external data, or has an input whose element type has no numpy dtype.
    """

    framework = "onnx"
    native_backend = "onnxruntime"

    def __init__(self, path: Path) -> None:
        try:
            onnx.checker.check_model(str(path), full_check=True)
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # checker and protobuf raise several types for a bad file
            raise ValueError(f"{path} is not a valid ONNX model: {error}") from error
        if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
            raise ValueError(f"{path} stores weights in external data; save it as one file (onnx.save_model)")
        initializers = {init.name for init in model.graph.initializer}
        self.path = path
        self.input_specs = [_spec(value) for value in model.graph.input if value.name not in initializers]
        self.example_inputs = None
        self._output_names = [value.name for value in model.graph.output]

    @property
    def output_names(self) -> list[str]:
        """The graph's output names."""
        return self._output_names

    @property
    def has_reference(self) -> bool:
        """False: an ONNX file has no original model to compare with."""
        return False

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Not available: an ONNX file is taken as it is.

        Raises:
            ConversionError: always.
        """
        raise ConversionError("an ONNX file has no original framework model to run")

    def export_onnx(self, path: Path) -> None:
        """Copy the checked file to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, path)

    def export_native(self, version_dir: Path) -> None:
        """ONNX is this source's own format: copy the checked file to ``version_dir/model.onnx``."""
        self.export_onnx(version_dir / ONNX_ARTIFACT)


def _spec(value: onnx.ValueInfoProto) -> InputSpec:
    element_type = value.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(element_type))
    except KeyError:
        raise ValueError(
            f"input {value.name!r} has ONNX element type {element_type}, which numpy cannot hold"
        ) from None
    dims = [
        BATCH_LABEL if axis == 0 and dim == UNKNOWN_DIM else f"{value.name}_{axis}" if dim == UNKNOWN_DIM else dim
        for axis, dim in enumerate(graph_dims(value))
    ]
    return InputSpec(value.name, dtype, tuple(dims))
