"""What the OpenAPI schema (``/openapi.json``, ``/docs``) says about the REST routes.

The routes read their bodies raw and answer with pre-encoded JSON, so FastAPI cannot see their shapes:
the pydantic models and JSON schemas here document the KServe v2 ones ("HTTP/REST" JSON objects). They
are never used to parse a request. The TF Serving and TorchServe routes document their own bodies beside
them, with :func:`error_responses` for their error shapes.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.datatypes import INFERENCE_HEADER_LENGTH, V2_TO_NUMPY
from gateway.transports.rest.responses import JSON, OCTET_STREAM


class ErrorJson(BaseModel):
    """Every error answer of the v2 routes (KServe v2: ``{"error": "<message>"}``)."""

    error: str


class LiveJson(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class ReadyJson(BaseModel):
    """``GET /v2/health/ready``: 200 with ``ready: true``, 400 with ``ready: false``."""

    ready: bool


class ServerMetadataJson(BaseModel):
    """KServe v2 "Server Metadata Response JSON Object"."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadataJson(BaseModel):
    """A model tensor: v2 datatype and shape (-1: variable)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataJson(BaseModel):
    """KServe v2 "Model Metadata Response JSON Object"."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataJson]
    outputs: list[TensorMetadataJson]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelReadyJson(BaseModel):
    """``GET /v2/models/{m}[/versions/{v}]/ready``: 200 with ``ready: true``, 400 with ``ready: false``."""

    name: str
    ready: bool


class IndexEntryJson(BaseModel):
    """One entry of the repository index (Triton's repository extension).

    ``resident_bytes``, beside Triton's fields: the bytes a READY version holds, measured at its load;
    ``gpu_bytes``: what it holds on each CUDA device (by device number), present when it holds any.
    """

    name: str
    version: str
    state: str
    reason: str
    resident_bytes: int | None = None
    gpu_bytes: dict[str, int] | None = None


class TritonTensorConfigJson(BaseModel):
    """An input or output of Triton's ``ModelConfig``: ``TYPE_*`` data type, dims without the batch dim."""

    name: str
    data_type: str
    dims: list[int]
    reshape: dict[str, list[int]] | None = None


class InstanceGroupJson(BaseModel):
    """Triton's ``ModelInstanceGroup``: how many instances, on which kind of device."""

    name: str
    kind: str
    count: int


class DynamicBatchingJson(BaseModel):
    """Triton's ``ModelDynamicBatching``."""

    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    default_queue_policy: dict[str, int]


class ModelConfigJson(BaseModel):
    """Triton's model configuration extension: the ``ModelConfig`` (model_config.proto) a version is served with."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[TritonTensorConfigJson]
    output: list[TritonTensorConfigJson]
    instance_group: list[InstanceGroupJson]
    default_model_filename: str | None = None
    dynamic_batching: DynamicBatchingJson | None = None


class StatisticDurationJson(BaseModel):
    """Triton's ``StatisticDuration``: a count of events and their total duration in nanoseconds."""

    count: int
    ns: int


class InferStatisticsJson(BaseModel):
    """Triton's ``InferStatistics``: requests that succeeded and failed, queue and compute times."""

    success: StatisticDurationJson
    fail: StatisticDurationJson
    queue: StatisticDurationJson
    compute_input: StatisticDurationJson
    compute_infer: StatisticDurationJson
    compute_output: StatisticDurationJson
    cache_hit: StatisticDurationJson
    cache_miss: StatisticDurationJson


class BatchStatisticsJson(BaseModel):
    """Triton's ``InferBatchStatistics``: the model runs of one batch size."""

    batch_size: int
    compute_input: StatisticDurationJson
    compute_infer: StatisticDurationJson
    compute_output: StatisticDurationJson


class ModelStatisticsJson(BaseModel):
    """Triton's ``ModelStatistics`` of one version."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatisticsJson
    batch_stats: list[BatchStatisticsJson]


class StatisticsJson(BaseModel):
    """Triton's statistics extension: ``GET /v2/models[/{m}[/versions/{v}]]/stats``."""

    model_stats: list[ModelStatisticsJson]


class RegionStatusJson(BaseModel):
    """A registered system shared memory region."""

    name: str
    key: str
    offset: int
    byte_size: int


class DeleteJson(BaseModel):
    """What a delete removed: the model and its version folders."""

    name: str
    versions: list[str]


class PromoteRequestJson(BaseModel):
    """A promote: the version (number or label) the ``stable`` label moves to, and how long to drain."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(default=None, description="A version number or label; default: canary.")
    drain_timeout_seconds: float = Field(
        default=10.0, ge=0, le=600, description="Longest wait for the requests of the version stable left."
    )


class RollbackRequestJson(BaseModel):
    """A rollback: how long to drain the version the ``stable`` label leaves."""

    model_config = ConfigDict(extra="forbid")

    drain_timeout_seconds: float = Field(
        default=10.0, ge=0, le=600, description="Longest wait for the requests of the version stable left."
    )


class PromotionJson(BaseModel):
    """Where the ``stable`` label is after a promote or rollback, where it was, and whether the old version drained."""

    name: str
    stable: int | None
    previous_stable: int | None
    drained: bool


class UploadJson(BaseModel):
    """The version an upload created, and whether it serves."""

    name: str
    version: str
    ready: bool


def error_responses(*statuses: int, body: type[BaseModel] = ErrorJson) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries (FastAPI's form) for error ``statuses`` answered with ``body``.

    The default body is the v2 (and TF Serving) error, ``{"error": message}``.
    """
    return {status: {"model": body, "description": HTTPStatus(status).phrase} for status in statuses}


_PARAMETERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Parameters (e.g. binary_data_size, binary_data, binary_data_output).",
    "additionalProperties": True,
}
_SHAPE_SCHEMA: dict[str, Any] = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_DATATYPE_SCHEMA: dict[str, Any] = {"type": "string", "enum": list(V2_TO_NUMPY)}


def _tensors_schema(data_description: str) -> dict[str, Any]:
    """JSON schema of a list of v2 tensors (KServe v2 "Request Input" / "Response Output")."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": _SHAPE_SCHEMA,
                "datatype": _DATATYPE_SCHEMA,
                "parameters": _PARAMETERS_SCHEMA,
                "data": {"type": "array", "description": data_description},
            },
        },
    }


#: KServe v2 "Inference Request JSON Object", with Triton's binary tensor data extension.
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS_SCHEMA,
        "inputs": _tensors_schema(
            "The values, flat or nested, row-major; left out when parameters.binary_data_size gives the "
            "length of the input's raw data after the JSON."
        ),
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS_SCHEMA},
            },
        },
    },
}
#: KServe v2 "Inference Response JSON Object".
INFER_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": _PARAMETERS_SCHEMA,
        "outputs": _tensors_schema(
            "The values, flat, row-major (NaN as null); left out for an output sent as binary data."
        ),
    },
}
BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": INFERENCE_HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Binary tensor data extension: bytes of JSON at the start of the body.",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": "gzip or deflate: the body is compressed (the size limit applies after decompression).",
            "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": INFER_REQUEST_SCHEMA},
            OCTET_STREAM: {"schema": BINARY_SCHEMA},
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or with binary outputs, JSON then raw data "
        f"({INFERENCE_HEADER_LENGTH} gives the JSON's length).",
        "content": {JSON: {"schema": INFER_RESPONSE_SCHEMA}, OCTET_STREAM: {"schema": BINARY_SCHEMA}},
    },
    **error_responses(400, 404, 413, 415, 500, 503, 504),
}
#: OpenAPI security requirement of the management routes (the admin token).
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
#: The security scheme ``ADMIN_SECURITY`` names: a bearer token.
ADMIN_TOKEN_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "The admin token (--admin-token, or the generated token file).",
}
