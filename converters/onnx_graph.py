"""ONNX graph helpers every converter shares: reading and setting value dims, renaming symbolic dims, saving.

Framework-free: this module needs only ``onnx`` (and :mod:`converters.model` for the dim types). A dim
is an ``int`` when fixed and a ``str`` when symbolic (an ONNX ``dim_param``, e.g. ``"batch"``); see
:mod:`converters.model`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import onnx

from converters.model import ConversionError, Dim

__all__ = [
    "UNKNOWN_DIM",
    "graph_dims",
    "rename_dim_params",
    "save_onnx",
    "set_dims",
]

#: What :func:`graph_dims` reports, by default, for a dim the graph leaves unknown (neither size nor symbol).
UNKNOWN_DIM = "?"


@overload
def graph_dims(value: onnx.ValueInfoProto) -> list[Dim]: ...


@overload
def graph_dims(value: onnx.ValueInfoProto, *, unknown: None) -> list[Dim | None]: ...


def graph_dims(value: onnx.ValueInfoProto, *, unknown: str | None = UNKNOWN_DIM) -> list[Any]:
    """The dims of a graph value (input, output or value info): ``int`` sizes, ``str`` symbols.

    Args:
        value: the graph value; only its tensor type's shape is read.
        unknown: what stands for a dim that has neither a size nor a symbol: :data:`UNKNOWN_DIM`
            (``"?"``, for display) or None (to tell it apart from every symbol).

    Returns:
        One entry per dim, in order; ``[]`` when the value has no shape at all (unknown rank) or is a
        scalar (rank 0).
    """
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    return [
        dim.dim_param if dim.HasField("dim_param") else dim.dim_value if dim.HasField("dim_value") else unknown
        for dim in tensor_type.shape.dim
    ]


def set_dims(value: onnx.ValueInfoProto, dims: Sequence[Dim | None]) -> None:
    """Replace the shape of a graph value, in place.

    Args:
        value: a graph input, output or value info holding a tensor type.
        dims: the new dims, one per axis: an ``int`` becomes a ``dim_value``, a ``str`` a ``dim_param``
            (symbolic), None a dim left unknown; ``[]`` makes the value a scalar (rank 0).
    """
    shape = value.type.tensor_type.shape
    shape.Clear()
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        elif dim is not None:
            entry.dim_value = dim


def rename_dim_params(model: onnx.ModelProto, labels: Mapping[str, str]) -> None:
    """Rename symbolic dims (ONNX ``dim_param``) in the graph's inputs, outputs and value infos, in place.

    Args:
        model: the model whose main graph is changed (subgraphs are left as they are).
        labels: old symbol -> new label, e.g. ``{"s31": "batch", "s64": "sequence"}``.
    """
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    for value in values:
        if not value.type.tensor_type.HasField("shape"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in labels:
                dim.dim_param = labels[dim.dim_param]


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` as one self-contained file, atomically.

    The file is written into a private folder beside ``path`` (same filesystem) and moved into place
    with ``os.replace``, so readers never see a partial file. The parent folder is created if missing.

    Returns:
        ``path``.

    Raises:
        ConversionError: some initializer refers to external data (the file would not be self-contained).
        OSError: the file cannot be written.
    """
    external = [init.name for init in model.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ConversionError(f"the converted model stores weights in external data: {external[:5]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        onnx.save_model(model, staged)
        os.replace(staged, path)
    return path
