"""KServe v2 REST API: a thin FastAPI adapter over the data plane.

Routes (KServe v2 / Open Inference Protocol, "HTTP/REST"; repository extension as in Triton):
``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{m}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``, ``POST /v2/repository/index``,
``POST /v2/repository/models/{m}/load`` and ``.../unload``; and our upload extension,
``PUT /v2/repository/models/{m}/versions/{v}`` and ``POST /v2/repository/models/{m}/versions`` (next
version), whose body is a model package (see :mod:`gateway.intake`). The management routes (load,
unload, upload) need ``Authorization: Bearer <admin token>``.

Inference bodies follow Triton's binary tensor data extension too: with an
``Inference-Header-Content-Length: N`` header, the first N bytes are the JSON request and the rest
holds the raw data of each input whose ``parameters`` give a ``binary_data_size``, in input order
(little-endian, row-major; BYTES elements length-prefixed as in gRPC's raw contents). Outputs asked
for with ``binary_data: true`` (or every output, with the request parameter ``binary_data_output``)
come back the same way: JSON first, its length in ``Inference-Header-Content-Length``, then the raw
output data, each output's ``parameters.binary_data_size`` giving its length.

JSON bodies are parsed from bytes by pydantic-core into plain lists (``data`` is not validated element
by element) and turned into numpy by :mod:`gateway.datatypes`; responses are written with orjson.
Errors become ``{"error": "<message>"}`` with the status from :mod:`gateway.errors`.

Inference is the hot path: :class:`RestServer`, the ASGI application the server runs, sends
``POST .../infer`` straight to the data plane and everything else to the FastAPI application, whose
routing and middleware would cost more than a small model's whole inference. The FastAPI application
declares the infer routes too (same handler), so that its OpenAPI schema documents them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.compat import compat_router
from gateway.dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
    TensorMetadata,
)
from gateway.datatypes import (
    BYTES,
    DEFAULT_LIMITS,
    V2_TO_NUMPY,
    BodyReader,
    RequestLimits,
    array_from_raw,
    array_from_values,
    array_to_raw,
    check_content_length,
    check_received_bytes,
)
from gateway.errors import (
    GatewayError,
    InvalidArgumentError,
    UnauthenticatedError,
    http_status,
    openapi_error_responses,
)
from gateway.logs import REQUEST_ID_HEADER, request_id_header
from gateway.scheduler import Disconnected

logger = logging.getLogger(__name__)

JSON = "application/json"
#: The ``protocol`` label of the v2 REST routes' metrics.
PROTOCOL = "v2-rest"
#: Triton's binary tensor data extension: the length in bytes of the JSON part of a body.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
#: ``POST`` paths of inference: ``/v2/models/{m}/infer`` and ``/v2/models/{m}/versions/{v}/infer``.
INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
#: ``Retry-After`` (seconds) sent with every 503: a full queue, a model loading, a server shutting down.
RETRY_AFTER_SECONDS = 1
_RETRY_AFTER = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())
#: Paths of the upload routes, whose bodies (model packages) are held to ``max_upload_bytes`` instead.
UPLOAD_PATH = re.compile(r"/v2/repository/models/[^/]+/versions(?:/[^/]+)?")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
BodyModel = TypeVar("BodyModel", bound=BaseModel)


class RestInputTensor(BaseModel):
    """An input tensor of a v2 REST inference request; ``data`` is flat or nested, row-major.

    ``data`` is left out when ``parameters.binary_data_size`` says where the raw data is.
    """

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RestRequestedOutput(BaseModel):
    """An output the client asks for."""

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class RestInferRequest(BaseModel):
    """KServe v2 "Inference Request JSON Object"."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RestInputTensor]
    outputs: list[RestRequestedOutput] = Field(default_factory=list)


class RestIndexRequest(BaseModel):
    """Repository index request: ``ready: true`` lists only models ready for inference."""

    ready: bool = False


# ----------------------------------------------------------------------------- OpenAPI documentation
# The routes read their bodies raw and answer with orjson, so FastAPI cannot see their shapes: these
# models and schemas document them (KServe v2 "HTTP/REST" JSON objects). They are never used to parse.


class ErrorAnswer(BaseModel):
    """Every error answer of the v2 routes (KServe v2: ``{"error": "<message>"}``)."""

    error: str


class LiveAnswer(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class ReadyAnswer(BaseModel):
    """``GET /v2/health/ready``: 200 with ``ready: true``, 400 with ``ready: false``."""

    ready: bool


class ServerMetadataAnswer(BaseModel):
    """KServe v2 "Server Metadata Response JSON Object"."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadataAnswer(BaseModel):
    """A model tensor: v2 datatype and shape (-1: variable)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataAnswer(BaseModel):
    """KServe v2 "Model Metadata Response JSON Object"."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataAnswer]
    outputs: list[TensorMetadataAnswer]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelReadyAnswer(BaseModel):
    """``GET /v2/models/{m}[/versions/{v}]/ready``: 200 with ``ready: true``, 400 with ``ready: false``."""

    name: str
    ready: bool


class IndexEntryAnswer(BaseModel):
    """One entry of the repository index (Triton's repository extension)."""

    name: str
    version: str
    state: str
    reason: str


class UploadAnswer(BaseModel):
    """The version an upload created, and whether it serves."""

    name: str
    version: str
    ready: bool


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses answered with ``{"error": message}``."""
    return openapi_error_responses(ErrorAnswer, *statuses)


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
_BINARY_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
_INFER_OPENAPI: dict[str, Any] = {
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
            OCTET_STREAM: {"schema": _BINARY_SCHEMA},
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or with binary outputs, JSON then raw data "
        f"({INFERENCE_HEADER_LENGTH} gives the JSON's length).",
        "content": {JSON: {"schema": INFER_RESPONSE_SCHEMA}, OCTET_STREAM: {"schema": _BINARY_SCHEMA}},
    },
    **error_responses(400, 404, 413, 415, 500, 503, 504),
}
#: OpenAPI security requirement of the management routes (the admin token).
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON, headers=headers)


def _parse(model: type[BodyModel], raw: bytes, *, empty_ok: bool = False) -> BodyModel:
    if empty_ok and not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "json_invalid":
            raise InvalidArgumentError(f"malformed JSON: {problem['msg']}") from None
        raise InvalidArgumentError(f"invalid request body at '{where or '(top level)'}': {problem['msg']}") from None


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """An encoded inference response body.

    Attributes:
        body: the JSON response, followed by the raw data of the binary outputs, if any.
        json_length: bytes of JSON at the start of ``body`` when binary data follows, else None.
    """

    body: bytes
    json_length: int | None = None


def decode_infer_request(
    raw: bytes,
    model_name: str,
    model_version: str | None,
    json_length: int | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> InferRequest:
    """Decode a v2 REST inference request body into the data plane's request.

    Args:
        raw: the whole body (decompressed).
        model_name, model_version: the model the path names.
        json_length: the ``Inference-Header-Content-Length`` header (binary tensor data extension),
            or None when the body is all JSON.
        limits: the JSON depth, tensor count and element count limits, checked before the JSON is
            parsed and before any tensor is allocated.

    Raises:
        InvalidArgumentError: malformed JSON, JSON nested deeper than the limit, a missing field, a
            bad shape, data that does not fit the declared datatype and shape, or binary data that
            does not add up to the ``binary_data_size`` of the inputs.
        PayloadTooLargeError: more inputs or requested outputs than the limit, or a shape that
            declares more elements than the limit.
    """
    if json_length is None:
        header, binary = raw, memoryview(b"")
    elif 0 <= json_length <= len(raw):
        header, binary = raw[:json_length], memoryview(raw)[json_length:]
    else:
        raise InvalidArgumentError(f"{INFERENCE_HEADER_LENGTH} is {json_length} but the body holds {len(raw)} bytes")
    limits.check_json_depth(header)
    body = _parse(RestInferRequest, header)
    limits.check_tensor_counts(len(body.inputs), len(body.outputs))
    max_elements = limits.max_tensor_elements
    inputs: list[InferTensor] = []
    offset = 0
    for tensor in body.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgumentError(f"input '{tensor.name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidArgumentError(
                    f"input '{tensor.name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            data = array_from_raw(
                binary[offset : offset + size], tensor.datatype, tensor.shape, tensor.name, max_elements
            )
            offset += size
        elif tensor.data is None:
            raise InvalidArgumentError(f"input '{tensor.name}' has neither data nor parameters.binary_data_size")
        else:
            data = array_from_values(tensor.data, tensor.datatype, tensor.shape, tensor.name, max_elements)
        inputs.append(InferTensor(tensor.name, tensor.datatype, tensor.shape, data, tensor.parameters))
    if offset != len(binary):
        raise InvalidArgumentError(
            f"the body holds {len(binary) - offset} bytes of binary data that no input's binary_data_size claims"
        )
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=body.id,
        parameters=body.parameters,
        inputs=inputs,
        outputs=[RequestedOutput(output.name, output.parameters) for output in body.outputs],
    )


def binary_outputs(request: InferRequest) -> Callable[[str], bool]:
    """Whether an output (by name) goes back as binary data (Triton's binary tensor data extension).

    An output's own ``binary_data`` parameter decides for it; otherwise the request's
    ``binary_data_output`` parameter does; by default outputs are JSON.
    """
    default = request.parameters.get("binary_data_output") is True
    asked = {
        output.name: output.parameters["binary_data"] is True
        for output in request.outputs
        if "binary_data" in output.parameters
    }
    return lambda name: asked.get(name, default)


def encode_infer_response(response: InferResponse, is_binary: Callable[[str], bool] | None = None) -> EncodedResponse:
    """Encode a data plane response: JSON ``data`` (flat), or raw data after the JSON for binary outputs.

    Args:
        response: the data plane's answer.
        is_binary: which outputs to send as binary data (see :func:`binary_outputs`); None: none.
    """
    outputs: list[dict[str, Any]] = []
    raw_parts: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if is_binary is not None and is_binary(tensor.name):
            raw = array_to_raw(tensor.data)
            raw_parts.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = _json_values(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    encoded = orjson.dumps(body)
    if not raw_parts:
        return EncodedResponse(encoded)
    return EncodedResponse(b"".join([encoded, *raw_parts]), len(encoded))


def _json_values(tensor: InferTensor) -> list[Any]:
    if tensor.datatype == BYTES:
        # JSON carries text: undecodable bytes are replaced (binary outputs need binary_data).
        return [item.decode("utf-8", "replace") for item in tensor.data.ravel()]
    values: list[Any] = np.ravel(tensor.data).tolist()
    return values


def error_answer(error: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """HTTP status, headers and JSON body (``{"error": message}``) answering ``error``."""
    headers = {"content-type": JSON, **(request_id_header() or {})}
    if isinstance(error, UnauthenticatedError):
        headers["WWW-Authenticate"] = 'Bearer realm="model-gateway management API"'
    return http_status(error), headers, orjson.dumps({"error": error.message})


class _InferCall:
    """One REST inference call: decodes the body, and encodes the answer as the request asked.

    Args:
        raw: the request body.
        json_length: the ``Inference-Header-Content-Length`` header as received, or None.
        limits: the request limits the body is decoded within.
    """

    def __init__(
        self,
        raw: bytes,
        model_name: str,
        model_version: str | None,
        json_length: str | None,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self.raw = raw
        self.model_name = model_name
        self.model_version = model_version
        self.json_length = json_length
        self.limits = limits
        self.is_binary: Callable[[str], bool] | None = None

    def decode(self) -> InferRequest:
        json_length = None
        if self.json_length is not None:
            if not self.json_length.isdigit():
                raise InvalidArgumentError(
                    f"{INFERENCE_HEADER_LENGTH} must be a number of bytes, got {self.json_length!r}"
                )
            json_length = int(self.json_length)
        request = decode_infer_request(self.raw, self.model_name, self.model_version, json_length, self.limits)
        self.is_binary = binary_outputs(request)
        return request

    def encode(self, response: InferResponse) -> EncodedResponse:
        return encode_infer_response(response, self.is_binary)


async def answer_infer(
    dataplane: DataPlane,
    raw: bytes,
    model_name: str,
    model_version: str | None,
    headers: Mapping[str, str],
    disconnected: Disconnected | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Answer ``POST /v2/models/{m}[/versions/{v}]/infer``: HTTP status, response headers and body.

    Args:
        raw: the request body.
        headers: the request headers, by lower-case name (``x-request-id``,
            ``inference-header-content-length``).
        disconnected: a coroutine function returning when the client goes away; while the request
            waits in the model's queue it is watched, and the request dropped when it returns.

    Every error is answered (400 for a bad request, 404, 503, 504 ...) with ``{"error": message}``.

    Raises:
        asyncio.CancelledError: ``disconnected`` returned (the request was dropped), or the caller
            was cancelled.
    """
    call = _InferCall(raw, model_name, model_version, headers.get(INFERENCE_HEADER_LENGTH.lower()), dataplane.limits)
    try:
        encoded = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=call.decode,
            encode=call.encode,
            request_id=headers.get(REQUEST_ID_HEADER.lower()),
            disconnected=disconnected,
        )
    except GatewayError as error:
        return error_answer(error)
    response_headers = request_id_header() or {}
    if encoded.json_length is None:
        response_headers["content-type"] = JSON
    else:
        response_headers["content-type"] = OCTET_STREAM
        response_headers[INFERENCE_HEADER_LENGTH] = str(encoded.json_length)
    return 200, response_headers, encoded.body


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}


def create_app(dataplane: DataPlane) -> FastAPI:
    """The FastAPI application serving the v2 REST API and ``/metrics`` (Prometheus text format) over ``dataplane``."""
    app = FastAPI(title="model-gateway", summary="KServe v2 inference over REST", docs_url="/docs")
    registry = dataplane.repository.metrics.registry
    app.include_router(_v2_router(dataplane))
    app.include_router(compat_router(dataplane))  # TF Serving and TorchServe routes

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the admin token's security scheme (bearer) that the management routes name."""
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["adminToken"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The admin token (--admin-token, or the generated token file).",
            }
        return app.openapi_schema or default_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, error: GatewayError) -> Response:
        status, headers, body = error_answer(error)
        return Response(body, status_code=status, media_type=JSON, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _json({"error": f"internal error: {type(error).__name__}"}, 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> Response:
        return _json({"error": str(error.detail)}, error.status_code)

    return app


def _v2_router(dataplane: DataPlane) -> APIRouter:
    router = APIRouter(prefix="/v2")

    @router.get("/health/live", responses={200: {"model": LiveAnswer}})
    async def server_live() -> Response:
        return _json({"live": dataplane.live()})

    @router.get("/health/ready", responses={200: {"model": ReadyAnswer}, 400: {"model": ReadyAnswer}})
    async def server_ready() -> Response:
        ready = dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 400)

    @router.get("", responses={200: {"model": ServerMetadataAnswer}})
    async def server_metadata() -> Response:
        metadata = dataplane.server_metadata()
        return _json({"name": metadata.name, "version": metadata.version, "extensions": metadata.extensions})

    metadata_responses = {200: {"model": ModelMetadataAnswer}, **error_responses(400, 404, 503)}

    @router.get("/models/{model_name}", responses=metadata_responses)
    @router.get("/models/{model_name}/versions/{model_version}", responses=metadata_responses)
    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        metadata = dataplane.model_metadata(model_name, model_version)
        return _json(
            {
                "name": metadata.name,
                "versions": metadata.versions,
                "platform": metadata.platform,
                "inputs": [_tensor_metadata(t) for t in metadata.inputs],
                "outputs": [_tensor_metadata(t) for t in metadata.outputs],
                **({"parameters": metadata.parameters} if metadata.parameters else {}),
            }
        )

    ready_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": ModelReadyAnswer},
        400: {
            "description": "The model is not ready (ready: false), or the version is not an integer (error)",
            "content": {
                JSON: {"schema": {"anyOf": [ModelReadyAnswer.model_json_schema(), ErrorAnswer.model_json_schema()]}}
            },
        },
        **error_responses(404),
    }

    @router.get("/models/{model_name}/ready", responses=ready_responses)
    @router.get("/models/{model_name}/versions/{model_version}/ready", responses=ready_responses)
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        ready = dataplane.model_ready(model_name, model_version)
        return _json({"name": model_name, "ready": ready}, 200 if ready else 400)

    @router.post("/models/{model_name}/infer", responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI)
    @router.post(
        "/models/{model_name}/versions/{model_version}/infer", responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI
    )
    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        """KServe v2 inference; the server answers these paths in :class:`RestServer`, with the same handler."""
        raw = await receive_body(request.receive, request.headers, dataplane.limits.max_request_bytes)
        status, headers, body = await answer_infer(dataplane, raw or b"", model_name, model_version, request.headers)
        return Response(body, status_code=status, headers=headers)

    @router.post(
        "/repository/index",
        responses={200: {"model": list[IndexEntryAnswer]}, **error_responses(400, 413)},
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": RestIndexRequest.model_json_schema()}},
            }
        },
    )
    async def repository_index(request: Request) -> Response:
        body = _parse(RestIndexRequest, await request.body(), empty_ok=True)
        entries = dataplane.repository_index(ready_only=body.ready)
        return _json(
            [{"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason} for e in entries]
        )

    management = {"security": ADMIN_SECURITY}
    control_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JSON: {"schema": {"type": "object"}}}},
        **error_responses(400, 401, 404, 503),
    }

    @router.post(
        "/repository/models/{model_name}/load",
        responses=control_responses,
        openapi_extra=management,
    )
    async def repository_load(request: Request, model_name: str) -> Response:
        await dataplane.load_model(model_name, request.headers.get("authorization"))
        return _json({})

    @router.post(
        "/repository/models/{model_name}/unload",
        responses=control_responses,
        openapi_extra=management,
    )
    async def repository_unload(request: Request, model_name: str) -> Response:
        await dataplane.unload_model(model_name, request.headers.get("authorization"))
        return _json({})

    upload_responses: dict[int | str, dict[str, Any]] = {
        201: {"model": UploadAnswer},
        **error_responses(400, 401, 409, 413, 503),
    }
    upload_openapi = {
        "security": ADMIN_SECURITY,
        "requestBody": {
            "required": True,
            "description": "A model package: a tar archive (gzip-compressed or not) of one version folder.",
            "content": {OCTET_STREAM: {"schema": _BINARY_SCHEMA}},
        },
    }

    @router.post(
        "/repository/models/{model_name}/versions",
        status_code=201,
        responses=upload_responses,
        openapi_extra=upload_openapi,
    )
    @router.put(
        "/repository/models/{model_name}/versions/{model_version}",
        status_code=201,
        responses=upload_responses,
        openapi_extra=upload_openapi,
    )
    async def repository_upload(request: Request, model_name: str, model_version: str | None = None) -> Response:
        result = await dataplane.upload_version(
            model_name, model_version, request.stream(), request.headers.get("authorization")
        )
        return _json({"name": result.name, "version": str(result.version), "ready": result.ready}, 201)

    return router


async def receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes | None:
    """Read an ASGI request body within ``limit`` bytes, decompressing a gzip or deflate body as it arrives.

    The Content-Length header is checked before anything is read, then the body as it arrives and
    what it decompresses to (see :class:`gateway.datatypes.BodyReader`); nothing past the limit is
    buffered.

    Args:
        headers: the request headers, by lower-case name (``content-length``, ``content-encoding``).
        limit: largest body in bytes (``max_request_bytes``).

    Returns:
        The body, decompressed; None if the client disconnected first.

    Raises:
        PayloadTooLargeError: the body, or what it decompresses to, is larger than ``limit`` (413).
        UnsupportedMediaTypeError: a Content-Encoding other than gzip, deflate or identity (415).
        InvalidArgumentError: a compressed body that does not decompress (400).
    """
    content_length = headers.get("content-length")
    if (
        content_length is not None
        and "content-encoding" not in headers
        and content_length.isdigit()
        and int(content_length) <= limit
    ):
        # The HTTP server ends the body at Content-Length: there is nothing to count (the hot path).
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    reader = BodyReader(limit, headers.get("content-encoding"), content_length)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        reader.feed(message.get("body", b""))
        if not message.get("more_body", False):
            return reader.finish()


def _limited_receive(receive: Receive, scope: Scope, limit: int) -> Receive:
    """``receive`` of a request whose body may hold at most ``limit`` bytes (checked on Content-Length first).

    Reading past the limit raises :class:`PayloadTooLargeError` inside the route reading the body,
    which answers it in its own error format (413).
    """
    content_length = next(
        (value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"), None
    )
    received = 0

    async def limited() -> Message:
        nonlocal received
        check_content_length(content_length, limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            check_received_bytes(received, limit)
        return message

    return limited


async def _until_disconnect(receive: Receive) -> None:
    """Return when the client of a request whose body was read goes away.

    uvicorn's ``receive`` answers ``http.disconnect`` once the connection is lost (it waits until then).
    """
    while (await receive())["type"] != "http.disconnect":
        pass


def _with_retry_after(send: Send) -> Send:
    """``send`` adding ``Retry-After`` to a 503 answer (a full queue, a model loading, a shutdown) that has none."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = list(message.get("headers", ()))
            if all(name.lower() != b"retry-after" for name, _ in headers):
                message = {**message, "headers": [*headers, _RETRY_AFTER]}
        await send(message)

    return sending


class RestServer:
    """The ASGI application the server runs: inference straight to the data plane, all else to FastAPI.

    ``POST /v2/models/{m}[/versions/{v}]/infer`` is answered by :func:`answer_infer` without
    FastAPI's routing and middleware; any other request goes to ``app``. Every 503 answer, on any
    route, carries ``Retry-After: 1`` (:data:`RETRY_AFTER_SECONDS`). A client that disconnects while
    its inference request waits in the model's queue has the request dropped (never run).

    Args:
        dataplane: the data plane answering inference.
        app: the FastAPI application from :func:`create_app`.
    """

    def __init__(self, dataplane: DataPlane, app: FastAPI) -> None:
        self.dataplane = dataplane
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http":
            if scope["method"] == "POST":
                match = INFER_PATH.fullmatch(scope["path"])
                if match is not None:
                    await self._infer(scope, receive, send, match["model"], match["version"])
                    return
            if UPLOAD_PATH.fullmatch(scope["path"]) is None:  # uploads have their own limit, max_upload_bytes
                receive = _limited_receive(receive, scope, self.dataplane.limits.max_request_bytes)
            send = _with_retry_after(send)
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            raw = await receive_body(receive, headers, self.dataplane.limits.max_request_bytes)
            if raw is None:  # the client went away
                return
            status, response_headers, body = await answer_infer(
                self.dataplane,
                raw,
                model,  # scope["path"] is percent-decoded already
                version,
                headers,
                functools.partial(_until_disconnect, receive),
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # the client went away while its request waited: it was dropped, and no one is left to answer
        except GatewayError as error:  # the body is too large, or in an encoding the server does not decode
            status, response_headers, body = error_answer(error)
        except Exception as error:
            logger.exception("unexpected error answering POST %s", scope["path"])
            status, response_headers, body = (
                500,
                {"content-type": JSON},
                orjson.dumps({"error": f"internal error: {type(error).__name__}"}),
            )
        headers_out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response_headers.items()]
        headers_out.append((b"content-length", str(len(body)).encode()))
        if status == 503:
            headers_out.append(_RETRY_AFTER)
        await send({"type": "http.response.start", "status": status, "headers": headers_out})
        await send({"type": "http.response.body", "body": body})
