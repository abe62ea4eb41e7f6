"""TorchServe's inference API: a thin adapter over the same core as KServe v2.

Clients written for TorchServe's inference API call the gateway unchanged, for any model it serves.
Every prediction goes through :meth:`gateway.core.dataplane.DataPlane.infer` (protocol label
``torchserve-rest``); these routes only translate JSON (:mod:`gateway.transports.rest.rows`).

Routes (https://pytorch.org/serve/inference_api.html):

- ``POST /predictions/{m}[/{v}]`` with a JSON body: a list of rows (instances, as in TF Serving's
  row format), or ``{"data": rows}`` / ``{"instances": rows}``. The answer is the list of
  predictions: one value per row, or an object per row when the model has several outputs.
- ``GET /ping``: ``{"status": "Healthy"}``, or ``{"status": "Unhealthy"}`` with 503 until the server is ready.
- Errors: ``{"code": <status>, "type": "<TorchServe exception name>", "message": "<message>"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from gateway.core.dataplane import DataPlane
from gateway.core.types import InferRequest
from gateway.datatypes import RequestLimits
from gateway.errors import GatewayError, InvalidArgumentError, http_status
from gateway.logs import REQUEST_ID_HEADER
from gateway.transports.rest.openapi import error_responses
from gateway.transports.rest.responses import JSON, error_shaped_route, json_response
from gateway.transports.rest.rows import parse_json, row_predictions, row_tensors

#: The ``protocol`` label of these routes' metrics.
PROTOCOL = "torchserve-rest"
#: HTTP status -> the exception name TorchServe answers with it.
_TORCHSERVE_ERRORS = {
    400: "BadRequestException",
    404: "ModelNotFoundException",
    413: "RequestEntityTooLargeException",
    503: "ServiceUnavailableException",
}


class TorchServeErrorJson(BaseModel):
    """TorchServe's error answer."""

    code: int
    type: str
    message: str


class PingJson(BaseModel):
    """TorchServe's ``GET /ping``: Healthy (200) or Unhealthy (503)."""

    status: str


_JSON_BODY: dict[str, Any] = {"required": True, "content": {JSON: {"schema": {}}}}


def _error_response(error: GatewayError) -> Response:
    """TorchServe's error body: ``{"code": status, "type": exception name, "message": message}``."""
    status = http_status(error)
    kind = _TORCHSERVE_ERRORS.get(status, "InternalServerException")
    return json_response({"code": status, "type": kind, "message": error.message}, status, nan_literals=True)


def _torchserve_rows(raw: bytes, limits: RequestLimits) -> Any:
    """The rows of a TorchServe predictions body: a JSON list, or the list under ``data`` or ``instances``.

    Raises:
        InvalidArgumentError: malformed JSON (or nested deeper than the limit), or a body of another shape.
    """
    body = parse_json(raw, limits)
    if isinstance(body, dict) and len(body) == 1 and ("data" in body or "instances" in body):
        return next(iter(body.values()))
    if isinstance(body, list):
        return body
    raise InvalidArgumentError(
        'the body must be a JSON list of rows, or {"data": [rows]} or {"instances": [rows]}; '
        "a row is the value of the model's only input, or an object {input name: value}"
    )


def torchserve_router(dataplane: DataPlane) -> APIRouter:
    """TorchServe's inference routes (ping, predictions) over the core; see the module docstring."""
    router = APIRouter(route_class=error_shaped_route(_error_response))

    @router.get("/ping", responses={200: {"model": PingJson}, 503: {"model": PingJson}})
    async def ping() -> Response:
        ready = dataplane.ready()
        return json_response({"status": "Healthy" if ready else "Unhealthy"}, 200 if ready else 503, nan_literals=True)

    predictions_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {JSON: {"schema": {"type": "array"}}}},
        **error_responses(400, 404, 413, 500, 503, 504, body=TorchServeErrorJson),
    }
    predictions_openapi = {"requestBody": _JSON_BODY}

    @router.post("/predictions/{model_name}", responses=predictions_responses, openapi_extra=predictions_openapi)
    @router.post(
        "/predictions/{model_name}/{model_version}",
        responses=predictions_responses,
        openapi_extra=predictions_openapi,
    )
    async def predictions(request: Request, model_name: str, model_version: str | None = None) -> Response:
        raw = await request.body()

        def decode() -> InferRequest:
            inputs = dataplane.model_metadata(model_name, model_version).inputs
            tensors = row_tensors(_torchserve_rows(raw, dataplane.limits), inputs, "data", dataplane.limits)
            return InferRequest(model_name=model_name, model_version=model_version, inputs=tensors)

        body = await dataplane.infer(
            PROTOCOL,
            model_name,
            model_version,
            decode=decode,
            encode=row_predictions,
            request_id=request.headers.get(REQUEST_ID_HEADER),
        )
        return json_response(body, nan_literals=True)

    return router
