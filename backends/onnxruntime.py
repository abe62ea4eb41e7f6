"""ONNX Runtime backend: serves ``model.onnx`` with an ordered list of execution providers.

ONNX Runtime is a core dependency of the gateway (it serves ONNX without any framework installed),
so it is imported at module level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.base import Backend, InferenceInputError, ModelLoadError, TensorSpec

logger = logging.getLogger(__name__)

ARTIFACT = "model.onnx"

# Short names accepted in config.yaml for the execution providers users ask for most.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

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

    @field_validator("execution_providers")
    @classmethod
    def _normalize_providers(cls, providers: list[str]) -> list[str]:
        return [_PROVIDER_ALIASES.get(name.lower(), name) for name in providers]


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
    """One ONNX Runtime inference session over ``<version folder>/model.onnx``.

    Raises (from the constructor):
        ModelLoadError: the file is missing or ONNX Runtime cannot load it.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, version_path: Path, options: OnnxRuntimeOptions, cpu_threads: int = 0) -> None:
        model_file = version_path / ARTIFACT
        if not model_file.is_file():
            raise ModelLoadError(f"no {ARTIFACT} in {version_path}")
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
            self._session = ort.InferenceSession(str(model_file), sess_options=session_options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for every load failure
            raise ModelLoadError(f"ONNX Runtime cannot load {model_file.name}: {error}") from error
        # What ONNX Runtime runs with: a provider it could not start (e.g. CUDA without a GPU) is not listed.
        self._providers: list[str] = list(self._session.get_providers())
        logger.info("loaded %s with execution providers %s", model_file, self._providers)
        self._inputs = [_spec(arg) for arg in self._session.get_inputs()]
        self._outputs = [_spec(arg) for arg in self._session.get_outputs()]
        self._string_inputs = {spec.name for spec in self._inputs if spec.dtype == np.object_}

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """``{"execution_providers": [...]}``: the providers the session runs with, in order."""
        return {"execution_providers": list(self._providers)}

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
            results = self._session.run(list(output_names), feeds)
        except (ort_errors.InvalidArgument, ort_errors.Fail) as error:
            raise InferenceInputError(str(error)) from error
        outputs: dict[str, np.ndarray] = {}
        for name, value in zip(output_names, results, strict=True):
            array = np.asarray(value)
            if array.dtype.kind in "UO":
                array = np.vectorize(str.encode, otypes=[np.object_])(array)
            outputs[name] = array
        return outputs


def _spec(arg: Any) -> TensorSpec:
    try:
        dtype = _ORT_TYPES[arg.type]
    except KeyError:
        raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which the gateway cannot serve") from None
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)
