"""JSON answers and error bodies of the REST transport, shared by the v2, TF Serving and TorchServe routes.

Every answer carries ``X-Request-ID`` when a request id is set in its context. Error statuses come
from the one table of :mod:`gateway.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from gateway.errors import GatewayError, UnauthenticatedError, http_status
from gateway.logs import request_id_header

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An HTTP answer before it is sent: status, headers (by name) and the body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def to_response(self) -> Response:
        """The same answer as a Starlette response (for FastAPI routes and handlers)."""
        return Response(self.body, status_code=self.status, headers=self.headers)


def json_response(content: Any, status_code: int = 200, *, nan_literals: bool = False) -> Response:
    """A JSON answer, with ``X-Request-ID`` when a request id is set.

    Args:
        content: JSON-serializable values.
        status_code: the HTTP status.
        nan_literals: write non-finite floats as ``NaN`` and ``Infinity`` (TF Serving's JSON, which
            its clients read) instead of ``null`` (standard JSON, written by orjson).
    """
    body = json.dumps(content, separators=(",", ":")) if nan_literals else orjson.dumps(content)
    return Response(body, status_code=status_code, media_type=JSON, headers=request_id_header())


def error_response(error: GatewayError) -> RawResponse:
    """The answer to ``error`` in the KServe v2 (and TF Serving) shape: ``{"error": message}`` with its status.

    A missing or wrong admin token also gets ``WWW-Authenticate`` (RFC 6750).
    """
    headers = {"content-type": JSON, **(request_id_header() or {})}
    if isinstance(error, UnauthenticatedError):
        headers["WWW-Authenticate"] = 'Bearer realm="model-gateway management API"'
    return RawResponse(http_status(error), headers, orjson.dumps({"error": error.message}))


def internal_error_response(error: Exception) -> RawResponse:
    """The 500 answer to an unexpected exception: ``{"error": "internal error: <exception class>"}``.

    The exception's message is not shown (it may hold internals); the caller logs it.
    """
    body = orjson.dumps({"error": f"internal error: {type(error).__name__}"})
    return RawResponse(500, {"content-type": JSON}, body)


def error_shaped_route(render: Callable[[GatewayError], Response]) -> type[APIRoute]:
    """A route class whose handlers answer a :class:`GatewayError` with ``render`` (the protocol's error shape).

    FastAPI's exception handlers are per application; this gives one family of routes (TF Serving's,
    TorchServe's) its own error body.
    """

    class ErrorShapedRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except GatewayError as error:
                    return render(error)

            return handle

    return ErrorShapedRoute
