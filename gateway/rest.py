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

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

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
from gateway.datatypes import BYTES, array_from_raw, array_from_values, array_to_raw
from gateway.errors import GatewayError, InvalidArgumentError, UnauthenticatedError, http_status
from gateway.logs import REQUEST_ID_HEADER, request_id_header

logger = logging.getLogger(__name__)

JSON = "application/json"
#: The ``protocol`` label of the v2 REST routes' metrics.
PROTOCOL = "v2-rest"
#: Triton's binary tensor data extension: the length in bytes of the JSON part of a body.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
#: ``POST`` paths of inference: ``/v2/models/{m}/infer`` and ``/v2/models/{m}/versions/{v}/infer``.
INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")

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
    raw: bytes, model_name: str, model_version: str | None, json_length: int | None = None
) -> InferRequest:
    """Decode a v2 REST inference request body into the data plane's request.

    Args:
        raw: the whole body.
        model_name, model_version: the model the path names.
        json_length: the ``Inference-Header-Content-Length`` header (binary tensor data extension),
            or None when the body is all JSON.

    Raises:
        InvalidArgumentError: malformed JSON, a missing field, data that does not fit the declared
            datatype and shape, or binary data that does not add up to the ``binary_data_size``
            of the inputs.
    """
    if json_length is None:
        header, binary = raw, memoryview(b"")
    elif 0 <= json_length <= len(raw):
        header, binary = raw[:json_length], memoryview(raw)[json_length:]
    else:
        raise InvalidArgumentError(f"{INFERENCE_HEADER_LENGTH} is {json_length} but the body holds {len(raw)} bytes")
    body = _parse(RestInferRequest, header)
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
            data = array_from_raw(binary[offset : offset + size], tensor.datatype, tensor.shape, tensor.name)
            offset += size
        elif tensor.data is None:
            raise InvalidArgumentError(f"input '{tensor.name}' has neither data nor parameters.binary_data_size")
        else:
            data = array_from_values(tensor.data, tensor.datatype, tensor.shape, tensor.name)
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
    """

    def __init__(self, raw: bytes, model_name: str, model_version: str | None, json_length: str | None) -> None:
        self.raw = raw
        self.model_name = model_name
        self.model_version = model_version
        self.json_length = json_length
        self.is_binary: Callable[[str], bool] | None = None

    def decode(self) -> InferRequest:
        json_length = None
        if self.json_length is not None:
            if not self.json_length.isdigit():
                raise InvalidArgumentError(
                    f"{INFERENCE_HEADER_LENGTH} must be a number of bytes, got {self.json_length!r}"
                )
            json_length = int(self.json_length)
        request = decode_infer_request(self.raw, self.model_name, self.model_version, json_length)
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
) -> tuple[int, dict[str, str], bytes]:
    """Answer ``POST /v2/models/{m}[/versions/{v}]/infer``: HTTP status, response headers and body.

    Args:
        raw: the request body.
        headers: the request headers, by lower-case name (``x-request-id``,
            ``inference-header-content-length``).

    Every error is answered (400 for a bad request, 404, 503, ...) with ``{"error": message}``.
    """
    call = _InferCall(raw, model_name, model_version, headers.get(INFERENCE_HEADER_LENGTH.lower()))
    try:
        encoded = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=call.decode,
            encode=call.encode,
            request_id=headers.get(REQUEST_ID_HEADER.lower()),
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

    @router.get("/health/live")
    async def server_live() -> Response:
        return _json({"live": dataplane.live()})

    @router.get("/health/ready")
    async def server_ready() -> Response:
        ready = dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 400)

    @router.get("")
    async def server_metadata() -> Response:
        metadata = dataplane.server_metadata()
        return _json({"name": metadata.name, "version": metadata.version, "extensions": metadata.extensions})

    @router.get("/models/{model_name}")
    @router.get("/models/{model_name}/versions/{model_version}")
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

    @router.get("/models/{model_name}/ready")
    @router.get("/models/{model_name}/versions/{model_version}/ready")
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        ready = dataplane.model_ready(model_name, model_version)
        return _json({"name": model_name, "ready": ready}, 200 if ready else 400)

    @router.post("/models/{model_name}/infer")
    @router.post("/models/{model_name}/versions/{model_version}/infer")
    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        """KServe v2 inference; the server answers these paths in :class:`RestServer`, with the same handler."""
        raw = await request.body()
        status, headers, body = await answer_infer(dataplane, raw, model_name, model_version, request.headers)
        return Response(body, status_code=status, headers=headers)

    @router.post("/repository/index")
    async def repository_index(request: Request) -> Response:
        body = _parse(RestIndexRequest, await request.body(), empty_ok=True)
        entries = dataplane.repository_index(ready_only=body.ready)
        return _json(
            [{"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason} for e in entries]
        )

    @router.post("/repository/models/{model_name}/load")
    async def repository_load(request: Request, model_name: str) -> Response:
        await dataplane.load_model(model_name, request.headers.get("authorization"))
        return _json({})

    @router.post("/repository/models/{model_name}/unload")
    async def repository_unload(request: Request, model_name: str) -> Response:
        await dataplane.unload_model(model_name, request.headers.get("authorization"))
        return _json({})

    @router.post("/repository/models/{model_name}/versions")
    @router.put("/repository/models/{model_name}/versions/{model_version}")
    async def repository_upload(request: Request, model_name: str, model_version: str | None = None) -> Response:
        result = await dataplane.upload_version(
            model_name, model_version, request.stream(), request.headers.get("authorization")
        )
        return _json({"name": result.name, "version": str(result.version), "ready": result.ready}, 201)

    return router


class RestServer:
    """The ASGI application the server runs: inference straight to the data plane, all else to FastAPI.

    ``POST /v2/models/{m}[/versions/{v}]/infer`` is answered by :func:`answer_infer` without
    FastAPI's routing and middleware; any other request goes to ``app``.

    Args:
        dataplane: the data plane answering inference.
        app: the FastAPI application from :func:`create_app`.
    """

    def __init__(self, dataplane: DataPlane, app: FastAPI) -> None:
        self.dataplane = dataplane
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match["model"], match["version"])
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            status, response_headers, body = await answer_infer(
                self.dataplane, b"".join(chunks), unquote(model), unquote(version) if version else None, headers
            )
        except Exception as error:
            logger.exception("unexpected error answering POST %s", scope["path"])
            status, response_headers, body = (
                500,
                {"content-type": JSON},
                orjson.dumps({"error": f"internal error: {type(error).__name__}"}),
            )
        headers_out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response_headers.items()]
        headers_out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers_out})
        await send({"type": "http.response.body", "body": body})
