"""PyTorch sources: an ``nn.Module``, an ExportedProgram (``.pt2``) or a TorchScript file, exported to ONNX
or, natively, to an ExportedProgram ``model.pt2`` that the gateway's torch backend serves.

- A module (from an entry point or the Python API) is exported with the torch.onnx dynamo exporter,
  its dynamic dims declared as named ``torch.export.Dim`` so the graph's symbols carry the labels.
- An ExportedProgram already fixes which dims are dynamic; its symbols are renamed to labels (dim 0
  ``batch``, others from ``--dynamic-axes`` or ``<input>_<axis>``).
- TorchScript cannot go through torch.export; it is exported with torch.onnx's TorchScript-based
  exporter, with the dynamic axes of the input specs given by ``--input-spec``.

torch is imported lazily, so this module imports without torch installed (only ``onnx`` is needed).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from backends.pytorch import EXPORTED_PROGRAM, TORCHSCRIPT
from converters.model import (
    BATCH_LABEL,
    ConversionError,
    DynamicAxes,
    InputSpec,
    SourceModel,
    default_output_names,
    parameter_names,
    specs_from_examples,
)
from converters.onnx_graph import graph_dims, rename_dim_params, save_onnx

if TYPE_CHECKING:
    import torch

__all__ = [
    "ExportedProgramSource",
    "TorchModuleSource",
    "TorchScriptSource",
    "export_torch_to_onnx",
    "load_torch_file",
]

# The dynamo exporter's op registry logs one WARNING per torchvision op when torchvision is not
# installed ("torchvision is not installed. Skipping torchvision::nms", ...). That is noise for us.
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)

#: Suffixes of files saved with ``torch.jit.save``.
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence known, harmless chatter of the torch.onnx exporters for the duration of the block.

    Lowers the registry logger to ERROR and ignores torch's own Future/Deprecation/User warnings
    raised while exporting. Errors still come through. ``warnings.catch_warnings`` is process-global
    state (not thread-safe), like every use of it.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    previous_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=r"torch\..*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, previous_levels, strict=True):
            lg.setLevel(level)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``__cause__`` chain."""
    seen: set[int] = set()
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def _describe_cause(error: BaseException) -> str:
    """``<type>: <first line>`` of the root cause of a failed export."""
    cause = _root_cause(error)
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{type(cause).__name__}: {first_line}"


def _conversion_error(error: BaseException, what: str) -> ConversionError:
    """A :class:`ConversionError` naming the root cause of a failed ONNX export and what to try next."""
    return ConversionError(
        f"cannot export {what} to ONNX: {_describe_cause(error)}. "
        "If an operator has no ONNX translation, try a newer torch/onnxscript, or rewrite that part of "
        "the model with supported operators."
    )


def _save_program(program: torch.export.ExportedProgram, version_dir: Path) -> None:
    """Write ``program`` as ``version_dir/model.pt2`` (``torch.export.save``)."""
    import torch

    version_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, version_dir / EXPORTED_PROGRAM)


def _check_graph(model: onnx.ModelProto, specs: Sequence[InputSpec], output_names: Sequence[str]) -> None:
    """Check the exported graph's input and output names, and that every dynamic dim is symbolic.

    Raises:
        ConversionError: names differ from those requested, or a dim declared dynamic was fixed
            by the model (e.g. a reshape to a constant batch size).
    """
    graph_inputs = [value.name for value in model.graph.input]
    graph_outputs = [value.name for value in model.graph.output]
    if graph_inputs != [spec.name for spec in specs]:
        raise ConversionError(f"exported graph has inputs {graph_inputs}, expected {[s.name for s in specs]}")
    if graph_outputs != list(output_names):
        raise ConversionError(f"exported graph has outputs {graph_outputs}, expected {list(output_names)}")
    for spec, value in zip(specs, model.graph.input, strict=True):
        dims = graph_dims(value)
        fixed = [
            axis for axis, label in spec.dynamic_axes().items() if axis < len(dims) and isinstance(dims[axis], int)
        ]
        if fixed:
            raise ConversionError(
                f"input {spec.name!r}: axes {fixed} are declared dynamic but the exported graph fixes them "
                f"({dims}); the model probably reshapes to a constant size there"
            )


def _dynamic_shapes(specs: Sequence[InputSpec]) -> tuple[dict[int, Any], ...]:
    """One ``{axis: torch.export.Dim(label)}`` per input; inputs sharing a label share the Dim."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    return tuple(
        {axis: dims.setdefault(label, Dim(label)) for axis, label in spec.dynamic_axes().items()} for spec in specs
    )


def export_torch_to_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_specs: Sequence[InputSpec],
    output_names: Sequence[str],
) -> Path:
    """Export ``module`` with the torch.onnx dynamo exporter into one self-contained ONNX file.

    The module is traced in eval mode (its training mode is restored afterwards). Each labelled dim
    of ``input_specs`` becomes a ``torch.export.Dim`` of that name, so the graph's symbolic dims are
    the labels (``batch``, ``sequence``) and inputs with the same label share one symbol. The file
    is written atomically (:func:`converters.onnx_graph.save_onnx`).

    Args:
        module: the model; its ``forward`` takes the tensors of ``example_inputs`` positionally.
        example_inputs: one example tensor per input spec; any size along dynamic dims (1 included).
        path: destination ``.onnx`` file; an existing file is replaced.
        input_specs: names, dtypes and dims of the inputs, in ``forward``'s order.
        output_names: one name per tensor the module returns, in order.

    Returns:
        ``path``.

    Raises:
        ConversionError: the module cannot be exported (the message names the root cause, e.g. an
            operator without an ONNX translation, and what to try next), or the graph fixes a
            dim declared dynamic.
    """
    import torch

    was_training = module.training
    module.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                example_inputs,
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(input_specs),
                input_names=[spec.name for spec in input_specs],
                output_names=list(output_names),
                external_data=False,
                optimize=True,
                verbose=False,  # None (the default) prints "[torch.onnx] ..." progress to stdout
                report=False,
            )
    except Exception as error:  # the exporter raises many types; all mean "does not convert"
        raise _conversion_error(error, type(module).__name__) from error
    finally:
        module.train(was_training)
    if program is None:
        raise ConversionError("torch.onnx.export(dynamo=True) returned no ONNX program")
    _check_graph(program.model_proto, input_specs, output_names)
    return save_onnx(program.model_proto, path)


def _to_tensors(specs: Sequence[InputSpec], inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(inputs[spec.name])) for spec in specs)


def _outputs_as_numpy(result: Any) -> list[np.ndarray]:
    """The tensors a torch model returned (one tensor, or a tuple/list of them) as numpy arrays.

    Raises:
        ConversionError: the model returned something other than tensors.
    """
    import torch

    items = list(result) if isinstance(result, tuple | list) else [result]
    if not items or not all(isinstance(item, torch.Tensor) for item in items):
        raise ConversionError(f"the model must return a tensor or a tuple of tensors, got {type(result).__name__}")
    return [item.detach().cpu().numpy() for item in items]


class _TorchSource(SourceModel):
    """What the three torch sources share: running a callable on named numpy inputs."""

    framework = "torch"
    native_backend = "torch"

    def __init__(self, input_specs: list[InputSpec], example_inputs: dict[str, np.ndarray] | None) -> None:
        self.input_specs = input_specs
        self.example_inputs = example_inputs
        self._output_names: list[str] = []

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        raise NotImplementedError

    @property
    def output_names(self) -> list[str]:
        """``output`` for one output, ``output_0``, ``output_1``... for several."""
        return self._output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model in torch (inference mode, CPU) on numpy inputs; returns numpy outputs by name."""
        import torch

        with torch.inference_mode():
            outputs = _outputs_as_numpy(self._call(_to_tensors(self.input_specs, inputs)))
        if len(outputs) != len(self._output_names):
            raise ConversionError(f"the model returned {len(outputs)} outputs, expected {len(self._output_names)}")
        return dict(zip(self._output_names, outputs, strict=True))

    def _count_outputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        import torch

        with torch.inference_mode():
            outputs = _outputs_as_numpy(self._call(_to_tensors(self.input_specs, inputs)))
        self._output_names = default_output_names(len(outputs))


class TorchModuleSource(_TorchSource):
    """An in-memory ``torch.nn.Module`` with example inputs.

    Args:
        module: the model; ``forward`` takes one tensor per example input, positionally, and
            returns a tensor or a tuple of tensors.
        example_inputs: example arrays or tensors, batch first (e.g. ``float32 [2, 64]``).
        dynamic_axes: extra dynamic axes per input name (dim 0 is always the batch).

    Input names are ``forward``'s parameter names (``input``/``input_<i>`` when they cannot be read).

    Raises:
        ValueError: the examples do not fit (see :func:`converters.model.specs_from_examples`).
        ConversionError: the module does not return tensors.
    """

    def __init__(
        self, module: torch.nn.Module, example_inputs: Sequence[Any], dynamic_axes: DynamicAxes | None = None
    ) -> None:
        arrays = [_as_array(value) for value in example_inputs]
        names = parameter_names(module.forward, len(arrays))
        super().__init__(specs_from_examples(names, arrays, dynamic_axes), dict(zip(names, arrays, strict=True)))
        self.module = module
        module.eval()
        self._count_outputs(self.example_inputs or {})

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        return self.module(*tensors)

    def export_onnx(self, path: Path) -> None:
        """Export with the dynamo exporter; see :func:`export_torch_to_onnx`."""
        example = _to_tensors(self.input_specs, self.example_inputs or {})
        export_torch_to_onnx(self.module, example, path, input_specs=self.input_specs, output_names=self.output_names)

    def export_native(self, version_dir: Path) -> None:
        """Trace the module (eval mode) with ``torch.export.export``, every labelled dim a named
        ``torch.export.Dim``, and save the program as ``version_dir/model.pt2``.

        Raises:
            ConversionError: torch.export cannot trace the module (the message names the root cause).
        """
        import torch

        example = _to_tensors(self.input_specs, self.example_inputs or {})
        try:
            with _quiet_exporter():
                program = torch.export.export(self.module, example, dynamic_shapes=_dynamic_shapes(self.input_specs))
        except Exception as error:  # torch.export raises many types; all mean "does not trace"
            raise ConversionError(
                f"cannot export {type(self.module).__name__} with torch.export: {_describe_cause(error)}. "
                "torch.export traces one graph: replace data-dependent Python control flow (torch.cond), "
                "or declare fewer dynamic axes if the model fixes their size."
            ) from error
        _save_program(program, version_dir)


class ExportedProgramSource(_TorchSource):
    """A ``torch.export.ExportedProgram`` (from ``torch.export.save``), with the examples it was traced with.

    The program fixes which dims are dynamic. Its symbols become labels: the symbol at dim 0 of an
    input is ``batch``, a symbol ``dynamic_axes`` names gets that label, any other
    ``<input>_<axis>`` where it first appears.

    Raises:
        ValueError: the program has no example inputs, takes keyword inputs, or ``dynamic_axes``
            declares a dim dynamic that the program fixes.
    """

    def __init__(self, program: torch.export.ExportedProgram, dynamic_axes: DynamicAxes | None = None) -> None:
        import torch

        if program.example_inputs is None:
            raise ValueError("the ExportedProgram carries no example inputs; export it again with torch.export.export")
        args, kwargs = program.example_inputs
        if kwargs:
            raise ValueError(
                f"the ExportedProgram takes keyword inputs {sorted(kwargs)}; only positional are supported"
            )
        names = [str(name) for name in program.graph_signature.user_inputs]
        placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
        dynamic_axes = dynamic_axes or {}
        self._symbol_labels: dict[str, str] = {}
        specs: list[InputSpec] = []
        for name, example in zip(names, args, strict=True):
            shape = placeholders[name].meta["val"].shape
            dims: list[int | str] = []
            for axis, size in enumerate(shape):
                if isinstance(size, torch.SymInt):
                    symbol = str(size)
                    wanted = dynamic_axes.get(name, {}).get(axis) or (BATCH_LABEL if axis == 0 else f"{name}_{axis}")
                    dims.append(self._symbol_labels.setdefault(symbol, wanted))
                else:
                    if axis in dynamic_axes.get(name, {}):
                        raise ValueError(
                            f"input {name!r} axis {axis} is fixed to {int(size)} in the ExportedProgram; "
                            "export it again with dynamic_shapes declaring that axis dynamic"
                        )
                    dims.append(int(size))
            specs.append(InputSpec(name, _as_array(example).dtype, tuple(dims)))
        super().__init__(specs, {name: _as_array(value) for name, value in zip(names, args, strict=True)})
        self.program = program
        self._module = program.module()
        self._count_outputs(self.example_inputs or {})

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        return self._module(*tensors)

    def export_onnx(self, path: Path) -> None:
        """Convert the program with the dynamo exporter and rename its symbols to the labels."""
        import torch

        try:
            with _quiet_exporter():
                onnx_program = torch.onnx.export(
                    self.program,
                    dynamo=True,
                    input_names=[spec.name for spec in self.input_specs],
                    output_names=self.output_names,
                    external_data=False,
                    optimize=True,
                    verbose=False,
                    report=False,
                )
        except Exception as error:
            raise _conversion_error(error, "the ExportedProgram") from error
        if onnx_program is None:
            raise ConversionError("torch.onnx.export returned no ONNX program")
        model = onnx_program.model_proto
        rename_dim_params(model, self._symbol_labels)
        _check_graph(model, self.input_specs, self.output_names)
        save_onnx(model, path)

    def export_native(self, version_dir: Path) -> None:
        """Save the program as it is, as ``version_dir/model.pt2``."""
        _save_program(self.program, version_dir)


class TorchScriptSource(_TorchSource):
    """A TorchScript module (``torch.jit.save``), described by input specs since it carries no examples.

    Args:
        module: the loaded ScriptModule.
        input_specs: one per ``forward`` argument, in order (from ``--input-spec``).
        example_inputs: arrays matching the specs, used to count the outputs and to export.
    """

    def __init__(
        self, module: torch.jit.ScriptModule, input_specs: list[InputSpec], example_inputs: dict[str, np.ndarray]
    ) -> None:
        super().__init__(input_specs, example_inputs)
        self.module = module
        self._count_outputs(example_inputs)

    @classmethod
    def from_examples(
        cls, module: torch.jit.ScriptModule, example_inputs: Sequence[Any], dynamic_axes: DynamicAxes | None = None
    ) -> TorchScriptSource:
        """A source described by example inputs (named after ``forward``'s arguments) instead of specs."""
        arrays = [_as_array(value) for value in example_inputs]
        schema = getattr(module.forward, "schema", None)  # TorchScript keeps the argument names here
        names = [argument.name for argument in schema.arguments][1:] if schema is not None else []
        if len(names) != len(arrays):
            names = parameter_names(module.forward, len(arrays))
        return cls(module, specs_from_examples(names, arrays, dynamic_axes), dict(zip(names, arrays, strict=True)))

    def _call(self, tensors: tuple[torch.Tensor, ...]) -> Any:
        return self.module(*tensors)

    def export_onnx(self, path: Path) -> None:
        """Export with torch.onnx's TorchScript-based exporter (torch.export cannot trace ScriptModules)."""
        import io

        import torch

        batch_dynamic = all(spec.dims and spec.dims[0] == BATCH_LABEL for spec in self.input_specs)
        dynamic_axes: dict[str, dict[int, str]] = {spec.name: spec.dynamic_axes() for spec in self.input_specs}
        if batch_dynamic:
            dynamic_axes.update({name: {0: BATCH_LABEL} for name in self.output_names})
        buffer = io.BytesIO()
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    self.module,
                    _to_tensors(self.input_specs, self.example_inputs or {}),
                    buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
                    dynamo=False,
                    input_names=[spec.name for spec in self.input_specs],
                    output_names=self.output_names,
                    dynamic_axes=dynamic_axes,
                )
        except Exception as error:
            raise _conversion_error(error, "the TorchScript module") from error
        model = onnx.load_from_string(buffer.getvalue())
        _check_graph(model, self.input_specs, self.output_names)
        save_onnx(model, path)

    def export_native(self, version_dir: Path) -> None:
        """Not available: torch.export cannot trace a ScriptModule.

        Raises:
            ConversionError: always, saying what to do instead.
        """
        raise ConversionError(
            "a TorchScript module cannot be re-exported with torch.export (--format native writes an "
            "ExportedProgram). Push it as ONNX (the default), or serve the file itself: put it into the "
            f"model repository as <model>/<version>/{TORCHSCRIPT} with a config.yaml listing its inputs "
            "and outputs"
        )


def _as_array(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor or a nested list."""
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def is_torchscript_file(path: Path) -> bool:
    """Whether ``path`` is a zip archive written by ``torch.jit.save`` (it holds a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_torch_file(
    path: Path,
    *,
    input_specs: list[InputSpec] | None,
    example_inputs: dict[str, np.ndarray] | None,
    dynamic_axes: DynamicAxes | None = None,
) -> SourceModel:
    """Load a ``.pt2`` ExportedProgram or a TorchScript file as a source.

    Args:
        path: the file.
        input_specs: required for TorchScript (it carries no input shapes); ignored for ``.pt2``.
        example_inputs: arrays for ``input_specs`` (TorchScript only).
        dynamic_axes: labels for the dynamic axes of a ``.pt2`` program.

    Raises:
        ValueError: not a file torch can load safely (e.g. a pickled module or state_dict, which
            would need unpickling), or a TorchScript file without input specs.
    """
    import torch

    if path.suffix == ".pt2":
        from backends import ModelLoadError
        from backends.pytorch import load_exported_program

        try:  # the gateway's checked loader: a crafted .pt2 would run code through torch.export.load
            program = load_exported_program(path)
        except ModelLoadError as error:
            raise ValueError(f"{path} cannot be loaded as an ExportedProgram (torch.export.save): {error}") from None
        return ExportedProgramSource(program, dynamic_axes)
    if not is_torchscript_file(path):
        raise ValueError(
            f"{path} is neither an ExportedProgram (.pt2) nor a TorchScript archive. Pickled modules and "
            "state_dicts are not loaded (unpickling runs arbitrary code): save the model with "
            "torch.export.save (.pt2) or torch.jit.save, or pass an entry point 'file.py:function'"
        )
    if not input_specs or example_inputs is None:
        raise ValueError(f"{path} is TorchScript, which carries no input shapes: give them with --input-spec")
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as error:
        raise ValueError(f"{path} cannot be loaded as TorchScript: {error}") from error
    module.eval()
    return TorchScriptSource(module, input_specs, example_inputs)
