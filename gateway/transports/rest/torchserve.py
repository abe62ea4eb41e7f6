"""TorchServe's inference API, and its management API's list and describe: a thin adapter over the core.

Clients written for TorchServe's inference API call the gateway unchanged, for any model it serves.
Every prediction goes through :meth:`gateway.core.dataplane.DataPlane.infer` (protocol label
``torchserve-rest``); these routes only translate JSON (:mod:`gateway.transports.rest.rows`).

Routes (https://pytorch.org/serve/inference_api.html, https://pytorch.org/serve/management_api.html):

- ``POST /predictions/{m}[/{v}]`` with a JSON body: a list of rows (instances, as in TF Serving's
  row format), or ``{"data": rows}`` / ``{"instances": rows}``. The answer is the list of
  predictions: one value per row, or an object per row when the model has several outputs.
- ``GET /ping``: ``{"status": "Healthy"}``, or ``{"status": "Unhealthy"}`` with 503 until the server is ready.
- ``GET /models`` (``limit``, ``next_page_token``): the models with a ready version, ``{"models":
  [{"modelName", "modelUrl"}], "nextPageToken"}``; ``modelUrl`` is the TorchServe archive a model
  is served from (``""`` for other models).
- ``GET /models/{m}[/{v}]``: TorchServe's description of the default version (the highest ready
  one), of version ``v``, or of every ready version with ``v`` = ``all``: a list of ``{"modelName",
  "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
  "workers"}``, from the version's config (instances, dynamic batching) and its archive.
- A version ``{v}`` in these paths is the gateway's version number, or a served archive's own
  ``modelVersion`` (TorchServe's, e.g. ``1.0``).
- Errors: ``{"code": <status>, "type": "<TorchServe exception name>", "message": "<message>"}``.

TorchServe's management API is otherwise not served (registering, scaling and unregistering have
the gateway's repository API instead); the list and describe routes answer on the HTTP port.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.types import InferRequest
from gateway.datatypes import RequestLimits
from gateway.errors import GatewayError, InvalidArgumentError, http_status
from gateway.logs import REQUEST_ID_HEADER
from gateway.repository.model_repository import ModelState
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


class ListedModelJson(BaseModel):
    """One model of TorchServe's ``GET /models``."""

    modelName: str  # TorchServe's field names
    modelUrl: str


class ModelListJson(BaseModel):
    """TorchServe's ``GET /models``: a page of models, and the token of the next page when there is one."""

    models: list[ListedModelJson]
    nextPageToken: str | None = None


class WorkerJson(BaseModel):
    """One worker of a TorchServe model description: here, one instance of the version."""

    id: str
    status: str
    gpu: bool


class ModelDescriptionJson(BaseModel):
    """One version in TorchServe's ``GET /models/{m}[/{v}]``."""

    modelName: str
    modelVersion: str
    modelUrl: str
    runtime: str
    minWorkers: int
    maxWorkers: int
    batchSize: int
    maxBatchDelay: int
    workers: list[WorkerJson]


_JSON_BODY: dict[str, Any] = {"required": True, "content": {JSON: {"schema": {}}}}
#: Versions to describe: ``GET /models/{m}/all``.
ALL_VERSIONS = "all"
#: TorchServe's ``GET /models`` page size when ``limit`` is not given.
DEFAULT_PAGE_SIZE = 100


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


def _archive(dataplane: DataPlane, name: str, version: str | None = None) -> dict[str, Any]:
    """The TorchServe archive a version is served from, as its metadata shows it (``{}`` for other models).

    Raises:
        NotFoundError, UnavailableError, InvalidArgumentError: as :meth:`DataPlane.model_metadata`.
    """
    archive: dict[str, Any] = dataplane.model_metadata(name, version).parameters.get("torchserve", {})
    return archive


def _gateway_version(dataplane: DataPlane, name: str, version: str | None) -> str | None:
    """The gateway version a TorchServe path names: a version number as it is, or the served version
    whose archive has that ``modelVersion`` (e.g. ``1.0``); unchanged when none has (the core refuses it)."""
    if version is None or (version.isascii() and version.isdigit()):
        return version
    try:
        for number in dataplane.model_metadata(name).versions:
            if _archive(dataplane, name, number).get("model_version") == version:
                return number
    except GatewayError:  # an unknown or unready model: the core says so
        pass
    return version


def _count(name: str, value: str, minimum: int) -> int:
    """A query parameter that is a whole number of at least ``minimum``.

    Raises:
        InvalidArgumentError: anything else.
    """
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise InvalidArgumentError(f"{name} must be a whole number of at least {minimum}, got '{value[:40]}'")
    return int(value)


def _description(dataplane: DataPlane, name: str, version: str) -> dict[str, Any]:
    """TorchServe's description of one served version, from its config and its archive."""
    archive = _archive(dataplane, name, version)
    config = dataplane.model_config(name, version)
    group = config["instance_group"][0]
    batching = config.get("dynamic_batching")
    return {
        "modelName": name,
        "modelVersion": archive.get("model_version") or version,
        "modelUrl": archive.get("archive", ""),
        "runtime": archive.get("runtime", "python"),
        "minWorkers": group["count"],
        "maxWorkers": group["count"],
        "batchSize": config["max_batch_size"] if batching is not None else 1,
        "maxBatchDelay": round(batching["max_queue_delay_microseconds"] / 1000) if batching is not None else 0,
        "workers": [
            {"id": str(index), "status": "READY", "gpu": group["kind"] == "KIND_GPU"}
            for index in range(1, group["count"] + 1)
        ],
    }


def torchserve_router(dataplane: DataPlane, control: RepositoryControl) -> APIRouter:
    """TorchServe's inference routes (ping, predictions) and its list and describe routes over the core;
    see the module docstring."""
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
        model_version = _gateway_version(dataplane, model_name, model_version)

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

    @router.get("/models", response_model=ModelListJson, responses=error_responses(400, body=TorchServeErrorJson))
    async def list_models(
        limit: str = Query(str(DEFAULT_PAGE_SIZE), description="The most models in one answer (at least 1)."),
        next_page_token: str = Query("0", description="Where the page starts: a previous answer's nextPageToken."),
    ) -> Response:
        size, start = _count("limit", limit, minimum=1), _count("next_page_token", next_page_token, minimum=0)
        names = sorted({entry.name for entry in control.index() if entry.state is ModelState.READY})
        page = names[start : start + size]
        models = []
        for name in page:
            try:
                url = _archive(dataplane, name).get("archive", "")
            except GatewayError:  # unloaded since the index was read
                continue
            models.append({"modelName": name, "modelUrl": url})
        answer: dict[str, Any] = {"models": models}
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return json_response(answer)

    describe_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": list[ModelDescriptionJson]},
        **error_responses(400, 404, 503, body=TorchServeErrorJson),
    }

    @router.get("/models/{model_name}", responses=describe_responses)
    @router.get("/models/{model_name}/{model_version}", responses=describe_responses)
    async def describe_model(model_name: str, model_version: str | None = None) -> Response:
        if model_version == ALL_VERSIONS:
            versions = dataplane.model_metadata(model_name).versions
        else:
            version = _gateway_version(dataplane, model_name, model_version)
            versions = [version or max(dataplane.model_metadata(model_name).versions, key=int)]
        return json_response([_description(dataplane, model_name, version) for version in versions])

    return router
