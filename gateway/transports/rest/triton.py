"""Triton's statistics and shared memory extensions over REST, as tritonclient's HTTP client calls them.

Routes (Triton's HTTP/REST protocol extensions):

- statistics: ``GET /v2/models/stats``, ``GET /v2/models/{m}/stats``,
  ``GET /v2/models/{m}/versions/{v}/stats``: ``{"model_stats": [...]}``, one entry per version that
  serves (:meth:`gateway.core.dataplane.DataPlane.model_statistics`);
- system shared memory: ``POST /v2/systemsharedmemory/region/{r}/register`` (``{"key", "offset",
  "byte_size"}``), ``GET /v2/systemsharedmemory[/region/{r}]/status`` (``[{"name", "key", "offset",
  "byte_size"}]``), ``POST /v2/systemsharedmemory[/region/{r}]/unregister`` (every region without
  ``{r}``), over the data plane's :class:`~gateway.core.shared_memory.SharedMemoryRegistry`;
- CUDA shared memory: the same paths under ``/v2/cudasharedmemory`` answer 400 with the reason.

The router must come before the v2 one: ``/v2/models/stats`` would otherwise be taken for the
metadata of a model named ``stats``. Errors are ``{"error": message}`` with the status of
:mod:`gateway.errors`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, StrictInt

from gateway.core.dataplane import DataPlane
from gateway.core.shared_memory import refuse_cuda_shared_memory
from gateway.transports.rest.codec import parse_json_body
from gateway.transports.rest.openapi import RegionStatusJson, StatisticsJson, error_responses
from gateway.transports.rest.responses import JSON, json_response


class RegionRegisterJson(BaseModel):
    """Register a region of a POSIX shared memory object (Triton's system shared memory extension)."""

    key: str = Field(description="The object's key, as shm_open takes it (e.g. /input0).")
    offset: StrictInt = Field(default=0, ge=0, description="The region's offset in the object, in bytes.")
    byte_size: StrictInt = Field(ge=1, description="The region's size, in bytes.")


_EMPTY: dict[int | str, dict[str, Any]] = {
    200: {"content": {JSON: {"schema": {"type": "object"}}}, "description": "Done"}
}


def triton_router(dataplane: DataPlane) -> APIRouter:
    """Triton's statistics and shared memory extensions over the data plane."""
    router = APIRouter(prefix="/v2")
    shared_memory = dataplane.shared_memory

    statistics_responses = {200: {"model": StatisticsJson}, **error_responses(400, 404, 503)}

    @router.get("/models/stats", responses=statistics_responses)
    @router.get("/models/{model_name}/stats", responses=statistics_responses)
    @router.get("/models/{model_name}/versions/{model_version}/stats", responses=statistics_responses)
    async def model_statistics(model_name: str | None = None, model_version: str | None = None) -> Response:
        """Triton's statistics extension: counts and durations (ns) of each version that serves."""
        statistics = dataplane.model_statistics(model_name, model_version)
        return json_response({"model_stats": [entry.to_json() for entry in statistics]})

    @router.get(
        "/systemsharedmemory/status", responses={200: {"model": list[RegionStatusJson]}, **error_responses(404)}
    )
    @router.get(
        "/systemsharedmemory/region/{region_name}/status",
        responses={200: {"model": list[RegionStatusJson]}, **error_responses(404)},
    )
    async def shared_memory_status(region_name: str | None = None) -> Response:
        """The registered system shared memory regions (or the one named)."""
        return json_response(
            [
                {"name": region.name, "key": region.key, "offset": region.offset, "byte_size": region.byte_size}
                for region in shared_memory.status(region_name)
            ]
        )

    @router.post(
        "/systemsharedmemory/region/{region_name}/register",
        responses={**_EMPTY, **error_responses(400, 409)},
        openapi_extra={
            "requestBody": {"required": True, "content": {JSON: {"schema": RegionRegisterJson.model_json_schema()}}}
        },
    )
    async def shared_memory_register(request: Request, region_name: str) -> Response:
        """Register a region of a POSIX shared memory object under ``region_name``."""
        body = parse_json_body(RegionRegisterJson, await request.body())
        shared_memory.register(region_name, body.key, body.offset, body.byte_size)
        return json_response({})

    @router.post("/systemsharedmemory/unregister", responses=_EMPTY)
    @router.post("/systemsharedmemory/region/{region_name}/unregister", responses=_EMPTY)
    async def shared_memory_unregister(region_name: str | None = None) -> Response:
        """Unregister one region, or every region (a name not registered is not an error, as in Triton)."""
        shared_memory.unregister(region_name)
        return json_response({})

    # Not in the OpenAPI schema: they only say that the extension is not there.
    @router.get("/cudasharedmemory/status", include_in_schema=False)
    @router.get("/cudasharedmemory/region/{region_name}/status", include_in_schema=False)
    @router.post("/cudasharedmemory/region/{region_name}/register", include_in_schema=False)
    @router.post("/cudasharedmemory/unregister", include_in_schema=False)
    @router.post("/cudasharedmemory/region/{region_name}/unregister", include_in_schema=False)
    async def cuda_shared_memory(region_name: str | None = None) -> Response:
        """CUDA shared memory is not supported: 400 with the reason."""
        refuse_cuda_shared_memory()

    return router
