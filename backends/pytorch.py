"""PyTorch backend (TorchServe-style): serves an ExportedProgram ``model.pt2`` or a TorchScript ``model.pt``.

- ``model.pt2`` (preferred) is a ``torch.export`` ExportedProgram, loaded with ``torch.export.load``.
  It carries its signature: input names are ``forward``'s argument names, dtypes and shapes come from
  the program (its dynamic dims are -1), and its outputs are named ``output`` / ``output_0, ...``.
- ``model.pt`` is a TorchScript archive (``torch.jit.save``), loaded with ``torch.jit.load``. TorchScript
  records no dtypes or shapes, so config.yaml must list its inputs (named as ``forward``'s arguments)
  and its outputs (in the order ``forward`` returns them).

Nothing is ever unpickled: ``torch.load`` of a pickled module or state_dict would run arbitrary code.
Calls run under ``torch.inference_mode()`` on the device the options choose (CUDA when available
with ``device: auto``). torch is imported on first load, so a server that serves only ONNX never
imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backends.base import (
    Backend,
    DeclaredSignature,
    InferenceInputError,
    ModelLoadError,
    TensorSpec,
    default_output_names,
    missing_framework,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EXPORTED_PROGRAM = "model.pt2"
TORCHSCRIPT = "model.pt"


class TorchOptions(BaseModel):
    """The ``torch:`` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(
        default=0,
        ge=0,
        description="Intra-op threads of PyTorch (torch.set_num_threads); 0: PyTorch's default. PyTorch "
        "has one thread pool per process, so the model loaded last sets it for all torch models.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs: auto is CUDA when torch sees a GPU, else the CPU."
    )


def _import_torch() -> Any:
    """Import torch.

    Raises:
        ModelLoadError: PyTorch is not installed (the message says what to install).
    """
    try:
        import torch
    except ImportError as error:
        raise missing_framework("torch", "PyTorch", error) from None
    return torch


def _numpy_dtype(dtype: torch.dtype, what: str) -> np.dtype[Any]:
    """The numpy dtype of a torch dtype (bool, ints, uints, float16/32/64).

    Raises:
        ModelLoadError: a dtype numpy and the v2 protocol have no equivalent for (e.g. bfloat16, complex).
    """
    torch = _import_torch()
    table = {
        torch.bool: np.bool_,
        torch.int8: np.int8,
        torch.int16: np.int16,
        torch.int32: np.int32,
        torch.int64: np.int64,
        torch.uint8: np.uint8,
        torch.uint16: np.uint16,
        torch.uint32: np.uint32,
        torch.uint64: np.uint64,
        torch.float16: np.float16,
        torch.float32: np.float32,
        torch.float64: np.float64,
    }
    if dtype not in table:
        raise ModelLoadError(f"{what} has dtype {dtype}, which the gateway cannot serve")
    return np.dtype(table[dtype])


def _program_spec(name: str, value: Any, what: str) -> TensorSpec:
    """The spec of an ExportedProgram input or output from its node's example value (a FakeTensor)."""
    torch = _import_torch()
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(f"{what} '{name}' is a {type(value).__name__}, not a tensor; only tensors are served")
    shape = tuple(size if isinstance(size, int) else -1 for size in value.shape)
    return TensorSpec(name=name, dtype=_numpy_dtype(value.dtype, f"{what} '{name}'"), shape=shape)


def _writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself when torch can share it, else a C-contiguous, writable copy.

    Requests decoded from raw bytes are read-only views, which ``torch.from_numpy`` would share
    with a warning.
    """
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


class TorchBackend(Backend):
    """One PyTorch model, from ``model.pt2`` (ExportedProgram) or ``model.pt`` (TorchScript).

    Args:
        version_path: the version folder.
        options: threads and device.
        declared: the config's inputs and outputs; required for TorchScript, ignored for ``model.pt2``.

    Raises (from the constructor):
        ModelLoadError: PyTorch is not installed, neither artifact (or both) is there, the file does
            not load, ``device: cuda`` without a GPU, or a TorchScript model without inputs and
            outputs in config.yaml (or inputs not named as ``forward``'s arguments).
    """

    platform = "pytorch_libtorch"

    def __init__(self, version_path: Path, options: TorchOptions, declared: DeclaredSignature) -> None:
        torch = _import_torch()
        present = [name for name in (EXPORTED_PROGRAM, TORCHSCRIPT) if (version_path / name).is_file()]
        if len(present) != 1:
            raise ModelLoadError(
                f"{version_path.name}/ holds both {EXPORTED_PROGRAM} and {TORCHSCRIPT}; keep one"
                if present
                else f"no {EXPORTED_PROGRAM} (torch.export) or {TORCHSCRIPT} (TorchScript) in {version_path.name}/"
            )
        self._artifact = present[0]
        if options.device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("torch: device cuda, but PyTorch sees no CUDA GPU here; use device: auto or cpu")
        self._device = torch.device("cuda" if options.device != "cpu" and torch.cuda.is_available() else "cpu")
        if options.threads > 0 and torch.get_num_threads() != options.threads:
            torch.set_num_threads(options.threads)
        self._threads = torch.get_num_threads()
        path = version_path / self._artifact
        if self._artifact == EXPORTED_PROGRAM:
            self._load_program(path)
        else:
            self._load_torchscript(path, declared)
        logger.info("loaded %s on %s with %d intra-op threads", path, self._device, self._threads)

    def _load_program(self, path: Path) -> None:
        torch = _import_torch()
        try:
            program = torch.export.load(path)
        except Exception as error:  # torch raises many types for a bad archive
            raise ModelLoadError(f"{path.name} is not an ExportedProgram (torch.export.save): {error}") from None
        values = {node.name: node.meta.get("val") for node in program.graph.nodes}
        self._inputs = [_program_spec(name, values.get(name), "input") for name in program.graph_signature.user_inputs]
        output_nodes = program.graph_signature.user_outputs
        self._outputs = [
            _program_spec(name, values.get(node), "output")
            for name, node in zip(default_output_names(len(output_nodes)), output_nodes, strict=True)
        ]
        try:
            self._module = program.module().to(self._device)
        except Exception as error:
            raise ModelLoadError(f"{path.name} cannot be prepared to run on {self._device}: {error}") from None

    def _load_torchscript(self, path: Path, declared: DeclaredSignature) -> None:
        torch = _import_torch()
        if not declared.inputs or not declared.outputs:
            raise ModelLoadError(
                f"{path.name} is TorchScript, which records no input or output shapes: list the inputs "
                "(named as forward's arguments) and the outputs (in the order forward returns them) "
                "in config.yaml, or serve an ExportedProgram (model.pt2) instead"
            )
        try:
            module = torch.jit.load(str(path), map_location=self._device)
        except Exception as error:  # torch raises many types for a bad archive
            raise ModelLoadError(f"{path.name} cannot be loaded as TorchScript: {error}") from None
        module.eval()
        schema = getattr(module.forward, "schema", None)
        arguments = [argument.name for argument in schema.arguments][1:] if schema is not None else []
        by_name = {spec.name: spec for spec in declared.inputs}
        if arguments and sorted(arguments) != sorted(by_name):
            raise ModelLoadError(
                f"{path.name}: forward takes ({', '.join(arguments)}), but config.yaml lists inputs "
                f"{', '.join(by_name)}; name the inputs as forward's arguments"
            )
        # forward is called positionally, in the order of its arguments.
        self._inputs = [by_name[name] for name in arguments] if arguments else list(declared.inputs)
        self._outputs = list(declared.outputs)
        self._module = module

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """The artifact served, the device and PyTorch's intra-op thread count."""
        return {"artifact": self._artifact, "device": str(self._device), "threads": self._threads}

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Call the model in inference mode; outputs come back to the CPU as numpy arrays.

        Raises:
            InferenceInputError: PyTorch rejected the inputs (a guard of the program, e.g. a dynamic
                dim outside its range, or a size mismatch inside the model).
            RuntimeError: the model returned another number of tensors, or dtypes, than declared.
        """
        torch = _import_torch()
        tensors = [torch.from_numpy(_writable(inputs[spec.name])).to(self._device) for spec in self._inputs]
        try:
            with torch.inference_mode():
                result = self._module(*tensors)
        except torch.cuda.OutOfMemoryError:
            raise
        except (AssertionError, RuntimeError, ValueError, TypeError) as error:
            lines = str(error).strip().splitlines()
            raise InferenceInputError(f"PyTorch: {lines[0] if lines else type(error).__name__}") from error
        returned = list(result) if isinstance(result, tuple | list) else [result]
        if len(returned) != len(self._outputs) or not all(isinstance(item, torch.Tensor) for item in returned):
            raise RuntimeError(
                f"the model returned {type(result).__name__} of {len(returned)} item(s); "
                f"{len(self._outputs)} tensor(s) were declared ({', '.join(spec.name for spec in self._outputs)})"
            )
        outputs: dict[str, np.ndarray] = {}
        for spec, tensor in zip(self._outputs, returned, strict=True):
            if spec.name not in output_names:
                continue
            array = tensor.detach().cpu().numpy()
            if array.dtype != spec.dtype:
                raise RuntimeError(f"output '{spec.name}' came back as {array.dtype}, declared as {spec.dtype}")
            outputs[spec.name] = array
        return outputs
