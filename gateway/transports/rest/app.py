"""The REST application: the route table of every REST protocol, its error handlers, ``/metrics`` and CORS.

:func:`create_rest_app` builds what the server runs: the :class:`~gateway.transports.rest.fast_path.InferenceFastPath`
in front of the FastAPI application of :func:`create_app`, behind CORS when origins are configured.

Routes: KServe v2 (:mod:`~gateway.transports.rest.v2`), Triton's statistics and shared memory
extensions (:mod:`~gateway.transports.rest.triton`), TF Serving
(:mod:`~gateway.transports.rest.tfserving`), TorchServe (:mod:`~gateway.transports.rest.torchserve`),
``GET /metrics`` (Prometheus text format), ``/openapi.json`` and ``/docs``. A :class:`GatewayError`
from a v2 route is answered ``{"error": message}`` with its status; the TF Serving and TorchServe
routes answer in their own error shapes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.datatypes import INFERENCE_HEADER_LENGTH
from gateway.errors import GatewayError
from gateway.logs import REQUEST_ID_HEADER
from gateway.transports.rest.fast_path import InferenceFastPath
from gateway.transports.rest.openapi import ADMIN_TOKEN_SCHEME
from gateway.transports.rest.responses import error_response, internal_error_response, json_response
from gateway.transports.rest.tfserving import tfserving_router
from gateway.transports.rest.torchserve import torchserve_router
from gateway.transports.rest.triton import triton_router
from gateway.transports.rest.v2 import v2_router

logger = logging.getLogger(__name__)


def create_app(dataplane: DataPlane, control: RepositoryControl) -> FastAPI:
    """The FastAPI application serving every REST route and ``/metrics`` over the core.

    Args:
        dataplane: inference, health and metadata; its repository's metrics registry is what
            ``/metrics`` exposes.
        control: the repository index and the management API.
    """
    app = FastAPI(title="model-gateway", summary="KServe v2 inference over REST", docs_url="/docs")
    registry = dataplane.repository.metrics.registry
    app.include_router(triton_router(dataplane))  # before v2: /v2/models/stats is not a model named "stats"
    app.include_router(v2_router(dataplane, control))
    app.include_router(tfserving_router(dataplane, control))
    app.include_router(torchserve_router(dataplane, control))

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the admin token's security scheme (bearer) that the management routes name."""
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["adminToken"] = ADMIN_TOKEN_SCHEME
        return app.openapi_schema or default_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, error: GatewayError) -> Response:
        return error_response(error).to_response()

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return internal_error_response(error).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> Response:
        return json_response({"error": str(error.detail)}, error.status_code)

    return app


def create_rest_app(dataplane: DataPlane, control: RepositoryControl, cors_allow_origins: list[str]) -> ASGIApp:
    """The ASGI application the server runs: the inference fast path over :func:`create_app`.

    Args:
        dataplane: inference, health and metadata.
        control: the repository index and the management API.
        cors_allow_origins: origins allowed to call the API from a browser; empty: no CORS headers at all.
    """
    app: ASGIApp = InferenceFastPath(dataplane, create_app(dataplane, control))
    if cors_allow_origins:
        app = CORSMiddleware(
            app,
            allow_origins=cors_allow_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, INFERENCE_HEADER_LENGTH],
        )
    return app
