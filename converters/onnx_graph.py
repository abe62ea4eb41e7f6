"""ONNX graph helpers every converter shares: reading and setting value dims, renaming dim symbols and
values, labelling output dims, finding untranslated operators, dropping the bias a Gemm ignores, saving
a model atomically.

Framework-free: this module needs only ``onnx`` (and :mod:`converters.model` for the dim types). A dim
is an ``int`` when fixed and a ``str`` when symbolic (an ONNX ``dim_param``, e.g. ``"batch"``); see
:mod:`converters.model`.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import onnx

from converters.model import BATCH_LABEL, ConversionError, Dim, InputSpec

__all__ = [
    "UNKNOWN_DIM",
    "drop_ignored_gemm_bias",
    "graph_dims",
    "label_output_dims",
    "rename_dim_params",
    "rename_values",
    "save_onnx",
    "set_dims",
    "untranslated_ops",
]

#: What :func:`graph_dims` reports, by default, for a dim the graph leaves unknown (neither size nor symbol).
UNKNOWN_DIM = "?"
#: Operator domains whose operators must have an ONNX schema (anything else came through untranslated).
_STANDARD_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}


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


def rename_values(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    """Rename values (node inputs and outputs, graph inputs, outputs and value infos) in place, subgraphs included.

    Args:
        graph: the graph to change.
        names: old value name -> new name, e.g. ``{"serving_default_x:0": "x"}``.
    """
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
                rename_values(attribute.g, names)
            for subgraph in attribute.graphs:
                rename_values(subgraph, names)


def drop_ignored_gemm_bias(graph: onnx.GraphProto) -> int:
    """Remove the bias input ``C`` of every ``Gemm`` whose ``beta`` is 0, in place (subgraphs included).

    ``Gemm(A, B, C, beta=0)`` computes ``alpha * A' * B'`` and ignores ``C`` (jax2onnx writes its
    matrix products so, with a scalar zero bias); without ``C`` and ``beta`` the node means the same,
    and ONNX Runtime's quantization tools, which take only ``beta == 1`` Gemms apart into MatMul + Add,
    can quantize it. Initializers of ``graph`` that no node uses any more are removed.

    Returns:
        The number of nodes changed.
    """
    dropped: set[str] = set()
    changed = _drop_ignored_gemm_bias(graph, dropped)
    unused = dropped - _used_values(graph) - {value.name for value in graph.output}
    kept = [initializer for initializer in graph.initializer if initializer.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return changed


def _drop_ignored_gemm_bias(graph: onnx.GraphProto, dropped: set[str]) -> int:
    changed = 0
    for node in graph.node:
        beta = next((attribute for attribute in node.attribute if attribute.name == "beta"), None)
        if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") and beta is not None and beta.f == 0.0:
            dropped.update(node.input[2:])
            del node.input[2:]
            node.attribute.remove(beta)
            changed += 1
        for subgraph in _subgraphs(node):
            changed += _drop_ignored_gemm_bias(subgraph, dropped)
    return changed


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node's attributes hold (If, Loop, Scan bodies)."""
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        graphs.extend(attribute.graphs)
    return graphs


def _used_values(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of ``graph`` or of its subgraphs takes as input."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for subgraph in _subgraphs(node):
            used |= _used_values(subgraph)
    return used


def untranslated_ops(graph: onnx.GraphProto, found: Counter[str] | None = None) -> Counter[str]:
    """Count nodes (subgraphs included) in a standard ONNX domain whose op type has no ONNX schema.

    A converter may leave a framework op it cannot translate in the graph under its own name (tf2onnx
    does, e.g. ``SelfAdjointEigV2``); those are the nodes found here. Custom domains are not checked.

    Args:
        graph: the graph to search.
        found: the counter to add to (used for subgraphs); None: a new one.

    Returns:
        Op type -> number of nodes, e.g. ``Counter({"SelfAdjointEigV2": 1})``; empty when every op is known.
    """
    found = Counter() if found is None else found
    for node in graph.node:
        domain = _STANDARD_DOMAINS.get(node.domain)
        if domain is not None and not onnx.defs.has(node.op_type, domain):
            found[node.op_type] += 1
        for attribute in node.attribute:
            if attribute.HasField("g"):
                untranslated_ops(attribute.g, found)
            for subgraph in attribute.graphs:
                untranslated_ops(subgraph, found)
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


def label_output_dims(model: onnx.ModelProto, specs: Sequence[InputSpec]) -> None:
    """Name every symbolic or unknown output dim, in place.

    A dim keeps its size when fixed; otherwise it takes the input label ONNX shape inference
    propagates to it (e.g. ``batch``), else ``batch`` for dim 0 (when some input has a batch dim 0),
    else ``<output>_<axis>``. Outputs of unknown rank and scalars are left as they are.

    Args:
        model: the model, whose graph inputs already carry the dims of ``specs``.
        specs: the model's inputs (their labels are the names an output dim may take).
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
