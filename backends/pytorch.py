"""PyTorch backend (TorchServe-style): serves an ExportedProgram ``model.pt2`` or a TorchScript ``model.pt``.

- ``model.pt2`` (preferred) is a ``torch.export`` ExportedProgram, loaded with ``torch.export.load``.
  It carries its signature: input names are ``forward``'s argument names, dtypes and shapes come from
  the program (its dynamic dims are -1), and its outputs are named ``output`` / ``output_0, ...``.
- ``model.pt`` is a TorchScript archive (``torch.jit.save``), loaded with ``torch.jit.load``. TorchScript
  records no dtypes or shapes, so the model's config must list its inputs (named as ``forward``'s
  arguments, or ``<name>__<index>`` by position as Triton's libtorch backend names them) and its
  outputs (in the order ``forward`` returns them, or by their ``__<index>``).

Nothing is unpickled with Python's pickle: ``torch.load`` of a pickled module or state_dict would run
arbitrary code. ``torch.export.load`` itself can run code from a crafted archive (it unpickles some
payloads with ``weights_only=False`` or ``pickle.loads``, and parses shape expressions with
``sympy.sympify``, which evaluates them), so ``model.pt2`` goes through :func:`load_exported_program`,
which refuses such archives before torch reads them. TorchScript's ``data.pkl`` and ``constants.pkl``
are read by torch's C++ unpickler, which only builds tensors, containers and the archive's own
TorchScript classes, never calling Python functions. TorchScript code and ExportedProgram graphs still
run as the model: serve them from trusted sources (see SECURITY.md).
Calls run under ``torch.inference_mode()`` on the device the options choose (CUDA when available
with ``device: auto``). torch is imported on first load, so a server that serves only ONNX never
imports it.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
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
        artifact: the file to load instead of ``model.pt2`` / ``model.pt`` (Triton's
            ``default_model_filename``): an ExportedProgram when its name ends in ``.pt2``, else TorchScript.

    Raises (from the constructor):
        ModelLoadError: PyTorch is not installed, neither artifact (or both) is there, the file does
            not load, ``device: cuda`` without a GPU, or a TorchScript model without inputs and
            outputs in config.yaml (or inputs not named as ``forward``'s arguments).
    """

    platform = "pytorch_libtorch"

    def __init__(
        self, version_path: Path, options: TorchOptions, declared: DeclaredSignature, artifact: str | None = None
    ) -> None:
        torch = _import_torch()
        if artifact is not None:
            if not (version_path / artifact).is_file():
                raise ModelLoadError(f"no {artifact} in {version_path.name}/")
            present = [artifact]
        else:
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
        if self._artifact.endswith(".pt2"):
            self._load_program(path)
        else:
            self._load_torchscript(path, declared)
        logger.info("loaded %s on %s with %d intra-op threads", path, self._device, self._threads)

    def _load_program(self, path: Path) -> None:
        program = load_exported_program(path)
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
                "in the model's config, or serve an ExportedProgram (model.pt2) instead"
            )
        try:
            module = torch.jit.load(str(path), map_location=self._device)
        except Exception as error:  # torch raises many types for a bad archive
            raise ModelLoadError(f"{path.name} cannot be loaded as TorchScript: {error}") from None
        module.eval()
        schema = getattr(module.forward, "schema", None)
        arguments = [argument.name for argument in schema.arguments][1:] if schema is not None else []
        by_name = {spec.name: spec for spec in declared.inputs}
        by_index = _indexed_names(list(by_name))
        # forward is called positionally: in the order of its arguments, or of the names' __<index>.
        if arguments and sorted(arguments) == sorted(by_name):
            self._inputs = [by_name[name] for name in arguments]
        elif by_index is not None and (not arguments or len(arguments) == len(by_index)):
            self._inputs = [by_name[name] for name in by_index]
        elif arguments:
            raise ModelLoadError(
                f"{path.name}: forward takes ({', '.join(arguments)}), but the config lists inputs "
                f"{', '.join(by_name)}; name the inputs as forward's arguments, or <name>__<index> by position"
            )
        else:
            self._inputs = list(declared.inputs)
        outputs = {spec.name: spec for spec in declared.outputs}
        output_order = _indexed_names(list(outputs)) or list(outputs)
        self._outputs = [outputs[name] for name in output_order]
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


#: Triton's libtorch naming convention: a tensor named ``<name>__<index>`` is forward's argument (or
#: returned tensor) at position ``index``.
_INDEXED_NAME = re.compile(r".+__(?P<index>0|[1-9][0-9]*)")


def _indexed_names(names: list[str]) -> list[str] | None:
    """``names`` ordered by their ``__<index>`` suffixes, when every name has one and they are 0 to n-1; else None."""
    matches = [_INDEXED_NAME.fullmatch(name) for name in names]
    if not names or any(match is None for match in matches):
        return None
    indices = {int(match["index"]): name for match, name in zip(matches, names, strict=True) if match is not None}
    if sorted(indices) != list(range(len(names))):
        return None
    return [indices[index] for index in range(len(names))]


# ----------------------------------------------------------------------------- safe ExportedProgram loading

#: Functions a shape expression of an ExportedProgram may call: what ``sympy.srepr`` writes for the
#: expressions torch.export records (sympy's and ``torch.utils._sympy.functions``'s classes).
_SYMPY_CALLS = frozenset(
    {
        # sympy
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
        "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality",
        "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Xor",
        "Piecewise", "ExprCondPair", "Tuple", "ITE", "BooleanTrue", "BooleanFalse", "Infinity",
        "NegativeInfinity", "NaN", "ComplexInfinity", "Zero", "One", "NegativeOne", "Half",
        # torch.utils._sympy
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
        "ToFloat", "Identity", "IntInfinity", "NegativeIntInfinity",
    }
)  # fmt: skip
#: Names a shape expression may use as values.
_SYMPY_NAMES = frozenset({"oo", "zoo", "nan", "true", "false", "True", "False", "None", "int_oo"})
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
#: Longest shape expression accepted (torch writes short ones; the parser must not be given a bomb).
_MAX_EXPRESSION_CHARS = 10_000


def load_exported_program(path: Path) -> Any:
    """Load ``model.pt2`` (``torch.export.save``) after checking it holds nothing that would run code.

    ``torch.export.load`` is not safe for untrusted files (torch's own documentation says so): it
    unpickles sample inputs with a fallback to ``weights_only=False``, tensor-subclass weights and
    constants with ``weights_only=False``, opaque constants with ``pickle.loads``, loads AOTInductor
    shared libraries, falls back to an older zip layout read the same way, and parses shape
    expressions with ``sympy.sympify`` (an ``eval``). This function reads the file once into memory and,
    with torch's own archive reader, refuses an archive that

    - holds AOTInductor (compiled native code) or the legacy pickled weights/constants files;
    - has a weight or constant stored as a pickle (tensor subclasses, script objects, opaque objects);
    - has sample inputs that torch's restricted ``weights_only=True`` unpickler does not accept (so
      torch never reaches its ``weights_only=False`` fallback);
    - has a shape expression that is not a plain ``sympy.srepr`` of allowed functions, numbers and
      symbol names, or a subgraph name that is not an identifier;

    then loads the same bytes with torch's reader (never the legacy fallback).

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        ModelLoadError: PyTorch is missing, the file is not a torch.export archive, it holds one of
            the payloads above (the message names it), or torch cannot load it.
    """
    torch = _import_torch()
    try:
        from torch.export.pt2_archive import _package as pt2_package
        from torch.export.pt2_archive import constants as pt2
    except ImportError as error:
        raise ModelLoadError(
            f"PyTorch {torch.__version__} has no torch.export archive reader the gateway knows: {error}"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"{path.name} cannot be read: {error}") from None
    try:
        reader = pt2_package.PT2ArchiveReader(io.BytesIO(data))
    except Exception as error:  # torch raises RuntimeError, ValueError... for a file of another kind
        raise ModelLoadError(
            f"{path.name} is not an ExportedProgram archive (torch.export.save): {_first_line(error)}"
        ) from None
    with reader:
        try:
            _check_exported_program_archive(torch, pt2, reader)
        except ModelLoadError as error:
            raise ModelLoadError(f"{path.name} refused: {error}") from None
        except Exception as error:  # a damaged archive
            raise ModelLoadError(f"{path.name} is a damaged ExportedProgram archive: {_first_line(error)}") from None
    try:
        contents = pt2_package.load_pt2(io.BytesIO(data))
        return contents.exported_programs["model"]
    except Exception as error:  # torch raises many types for a bad archive
        raise ModelLoadError(
            f"{path.name} is not an ExportedProgram (torch.export.save): {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_exported_program_archive(torch: Any, pt2: Any, reader: Any) -> None:
    """Raise ModelLoadError when the archive holds something that would run code when torch loads it."""
    names: list[str] = reader.get_file_names()
    if reader.read_string(pt2.ARCHIVE_VERSION_PATH) != pt2.ARCHIVE_VERSION_VALUE:
        raise ModelLoadError("its archive version is not the one this PyTorch writes")
    for name in names:
        if name.startswith(pt2.AOTINDUCTOR_DIR):
            raise ModelLoadError(f"it holds AOTInductor compiled code ({name}), which would be loaded as native code")
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    models = [name[len(prefix) : -len(suffix)] for name in names if name.startswith(pt2.MODELS_DIR)]
    if "model" not in models:
        raise ModelLoadError(f"it holds no program named 'model' ({prefix}model{suffix})")
    for model in models:
        for legacy in (f"{pt2.WEIGHTS_DIR}{model}.pt", f"{pt2.CONSTANTS_DIR}{model}.pt"):
            if legacy in names:
                raise ModelLoadError(f"it holds {legacy}, a pickle in the legacy layout that torch would unpickle")
        for kind, config_format in (
            ("weight", pt2.WEIGHTS_CONFIG_FILENAME_FORMAT),
            ("constant", pt2.CONSTANTS_CONFIG_FILENAME_FORMAT),
        ):
            config_file = config_format.format(model)
            if config_file not in names:
                continue
            config = json.loads(reader.read_string(config_file)).get("config", {})
            for fqn, payload in config.items():
                path_name = str(payload.get("path_name", ""))
                pickled = bool(payload.get("use_pickle")) or (
                    kind == "constant" and not path_name.startswith(pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
                )
                if pickled:
                    raise ModelLoadError(
                        f"{kind} '{fqn}' is stored as a pickle (a tensor subclass or a Python/script object), "
                        "which torch would unpickle with full pickle; only plain tensors are accepted"
                    )
        sample_inputs = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        if sample_inputs in names:
            payload_bytes = reader.read_bytes(sample_inputs)
            if payload_bytes:
                try:
                    torch.load(io.BytesIO(payload_bytes), weights_only=True)
                except Exception as error:
                    raise ModelLoadError(
                        f"its sample inputs ({sample_inputs}) are not plain tensors: torch's restricted unpickler "
                        f"refuses them ({type(error).__name__}), and torch would retry with full pickle"
                    ) from None
        program = json.loads(reader.read_string(f"{prefix}{model}{suffix}"))
        for key, value in _json_items(program):
            if key == "expr_str":
                _check_shape_expression(value)
            elif key == "as_graph" and isinstance(value, dict):
                graph_name = value.get("name")
                if not (isinstance(graph_name, str) and graph_name.isascii() and graph_name.isidentifier()):
                    raise ModelLoadError(f"a subgraph is named {graph_name!r}, which is not an identifier")


def _json_items(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every object inside a parsed JSON document."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, child
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _check_shape_expression(text: Any) -> None:
    """Refuse a shape expression that is not a ``sympy.srepr`` of allowed functions, numbers and symbols.

    torch parses these strings with ``sympy.sympify``, which evaluates them as Python.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPRESSION_CHARS:
        raise ModelLoadError("a shape expression is not a string of reasonable length")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ModelLoadError(f"the shape expression {text[:80]!r} is not an expression") from None
    shown = text[:80]
    allowed_strings: set[int] = set()  # ids of the string constants that are a Symbol's name or a Float's digits
    for node in ast.walk(tree):  # breadth first: a call is seen before its arguments
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
                raise ModelLoadError(f"the shape expression {shown!r} calls something other than sympy's classes")
            if any(keyword.arg is None for keyword in node.keywords):
                raise ModelLoadError(f"the shape expression {shown!r} unpacks keyword arguments")
            if node.func.id in ("Symbol", "Float") and node.args:
                first = node.args[0]
                pattern = _SYMBOL_NAME if node.func.id == "Symbol" else _NUMBER
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and pattern.fullmatch(first.value):
                    allowed_strings.add(id(first))
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and id(node) not in allowed_strings:
                raise ModelLoadError(f"the shape expression {shown!r} holds the string {node.value[:40]!r}")
            if not (node.value is None or isinstance(node.value, int | float | str)):
                raise ModelLoadError(f"the shape expression {shown!r} holds a constant of another kind")
        elif isinstance(node, ast.Name):
            if node.id not in _SYMPY_NAMES and node.id not in _SYMPY_CALLS:
                raise ModelLoadError(f"the shape expression {shown!r} names {node.id!r}")
        elif not isinstance(
            node, ast.Expression | ast.Load | ast.UnaryOp | ast.USub | ast.UAdd | ast.keyword | ast.Tuple
        ):
            raise ModelLoadError(f"the shape expression {shown!r} holds a {type(node).__name__}, which is not allowed")
