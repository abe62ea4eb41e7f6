"""ONNX Runtime backend: serves ``model.onnx`` with an ordered list of execution providers.

ONNX Runtime is a core dependency of the gateway (it serves ONNX without any framework installed),
so it is imported at module level.

On a GPU (the CUDA or TensorRT execution provider first) calls run with ONNX Runtime's I/O binding
(its "I/O Binding" API docs, ``IOBinding``): the host inputs are bound as they are (each copied once to
the device), the outputs are bound on the device and each is copied once into the numpy array
returned. (With onnxruntime 1.32 a plain ``InferenceSession.run`` copies each output once too: its
numpy arrays wrap ONNX Runtime's host tensors, as seen on the CPU provider. There the binding costs
2.1-2.4 us a call more than ``run``, measured on the bench's small MLP, so ``auto`` binds on GPU
providers only.)

A model may keep tensors in external data files; :func:`check_external_data` lets it load only when
each one is a regular file inside the version folder (checked at upload and again at every load).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.base import Backend, InferenceInputError, ModelLoadError, TensorSpec

if TYPE_CHECKING:  # ONNX Runtime and onnx are imported where a model is loaded or checked: a process that
    import onnx  # only reads configs (a front end of model runners) never imports them

logger = logging.getLogger(__name__)

ARTIFACT = "model.onnx"

# Short names accepted in config.yaml for the execution providers users ask for most.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}

# Execution providers that run on a CUDA device, whose I/O binding binds outputs there.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

# ONNX Runtime's tensor type strings -> numpy dtypes.
_ORT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(np.object_),
}


class OnnxRuntimeOptions(BaseModel):
    """The ``onnxruntime:`` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    execution_providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in order of preference, ONNX Runtime names or the short "
        "names TensorRT, CUDA, CPU. Providers this onnxruntime build lacks are skipped (with a "
        "warning when config.yaml asked for them); CPU is always the last resort. Default: CUDA "
        "where onnxruntime-gpu is installed, else CPU.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Threads one call may use inside an operator; 0: the CPU cores this process may use "
        "divided among the version's instances (at least 1), so instances neither idle nor oversubscribe cores.",
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let idle intra-op threads spin-wait for work: a little lower latency for "
        "multi-threaded ops, at the cost of CPU the server's own threads need.",
    )
    inter_op_threads: int = Field(
        default=0, ge=0, description="Threads for running independent operators in parallel; 0: default."
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimizations applied at load."
    )
    io_binding: bool | Literal["auto"] = Field(
        default="auto",
        description="Run calls with ONNX Runtime's I/O binding (inputs copied once to the device, outputs "
        "once from it). auto: where the session runs on a GPU provider (CUDA, TensorRT); true: on the CPU "
        "provider too (where it saves nothing); false: never. Never for a model with string tensors.",
    )
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Options of execution providers, by provider (ONNX Runtime names or the short names), "
        "passed to ONNX Runtime as they are, e.g. {TensorRT: {trt_fp16_enable: 'True'}}.",
    )

    @field_validator("execution_providers")
    @classmethod
    def _normalize_providers(cls, providers: list[str]) -> list[str]:
        return [_provider_name(name) for name in providers]

    @field_validator("provider_options")
    @classmethod
    def _normalize_provider_keys(cls, options: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        return {_provider_name(name): dict(values) for name, values in options.items()}


def _provider_name(name: str) -> str:
    """The ONNX Runtime name of a provider given by its short name (``CUDA``) or its own name."""
    return _PROVIDER_ALIASES.get(name.lower(), name)


def import_runtime() -> None:
    """Import ONNX Runtime and onnx now, in a process that will load models (else the first load imports them).

    A version's resident bytes are measured as the process's growth over its load: without this, the
    first ONNX version loaded would count the runtime's own memory (about 35 MB) as its own.
    """
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401


def select_providers(requested: Sequence[str], available: Sequence[str], *, warn: bool = True) -> list[str]:
    """The requested execution providers this build has, in order, with CPU last.

    A requested provider that is not available is dropped, with a logged warning when ``warn`` (e.g.
    CUDA asked for on a machine without ``onnxruntime-gpu``; the default list is not worth a warning).
    """
    chosen: list[str] = []
    for provider in requested:
        if provider in available:
            if provider not in chosen:
                chosen.append(provider)
        elif warn:
            logger.warning(
                "execution provider %s is not available in this onnxruntime build (available: %s); "
                "falling back to the next provider",
                provider,
                ", ".join(available),
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntimeBackend(Backend):
    """One ONNX Runtime inference session over ``<version folder>/model.onnx`` (or the ``artifact`` file named).

    Raises (from the constructor):
        ModelLoadError: the file is missing or ONNX Runtime cannot load it.
    """

    platform = "onnxruntime_onnx"

    def __init__(
        self, version_path: Path, options: OnnxRuntimeOptions, cpu_threads: int = 0, artifact: str | None = None
    ) -> None:
        model_file = version_path / (artifact or ARTIFACT)
        if not model_file.is_file():
            raise ModelLoadError(f"no {model_file.name} in {version_path}")
        # A folder dropped into the repository was never checked by an upload: check it at every load.
        check_external_data(model_file, version_path)
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state

        self._runtime_errors = (onnxruntime_pybind11_state.InvalidArgument, onnxruntime_pybind11_state.Fail)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads or cpu_threads
        session_options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
        )
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel,
            {
                "disable": "ORT_DISABLE_ALL",
                "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL",
            }[options.graph_optimization_level],
        )
        providers = select_providers(
            options.execution_providers,
            ort.get_available_providers(),
            warn="execution_providers" in options.model_fields_set,
        )
        try:
            self._session = ort.InferenceSession(
                str(model_file),
                sess_options=session_options,
                providers=providers,
                provider_options=[options.provider_options.get(provider, {}) for provider in providers],
            )
        except Exception as error:  # ORT raises its own exception types for every load failure
            raise ModelLoadError(f"ONNX Runtime cannot load {model_file.name}: {error}") from error
        # What ONNX Runtime runs with: a provider it could not start (e.g. CUDA without a GPU) is not listed.
        self._providers: list[str] = list(self._session.get_providers())
        logger.info("loaded %s with execution providers %s", model_file, self._providers)
        self._inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self._outputs = [_spec(arg) for arg in self._session.get_outputs()]
        self._string_inputs = {spec.name for spec in self._inputs if spec.dtype == np.object_}
        self._output_device = _output_device(self._providers[0], options)
        strings = bool(self._string_inputs) or any(spec.dtype == np.object_ for spec in self._outputs)
        self._io_binding = not strings and (
            options.io_binding is True or (options.io_binding == "auto" and self._output_device[0] == "cuda")
        )
        self._binding = self._session.io_binding() if self._io_binding else None  # one call at a time uses it

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """``{"execution_providers": [...], "io_binding": bool}``: the providers the session runs with, in order,
        and whether calls run with I/O binding."""
        return {"execution_providers": list(self._providers), "io_binding": self._io_binding}

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the session; BYTES inputs are decoded as UTF-8 for ONNX Runtime's string tensors.

        Raises:
            InferenceInputError: ONNX Runtime rejected the inputs, or a BYTES element is not UTF-8.
        """
        feeds = dict(inputs)
        for name in self._string_inputs:
            try:
                feeds[name] = np.vectorize(bytes.decode, otypes=[np.object_])(feeds[name])
            except UnicodeDecodeError as error:
                raise InferenceInputError(f"input '{name}': ONNX string tensors need UTF-8 ({error})") from None
        try:
            if self._io_binding:
                results = self._run_bound(feeds, output_names)
            else:
                results = self._session.run(list(output_names), feeds)
        except self._runtime_errors as error:
            raise InferenceInputError(str(error)) from error
        outputs: dict[str, np.ndarray] = {}
        for name, value in zip(output_names, results, strict=True):
            array = np.asarray(value)
            if array.dtype.kind in "UO":
                array = np.vectorize(str.encode, otypes=[np.object_])(array)
            outputs[name] = array
        return outputs

    def _run_bound(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """One call with I/O binding: the host inputs bound as they are (ONNX Runtime copies each to the
        session's device once), the outputs left on that device, then copied once into new numpy arrays.
        The instance's binding is reused (a call binds anew and clears it after, so it holds no batch)."""
        binding = self._binding
        assert binding is not None
        device_type, device_id = self._output_device
        try:
            for name, array in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in output_names:
                binding.bind_output(name, device_type, device_id)
            self._session.run_with_iobinding(binding)
            outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        except RuntimeError as error:  # ONNX Runtime wraps what the run raised (the same errors as run's)
            raise InferenceInputError(str(error)) from error
        finally:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        return outputs


def _output_device(provider: str, options: OnnxRuntimeOptions) -> tuple[str, int]:
    """Where the session's outputs are made: ``("cuda", device_id)`` under a CUDA provider (its ``device_id``
    provider option, default 0), else ``("cpu", 0)``."""
    if provider not in _CUDA_PROVIDERS:
        return "cpu", 0
    return "cuda", int(options.provider_options.get(provider, {}).get("device_id", 0))


def _spec(arg: Any) -> TensorSpec:
    try:
        dtype = _ORT_TYPES[arg.type]
    except KeyError:
        raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which the gateway cannot serve") from None
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


# ----------------------------------------------------------------------------- external data


def check_external_data(model_file: Path, root: Path) -> None:
    """Check that every tensor of ``model_file`` stored as external data stays inside the folder ``root``.

    Every tensor of the model is looked at (initializers, sparse initializers, ``Constant`` and other
    node attributes, subgraphs of ``If``/``Loop``/``Scan``, functions), read with
    ``onnx.load(..., load_external_data=False)`` so no data file is opened. Each external ``location``
    must be a relative path without ``..`` that names, from the model file's folder, a regular file
    inside ``root``, reached without passing through a symbolic link (neither the file nor any folder
    between ``root`` and it may be a link), and ``offset``/``length`` must lie within that file.

    Args:
        model_file: the ``.onnx`` file, inside ``root``.
        root: the model version's folder.

    Raises:
        ModelLoadError: ``model_file`` cannot be parsed as ONNX, or a tensor's external data breaks a
            rule above; the message names the file, the tensor and the location.
    """
    try:
        base = model_file.parent.relative_to(root)
    except ValueError:
        raise ModelLoadError(f"{model_file} is not inside {root}") from None
    shown = str(model_file.relative_to(root))
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as error:  # protobuf and onnx raise several types for a damaged file
        raise ModelLoadError(f"cannot load {shown}: it is not a valid ONNX model: {error}") from None
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        problem = _external_data_problem(root, base, location, entries)
        if problem is not None:
            raise ModelLoadError(
                f"{shown}: tensor '{tensor.name}' has external data at location {location!r}, which "
                f"{problem}; external data must be a regular file inside the model's version folder "
                "(a relative path without '..' and without symbolic links)"
            )


def _all_tensors(message: Message) -> Iterator[onnx.TensorProto]:
    """Every TensorProto anywhere inside ``message`` (a ModelProto), however deeply nested."""
    import onnx

    if isinstance(message, onnx.TensorProto):
        yield message
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if isinstance(value, Message):
            yield from _all_tensors(value)
        else:  # a repeated field
            for item in value:
                if isinstance(item, Message):
                    yield from _all_tensors(item)


def _external_data_problem(root: Path, base: Path, location: str, entries: dict[str, str]) -> str | None:
    """Why an external data ``location`` (relative to ``root / base``) is refused, or None when it is safe."""
    if not location:
        return "is empty"
    if "\0" in location:
        return "contains a NUL character"
    windows = PureWindowsPath(location)
    if PurePosixPath(location).is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "is an absolute path"
    parts = [part for part in location.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        return "contains '..'"
    if not parts:
        return "names no file"
    path = root
    components = [*base.parts, *parts]
    for index, part in enumerate(components):
        path = path / part
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return "does not exist"
        except OSError as error:
            return f"cannot be read ({error.strerror})"
        if stat.S_ISLNK(status.st_mode):
            last = index == len(components) - 1
            return "is a symbolic link" if last else f"passes through the symbolic link {part!r}"
        if index < len(components) - 1 and not stat.S_ISDIR(status.st_mode):
            return f"goes through {part!r}, which is not a folder"
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else status.st_size - offset
    except ValueError:
        return "has an offset or length that is not an integer"
    if offset < 0 or length < 0 or offset + length > status.st_size:
        return f"has offset {offset} and length {length}, past the end of the file ({status.st_size} bytes)"
    return None
