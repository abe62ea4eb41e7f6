"""Export a PyTorch module to a single, self-contained ONNX file with a dynamic batch dimension.

torch is imported lazily inside :func:`export_torch_to_onnx`, so this module imports without torch
installed (only ``onnx`` is needed at import time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    import torch

__all__ = ["export_torch_to_onnx"]

# The dynamo exporter's op registry logs one WARNING per torchvision op when torchvision is not
# installed ("torchvision is not installed. Skipping torchvision::nms", ...). That is noise for us.
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence known, harmless chatter of the torch.onnx dynamo exporter for the duration of the block.

    Lowers the registry logger to ERROR and ignores the pytree ``LeafSpec`` FutureWarning that torch
    itself triggers while exporting. Other warnings and errors still come through. Note that
    ``warnings.catch_warnings`` is process-global state (not thread-safe), like every use of it.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    previous_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, previous_levels, strict=True):
            lg.setLevel(level)


def _dynamic_shape_conflict(error: BaseException) -> str | None:
    """Return the message of the ``ValueError`` torch.export chains when a dynamic dim got specialized.

    torch.export raises ``ValueError("Found the following conflicts between user-specified ranges and
    inferred ranges ...")`` when the traced module pins a dim declared ``Dim.DYNAMIC`` (e.g. a reshape
    to a constant batch size); the ONNX exporter wraps it in an ``OnnxExporterError``. Returns None if
    the chain holds no such error.
    """
    seen: set[int] = set()
    current: BaseException | None = error.__cause__
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ValueError) and "Dim.DYNAMIC" in str(current):
            return str(current)
        current = current.__cause__
    return None


def _describe_shape(value: onnx.ValueInfoProto) -> str:
    """Render a graph value's shape as ``[batch, 64]`` (``?`` for unknown dims, ``<unknown>`` if none)."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return "<unknown>"
    dims = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        elif dim.HasField("dim_value"):
            dims.append(str(dim.dim_value))
        else:
            dims.append("?")
    return "[" + ", ".join(dims) + "]"


def _static_batch_values(values: Sequence[onnx.ValueInfoProto]) -> list[str]:
    """Return ``"name [shape]"`` for every value whose first dim is not symbolic (no ``dim_param``)."""
    bad = []
    for value in values:
        tensor_type = value.type.tensor_type
        has_symbolic_batch = (
            tensor_type.HasField("shape")
            and len(tensor_type.shape.dim) > 0
            and tensor_type.shape.dim[0].HasField("dim_param")
        )
        if not has_symbolic_batch:
            bad.append(f"{value.name} {_describe_shape(value)}")
    return bad


def _check_graph(
    model: onnx.ModelProto, *, input_names: list[str], output_names: list[str], batch_dynamic: bool
) -> None:
    """Check the exported graph's names, batch dims and that all weights are stored inline.

    Raises:
        ValueError: if the graph's inputs/outputs are not exactly ``input_names``/``output_names``,
            if ``batch_dynamic`` and some input or output lacks a symbolic first dim, or if some
            initializer refers to external data.
    """
    graph_inputs = [value.name for value in model.graph.input]
    graph_outputs = [value.name for value in model.graph.output]
    if graph_inputs != input_names:
        raise ValueError(f"exported graph has inputs {graph_inputs}, expected {input_names}")
    if graph_outputs != output_names:
        raise ValueError(f"exported graph has outputs {graph_outputs}, expected {output_names}")
    if batch_dynamic:
        static = _static_batch_values([*model.graph.input, *model.graph.output])
        if static:
            raise ValueError(
                "exported graph has no symbolic batch dimension (dim 0) on: "
                + "; ".join(static)
                + ". The module probably fixes the batch size (e.g. a reshape to a constant, or a "
                "scalar output); make dim 0 of every input and output the batch dimension."
            )
    external = [init.name for init in model.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"exported model stores weights in external data: {external[:5]}")


def export_torch_to_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    batch_dynamic: bool = True,
) -> Path:
    """Export ``module`` with the torch.onnx dynamo exporter into one self-contained ONNX file.

    The module is traced in eval mode (its previous training/eval mode is restored afterwards) with
    ``torch.onnx.export(..., dynamo=True)``. With ``batch_dynamic`` each input's dim 0 is declared
    ``torch.export.Dim.DYNAMIC``: export fails if the module pins that dim to a constant, and inputs
    whose batch dims the module ties together (e.g. ``x + y``) share one symbol. All weights are
    embedded in the file (no ``<file>.data`` sidecar; hence models over ONNX's 2 GiB protobuf limit
    are not supported). The file is written to a temporary folder next to ``path`` and moved into
    place with ``os.replace``, so readers never see a partial file; a stale ``<path>.data`` sidecar
    from an earlier external-data export is removed. No report or debug files are written anywhere.

    Args:
        module: the model; its ``forward`` takes the tensors of ``example_inputs`` positionally.
        example_inputs: one example tensor per model input, each with the batch as dim 0 (any batch
            size, 1 included), e.g. ``(torch.zeros(2, 64, dtype=torch.float32),)``. Dtypes and the
            non-batch dims are fixed in the exported graph.
        path: destination ``.onnx`` file; its parent folder is created if missing, and an existing
            file is replaced.
        input_names: graph input names, one per example input, in order.
        output_names: graph output names, one per tensor the module returns, in order.
        batch_dynamic: declare dim 0 of every input dynamic and verify that dim 0 of every graph
            input and output is symbolic (an ONNX ``dim_param``). If False, shapes are exported
            exactly as in ``example_inputs``.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``input_names`` does not match ``example_inputs`` in number, names are empty or
            repeated, an example input is not a tensor with at least one dim (when ``batch_dynamic``),
            the exported graph's input/output names differ from those requested, or (with
            ``batch_dynamic``) the module pins the batch size (e.g. reshapes to a constant batch)
            or some graph input or output has a non-symbolic first dim (e.g. a scalar output).
        torch.onnx.OnnxExporterError: (a RuntimeError) if the module cannot be exported for any
            other reason, e.g. an operator without an ONNX translation.
        RuntimeError: if the exporter returns no program.
    """
    import torch
    from torch.export import Dim

    path = Path(path)
    if len(input_names) != len(example_inputs):
        raise ValueError(f"got {len(input_names)} input names for {len(example_inputs)} example inputs: {input_names}")
    for kind, names in (("input", input_names), ("output", output_names)):
        if not names or any(not name for name in names):
            raise ValueError(f"{kind}_names must be non-empty strings, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"{kind}_names must be unique, got {names}")
    for name, tensor in zip(input_names, example_inputs, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"example input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if batch_dynamic and tensor.dim() == 0:
            raise ValueError(f"example input {name!r} is a scalar; it has no batch dim 0")

    # One independent dynamic dim per input: torch.export infers equalities the module imposes.
    dynamic_shapes = tuple({0: Dim.DYNAMIC} for _ in example_inputs) if batch_dynamic else None

    was_training = module.training
    module.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                example_inputs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                external_data=False,
                optimize=True,
                verbose=False,  # None (the default) prints "[torch.onnx] ..." progress to stdout
                report=False,
                profile=False,
                dump_exported_program=False,
                verify=False,
            )
    except torch.onnx.OnnxExporterError as error:
        conflict = _dynamic_shape_conflict(error) if batch_dynamic else None
        if conflict is not None:
            raise ValueError(
                f"cannot export {type(module).__name__} with a dynamic batch dimension (dim 0 of every "
                f"input): {conflict}"
            ) from error
        raise
    finally:
        module.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")

    _check_graph(
        program.model_proto,
        input_names=list(input_names),
        output_names=list(output_names),
        batch_dynamic=batch_dynamic,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    # Save into a private folder beside the destination (same filesystem, so os.replace is atomic);
    # anything else the save might write there is deleted with the folder.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        program.save(staged, external_data=False)
        # Re-read what was written (without following external data) to be sure it is what we checked.
        saved = onnx.load(staged, load_external_data=False)
        _check_graph(
            saved,
            input_names=list(input_names),
            output_names=list(output_names),
            batch_dynamic=batch_dynamic,
        )
        os.replace(staged, path)
    stale_sidecar = path.with_name(path.name + ".data")
    stale_sidecar.unlink(missing_ok=True)
    return path
