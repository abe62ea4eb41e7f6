"""KServe v2 REST API: a thin FastAPI adapter over the data plane.

Routes (KServe v2 / Open Inference Protocol, "HTTP/REST"; repository extension as in Triton):
``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``, ``GET /v2/models/{m}[/versions/{v}]``,
``GET .../ready``, ``POST .../infer``, ``POST /v2/repository/index``,
``POST /v2/repository/models/{m}/load`` and ``.../unload``; and our upload extension,
``PUT /v2/repository/models/{m}/versions/{v}`` and ``POST /v2/repository/models/{m}/versions`` (next
version), whose body is a model package (see :mod:`gateway.intake`). The management routes (load,
unload, upload) need ``Authorization: Bearer <admin token>``.

Bodies are parsed from bytes by pydantic-core into plain lists (``data`` is not validated element by
element) and turned into numpy by :mod:`gateway.datatypes`; responses are written with orjson.
Errors become ``{"error": "<message>"}`` with the status from :mod:`gateway.errors`.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
    TensorMetadata,
)
from gateway.datatypes import BYTES, array_from_values
from gateway.errors import GatewayError, InvalidArgumentError, UnauthenticatedError, http_status
from gateway.logs import current_request_id

logger = logging.getLogger(__name__)

JSON = "application/json"
#: The ``protocol`` label of the v2 REST routes' metrics.
PROTOCOL = "v2-rest"
REQUEST_ID_HEADER = "X-Request-ID"
BodyModel = TypeVar("BodyModel", bound=BaseModel)


class RestInputTensor(BaseModel):
    """An input tensor of a v2 REST inference request; ``data`` is flat or nested, row-major."""

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any


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


def _request_id_header() -> dict[str, str] | None:
    """``X-Request-ID`` with the id of the request being answered, if there is one."""
    request_id = current_request_id()
    return {REQUEST_ID_HEADER: request_id} if request_id else None


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


def decode_infer_request(raw: bytes, model_name: str, model_version: str | None) -> InferRequest:
    """Decode a v2 REST inference request body into the data plane's request.

    Raises:
        InvalidArgumentError: malformed JSON, a missing field, or data that does not fit the
            declared datatype and shape.
    """
    body = _parse(RestInferRequest, raw)
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=body.id,
        parameters=body.parameters,
        inputs=[
            InferTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tensor.shape,
                data=array_from_values(tensor.data, tensor.datatype, tensor.shape, tensor.name),
                parameters=tensor.parameters,
            )
            for tensor in body.inputs
        ],
        outputs=[RequestedOutput(output.name, output.parameters) for output in body.outputs],
    )


def encode_infer_response(response: InferResponse) -> dict[str, Any]:
    """The v2 "Inference Response JSON Object" for a data plane response; ``data`` is flat."""
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": _json_values(t)}
            for t in response.outputs
        ],
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body


def _json_values(tensor: InferTensor) -> list[Any]:
    if tensor.datatype == BYTES:
        # JSON carries text: undecodable bytes are replaced (binary outputs need binary_data).
        return [item.decode("utf-8", "replace") for item in tensor.data.ravel()]
    values: list[Any] = np.ravel(tensor.data).tolist()
    return values


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}


def create_app(dataplane: DataPlane) -> FastAPI:
    """The FastAPI application serving the v2 REST API and ``/metrics`` (Prometheus text format) over ``dataplane``."""
    app = FastAPI(title="model-gateway", summary="KServe v2 inference over REST", docs_url="/docs")
    registry = dataplane.repository.metrics.registry
    app.include_router(_v2_router(dataplane))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, error: GatewayError) -> Response:
        response = _json({"error": error.message}, http_status(error), _request_id_header())
        if isinstance(error, UnauthenticatedError):
            response.headers["WWW-Authenticate"] = 'Bearer realm="model-gateway management API"'
        return response

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
        raw = await request.body()
        body = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=lambda: decode_infer_request(raw, model_name, model_version),
            encode=encode_infer_response,
            request_id=request.headers.get(REQUEST_ID_HEADER),
        )
        return _json(body, headers=_request_id_header())

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
