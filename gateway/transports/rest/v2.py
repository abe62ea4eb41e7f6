"""KServe v2 REST API: a thin FastAPI adapter over the core.

Routes (KServe v2 / Open Inference Protocol, "HTTP/REST"; repository and model configuration
extensions as in Triton): ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{m}[/versions/{v}]``, ``GET .../ready``, ``GET .../config``, ``POST .../infer``,
``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load`` and ``.../unload``; and our
extensions: upload, ``PUT /v2/repository/models/{m}/versions/{v}`` and
``POST /v2/repository/models/{m}/versions`` (next version), whose body is a model package (see
:mod:`gateway.repository.packages`); delete, ``DELETE /v2/repository/models/{m}[/versions/{v}]``;
one model's versions on disk, ``GET /v2/repository/models/{m}``; ``GET /v2/repository/token``,
which checks the admin token (204 or 401); and the traffic policy (:mod:`gateway.core.traffic_control`):
``GET`` and ``PUT /v2/repository/models/{m}/traffic``, ``POST .../promote`` and ``.../rollback``. The
management routes (load, unload, upload, delete, the token check, the traffic changes) need
``Authorization: Bearer <admin token>``. The version segment of the model routes may be a version
label (``/v2/models/m/versions/canary/infer``).

Inference bodies are decoded and answers encoded by :mod:`gateway.transports.rest.codec` (JSON and
Triton's binary tensor data extension). Errors become ``{"error": "<message>"}`` with the status from
:mod:`gateway.errors`. :func:`answer_infer` is the one inference handler: the server calls it from its
fast path (:mod:`gateway.transports.rest.fast_path`) and the FastAPI route below declares it for the
OpenAPI schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.shared_memory import SharedMemoryRegistry
from gateway.core.types import InferRequest, InferResponse, TensorMetadata
from gateway.datatypes import DEFAULT_LIMITS, INFERENCE_HEADER_LENGTH, RequestLimits
from gateway.errors import GatewayError, InvalidArgumentError
from gateway.logs import REQUEST_ID_HEADER, request_id_header
from gateway.repository.model_repository import IndexEntry
from gateway.runtime.scheduler import Disconnected
from gateway.transports.rest.body import receive_body
from gateway.transports.rest.codec import (
    EncodedResponse,
    binary_outputs,
    decode_infer_request,
    encode_infer_response,
    parse_json_body,
)
from gateway.transports.rest.openapi import (
    ADMIN_SECURITY,
    BINARY_SCHEMA,
    INFER_OPENAPI,
    INFER_RESPONSES,
    DeleteJson,
    ErrorJson,
    IndexEntryJson,
    LiveJson,
    ModelConfigJson,
    ModelMetadataJson,
    ModelReadyJson,
    PromoteRequestJson,
    PromotionJson,
    ReadyJson,
    RollbackRequestJson,
    ServerMetadataJson,
    UploadJson,
    error_responses,
)
from gateway.transports.rest.responses import JSON, OCTET_STREAM, RawResponse, error_response, json_response

#: The ``protocol`` label of the v2 REST routes' metrics.
PROTOCOL = "v2-rest"


class IndexRequestJson(BaseModel):
    """Repository index request: ``ready: true`` lists only models ready for inference."""

    ready: bool = False


class LoadRequestJson(BaseModel):
    """Load request (Triton's): ``parameters.config``, a config override as Triton's ModelConfig JSON text."""

    parameters: dict[str, Any] = Field(default_factory=dict)


class _InferCall:
    """One REST inference call: decodes the body, and encodes the answer as the request asked.

    Args:
        raw: the request body.
        json_length: the ``Inference-Header-Content-Length`` header as received, or None.
        limits: the request limits the body is decoded within.
        shared_memory: where inputs in shared memory are read from.
    """

    def __init__(
        self,
        raw: bytes,
        model_name: str,
        model_version: str | None,
        json_length: str | None,
        limits: RequestLimits = DEFAULT_LIMITS,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        self.raw = raw
        self.model_name = model_name
        self.model_version = model_version
        self.json_length = json_length
        self.limits = limits
        self.shared_memory = shared_memory
        self.is_binary: Callable[[str], bool] | None = None

    def decode(self) -> InferRequest:
        json_length = None
        if self.json_length is not None:
            if not (self.json_length.isascii() and self.json_length.isdigit()):
                raise InvalidArgumentError(
                    f"{INFERENCE_HEADER_LENGTH} must be a number of bytes, got {self.json_length!r}"
                )
            json_length = int(self.json_length)
        request = decode_infer_request(
            self.raw, self.model_name, self.model_version, json_length, self.limits, self.shared_memory
        )
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
) -> RawResponse:
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
    call = _InferCall(
        raw,
        model_name,
        model_version,
        headers.get(INFERENCE_HEADER_LENGTH.lower()),
        dataplane.limits,
        dataplane.shared_memory,
    )
    try:
        encoded = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=call.decode,
            encode=call.encode,
            request_id=headers.get(REQUEST_ID_HEADER.lower()),
            disconnected=disconnected,
            headers=headers,
        )
    except GatewayError as error:
        return error_response(error)
    response_headers = request_id_header() or {}
    if encoded.json_length is None:
        response_headers["content-type"] = JSON
    else:
        response_headers["content-type"] = OCTET_STREAM
        response_headers[INFERENCE_HEADER_LENGTH] = str(encoded.json_length)
    return RawResponse(200, response_headers, encoded.body)


def _tensor_metadata(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}


def _index_entry(entry: IndexEntry) -> dict[str, Any]:
    """Triton's four fields, and ``resident_bytes`` for a READY version (measured at its load), with ``gpu_bytes``
    (CUDA device number -> bytes) when it holds GPU memory."""
    json: dict[str, Any] = {
        "name": entry.name,
        "version": entry.version,
        "state": entry.state.value,
        "reason": entry.reason,
    }
    if entry.resident_bytes is not None:
        json["resident_bytes"] = entry.resident_bytes
    if entry.gpu_bytes:
        json["gpu_bytes"] = {str(device): bytes_ for device, bytes_ in sorted(entry.gpu_bytes.items())}
    return json


def v2_router(dataplane: DataPlane, control: RepositoryControl) -> APIRouter:
    """The KServe v2 routes (health, metadata, inference, repository extension, upload) over the core."""
    router = APIRouter(prefix="/v2")

    @router.get("/health/live", responses={200: {"model": LiveJson}})
    async def server_live() -> Response:
        return json_response({"live": dataplane.live()})

    @router.get("/health/ready", responses={200: {"model": ReadyJson}, 400: {"model": ReadyJson}})
    async def server_ready() -> Response:
        ready = dataplane.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    @router.get("", responses={200: {"model": ServerMetadataJson}})
    async def server_metadata() -> Response:
        metadata = dataplane.server_metadata()
        return json_response({"name": metadata.name, "version": metadata.version, "extensions": metadata.extensions})

    metadata_responses = {200: {"model": ModelMetadataJson}, **error_responses(400, 404, 503)}

    @router.get("/models/{model_name}", responses=metadata_responses)
    @router.get("/models/{model_name}/versions/{model_version}", responses=metadata_responses)
    async def model_metadata(model_name: str, model_version: str | None = None) -> Response:
        metadata = dataplane.model_metadata(model_name, model_version)
        return json_response(
            {
                "name": metadata.name,
                "versions": metadata.versions,
                "platform": metadata.platform,
                "inputs": [_tensor_metadata(t) for t in metadata.inputs],
                "outputs": [_tensor_metadata(t) for t in metadata.outputs],
                **({"parameters": metadata.parameters} if metadata.parameters else {}),
            }
        )

    config_responses = {200: {"model": ModelConfigJson}, **error_responses(400, 404, 503)}

    @router.get("/models/{model_name}/config", responses=config_responses)
    @router.get("/models/{model_name}/versions/{model_version}/config", responses=config_responses)
    async def model_config(model_name: str, model_version: str | None = None) -> Response:
        """Triton's model configuration extension: the version's completed config as Triton's ModelConfig."""
        return json_response(dataplane.model_config(model_name, model_version))

    ready_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": ModelReadyJson},
        400: {
            "description": "The model is not ready (ready: false), or the version is not an integer (error)",
            "content": {
                JSON: {"schema": {"anyOf": [ModelReadyJson.model_json_schema(), ErrorJson.model_json_schema()]}}
            },
        },
        **error_responses(404),
    }

    @router.get("/models/{model_name}/ready", responses=ready_responses)
    @router.get("/models/{model_name}/versions/{model_version}/ready", responses=ready_responses)
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        ready = dataplane.model_ready(model_name, model_version)
        return json_response({"name": model_name, "ready": ready}, 200 if ready else 400)

    @router.post("/models/{model_name}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_OPENAPI)
    @router.post(
        "/models/{model_name}/versions/{model_version}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_OPENAPI
    )
    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        """KServe v2 inference; the server answers these paths on its fast path, with the same handler."""
        raw = await receive_body(request.receive, request.headers, dataplane.limits.max_request_bytes)
        answer = await answer_infer(dataplane, raw or b"", model_name, model_version, request.headers)
        return answer.to_response()

    @router.post(
        "/repository/index",
        responses={200: {"model": list[IndexEntryJson]}, **error_responses(400, 413)},
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": IndexRequestJson.model_json_schema()}},
            }
        },
    )
    async def repository_index(request: Request) -> Response:
        body = parse_json_body(IndexRequestJson, await request.body(), empty_ok=True)
        return json_response([_index_entry(e) for e in control.index(ready_only=body.ready)])

    @router.get(
        "/repository/models/{model_name}",
        responses={200: {"model": list[IndexEntryJson]}, **error_responses(404)},
    )
    async def repository_model(model_name: str) -> Response:
        """One model's versions: its index entries, and every version folder on disk with its state."""
        return json_response([_index_entry(e) for e in control.model_index(model_name)])

    management = {"security": ADMIN_SECURITY}

    @router.get(
        "/repository/token",
        status_code=204,
        responses={204: {"description": "The admin token is valid"}, **error_responses(401)},
        openapi_extra=management,
    )
    async def repository_token(request: Request) -> Response:
        """Check the admin token without doing anything else: 204 when it is valid, 401 when not."""
        control.check_token(request.headers.get("authorization"))
        return Response(status_code=204)

    delete_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": DeleteJson},
        **error_responses(400, 401, 404, 503),
    }

    @router.delete("/repository/models/{model_name}", responses=delete_responses, openapi_extra=management)
    @router.delete(
        "/repository/models/{model_name}/versions/{model_version}",
        responses=delete_responses,
        openapi_extra=management,
    )
    async def repository_delete(request: Request, model_name: str, model_version: str | None = None) -> Response:
        """Stop serving a model (or one version) and remove its files from the repository."""
        deleted = await control.delete(model_name, model_version, request.headers.get("authorization"))
        return json_response({"name": model_name, "versions": [str(version) for version in deleted]})

    control_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JSON: {"schema": {"type": "object"}}}},
        **error_responses(400, 401, 404, 503),
    }

    @router.post(
        "/repository/models/{model_name}/load",
        responses=control_responses,
        openapi_extra={
            **management,
            "requestBody": {"required": False, "content": {JSON: {"schema": LoadRequestJson.model_json_schema()}}},
        },
    )
    async def repository_load(request: Request, model_name: str) -> Response:
        """Triton's load; ``{"parameters": {"config": "<ModelConfig JSON>"}}`` loads with a config override."""
        body = parse_json_body(LoadRequestJson, await request.body(), empty_ok=True)
        await control.load_model(model_name, request.headers.get("authorization"), body.parameters)
        return json_response({})

    @router.post(
        "/repository/models/{model_name}/unload",
        responses=control_responses,
        openapi_extra=management,
    )
    async def repository_unload(request: Request, model_name: str) -> Response:
        await control.unload_model(model_name, request.headers.get("authorization"))
        return json_response({})

    traffic = control.traffic

    @router.get(
        "/repository/models/{model_name}/traffic",
        responses={200: {"content": {JSON: {"schema": {"type": "object"}}}}, **error_responses(404)},
    )
    async def repository_traffic(model_name: str) -> Response:
        """The model's traffic policy: version labels, the split between them, the shadow label."""
        return json_response(traffic.policy(model_name))

    @router.put(
        "/repository/models/{model_name}/traffic",
        responses={200: {"content": {JSON: {"schema": {"type": "object"}}}}, **error_responses(400, 401, 404, 503)},
        openapi_extra={
            **management,
            "requestBody": {"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
        },
    )
    async def repository_set_traffic(request: Request, model_name: str) -> Response:
        """Replace the model's traffic policy (``version_labels``, ``routing``, ``shadow``), persisted and atomic."""
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidArgumentError(f"malformed JSON: {error}") from None
        return json_response(await traffic.set_policy(model_name, body, request.headers.get("authorization")))

    promotion_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": PromotionJson},
        **error_responses(400, 401, 404, 503),
    }

    @router.post(
        "/repository/models/{model_name}/promote",
        responses=promotion_responses,
        openapi_extra={
            **management,
            "requestBody": {"required": False, "content": {JSON: {"schema": PromoteRequestJson.model_json_schema()}}},
        },
    )
    async def repository_promote(request: Request, model_name: str) -> Response:
        """Move the ``stable`` label to a version (default: the ``canary`` label's), draining the one it left."""
        body = parse_json_body(PromoteRequestJson, await request.body(), empty_ok=True)
        answer = await traffic.promote(
            model_name, body.to, request.headers.get("authorization"), body.drain_timeout_seconds
        )
        return json_response(answer)

    @router.post(
        "/repository/models/{model_name}/rollback",
        responses=promotion_responses,
        openapi_extra={
            **management,
            "requestBody": {"required": False, "content": {JSON: {"schema": RollbackRequestJson.model_json_schema()}}},
        },
    )
    async def repository_rollback(request: Request, model_name: str) -> Response:
        """Move the ``stable`` label back to where the last promote found it."""
        body = parse_json_body(RollbackRequestJson, await request.body(), empty_ok=True)
        answer = await traffic.rollback(model_name, request.headers.get("authorization"), body.drain_timeout_seconds)
        return json_response(answer)

    upload_responses: dict[int | str, dict[str, Any]] = {
        201: {"model": UploadJson},
        **error_responses(400, 401, 409, 413, 503),
    }
    upload_openapi = {
        "security": ADMIN_SECURITY,
        "requestBody": {
            "required": True,
            "description": "A model package: a tar archive (gzip-compressed or not) of one version folder.",
            "content": {OCTET_STREAM: {"schema": BINARY_SCHEMA}},
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
        result = await control.upload_version(
            model_name, model_version, request.stream(), request.headers.get("authorization")
        )
        return json_response({"name": result.name, "version": str(result.version), "ready": result.ready}, 201)

    return router
