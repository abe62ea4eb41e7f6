"""The interface every backend implements: a loaded model instance that runs numpy tensors.

A backend knows nothing of HTTP, gRPC, JSON or the model repository. It is built from one model
version folder and its options, declares its input and output tensor specs, and runs
``dict[str, np.ndarray] -> dict[str, np.ndarray]``. BYTES tensors are numpy ``object`` arrays whose
elements are ``bytes``, in and out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, element dtype and shape of a model input or output.

    ``shape`` is the full shape including any batch dimension, with -1 for a dimension whose size
    varies from call to call. ``dtype`` is ``object`` for string (BYTES) tensors.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DeclaredSignature:
    """The inputs and outputs a model's config declares, for artifacts that carry no signature of their own.

    TorchScript records neither dtypes nor shapes, so the backend serving it takes them from here;
    backends whose artifact has a signature (ONNX, ExportedProgram, SavedModel) ignore it, and the
    repository checks the config against what they read instead. Shapes are full shapes, as in
    :class:`TensorSpec` (batch dim included, -1 where the size varies).
    """

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


def default_output_names(count: int) -> list[str]:
    """Names of unnamed model outputs: ``["output"]`` for one output, ``["output_0", "output_1", ...]`` for several.

    Frameworks whose outputs have no names (a torch module's returned tensors) are served and
    converted under these names.
    """
    return ["output"] if count == 1 else [f"output_{index}" for index in range(count)]


class ModelLoadError(Exception):
    """The artifact cannot be loaded (missing, corrupt, or an unavailable runtime); the message says why."""


def missing_framework(backend: str, package: str, error: ImportError) -> ModelLoadError:
    """The load error of a backend whose framework cannot be imported; it names what to install.

    Args:
        backend: the backend's name, which is also the name of the gateway's extra that installs it.
        package: the framework as people call it (e.g. ``PyTorch``).
        error: the failed import.
    """
    return ModelLoadError(
        f"the {backend} backend needs {package}, which cannot be imported here ({error}); "
        f"install it with: pip install 'model-gateway[{backend}]'"
    )


class InferenceInputError(ValueError):
    """The runtime rejected the inputs of a call (e.g. a shape the graph cannot take)."""


class Backend(ABC):
    """One loaded instance of one model version.

    ``run`` may be called from a worker thread; an instance runs one call at a time (the scheduler
    guarantees it), so implementations need no locking of their own.
    """

    #: Model platform in Triton's names (e.g. ``onnxruntime_onnx``), shown in model metadata.
    platform: str

    #: Set by each backend's constructor from what the artifact declares.
    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs in graph order."""
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs in graph order."""
        return self._outputs

    @property
    def metadata_parameters(self) -> dict[str, Any]:
        """How this instance runs the model, for the model metadata's ``parameters`` (JSON-ready values).

        E.g. ``{"execution_providers": ["CPUExecutionProvider"]}``; empty by default.
        """
        return {}

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: one array per model input, already checked against :attr:`inputs` by the caller
                (names, dtypes, ranks and fixed dims).
            output_names: the outputs to compute, a non-empty subset of :attr:`outputs`' names.

        Returns:
            The requested outputs by name.

        Raises:
            InferenceInputError: the runtime rejected the inputs.
        """
