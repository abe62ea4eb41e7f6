"""The request and response types of the core, as every transport decodes into and encodes from them.

They follow the JSON objects of the KServe v2 / Open Inference Protocol ("Inference Request JSON
Object", "Model Metadata Response JSON Object", ...), with tensors held as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.metrics import Duration, InferenceStatistics

Parameters = dict[str, Any]

#: The signature a model serves in TF Serving's terms, unless its backend names another (tensorflow).
DEFAULT_SIGNATURE = "serving_default"
#: TF Serving's method name of a prediction signature, for models whose backend gives none.
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(slots=True)
class InferTensor:
    """One input or output tensor: v2 datatype, shape, and the data as a numpy array of that shape.

    BYTES data is an ``object`` array of ``bytes``.
    """

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asks for by name, with its parameters (e.g. binary_data)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """An inference request after decoding (KServe v2 "Inference Request JSON Object")."""

    model_name: str
    model_version: str | None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    """An inference response before encoding (KServe v2 "Inference Response JSON Object")."""

    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """Name, v2 datatype and shape (-1: variable, including the batch dim) of a model tensor."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """KServe v2 "Model Metadata Response JSON Object"; ``platform`` in Triton's names.

    ``parameters`` holds how the backend runs the model (e.g. ``execution_providers`` for ONNX
    Runtime, ``device`` for PyTorch, ``signature_name`` for TensorFlow), ``model_bytes`` (the
    version's files on disk, in bytes), ``parity``, the conversion's parity figures, and
    ``quantization``, the price of the push's compression (int8, fp16, optimization), when the
    version has them.
    """

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = field(default_factory=dict)

    @property
    def signature_name(self) -> str:
        """The signature served, as TF Serving's APIs name it: the backend's (tensorflow), else ``serving_default``."""
        return str(self.parameters.get("signature_name", DEFAULT_SIGNATURE))

    @property
    def method_name(self) -> str:
        """The served signature's TF Serving method name (``tensorflow/serving/predict`` unless the SavedModel says)."""
        return str(self.parameters.get("method_name", PREDICT_METHOD))


@dataclass(frozen=True, slots=True)
class UploadResult:
    """The model version an upload created, and whether it is ready (its version policy may not serve it)."""

    name: str
    version: int
    ready: bool


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """KServe v2 "Server Metadata Response JSON Object"."""

    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """Triton's statistics extension: one loaded version's statistics (``ModelStatistics``)."""

    name: str
    version: str
    statistics: InferenceStatistics

    def to_json(self) -> dict[str, Any]:
        """Triton's ``ModelStatistics`` in the JSON of its statistics extension (durations in ns).

        The one rendering: the REST route answers it, the gRPC ``ModelStatistics`` RPC parses it into
        the message. There is no response cache: ``cache_hit`` and ``cache_miss`` stay zero.
        """
        statistics = self.statistics

        def duration(value: Duration) -> dict[str, int]:
            return {"count": value.count, "ns": value.ns}

        return {
            "name": self.name,
            "version": self.version,
            "last_inference": statistics.last_inference_ms,
            "inference_count": statistics.inference_count,
            "execution_count": statistics.execution_count,
            "inference_stats": {
                "success": duration(statistics.success),
                "fail": duration(statistics.fail),
                "queue": duration(statistics.queue),
                "compute_input": duration(statistics.compute_input),
                "compute_infer": duration(statistics.compute_infer),
                "compute_output": duration(statistics.compute_output),
                "cache_hit": duration(Duration()),
                "cache_miss": duration(Duration()),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": duration(batch.compute_input),
                    "compute_infer": duration(batch.compute_infer),
                    "compute_output": duration(batch.compute_output),
                }
                for size, batch in sorted(statistics.batches.items())
            ],
        }
