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


class ModelLoadError(Exception):
    """The artifact cannot be loaded (missing, corrupt, or an unavailable runtime); the message says why."""


class InferenceInputError(ValueError):
    """The runtime rejected the inputs of a call (e.g. a shape the graph cannot take)."""


class Backend(ABC):
    """One loaded instance of one model version.

    ``run`` may be called from a worker thread; an instance runs one call at a time (the scheduler
    guarantees it), so implementations need no locking of their own.
    """

    #: Model platform in Triton's names (e.g. ``onnxruntime_onnx``), shown in model metadata.
    platform: str

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs in graph order."""

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The model's outputs in graph order."""

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
