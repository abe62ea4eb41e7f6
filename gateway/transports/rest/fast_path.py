"""The REST fast path: inference answered without FastAPI's routing and middleware.

Inference is the hot path: FastAPI's routing and middleware would cost more than a small model's
whole inference, so :class:`InferenceFastPath`, the ASGI application the server runs, sends
``POST .../infer`` straight to :func:`~gateway.transports.rest.v2.answer_infer` and everything else
to the FastAPI application, whose request bodies it holds to the size limit first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.dataplane import DataPlane
from gateway.errors import GatewayError
from gateway.transports.rest.body import limited_receive, receive_body
from gateway.transports.rest.responses import error_response, internal_error_response
from gateway.transports.rest.v2 import answer_infer

logger = logging.getLogger(__name__)

#: ``POST`` paths of inference: ``/v2/models/{m}/infer`` and ``/v2/models/{m}/versions/{v}/infer``.
INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
#: Paths of the upload routes, whose bodies (model packages) are held to ``max_upload_bytes`` instead.
UPLOAD_PATH = re.compile(r"/v2/repository/models/[^/]+/versions(?:/[^/]+)?")
#: ``Retry-After`` (seconds) sent with every 503: a full queue, a model loading, a server shutting down.
RETRY_AFTER_SECONDS = 1
_RETRY_AFTER = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())


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


class InferenceFastPath:
    """The ASGI application the server runs: inference straight to the data plane, all else to FastAPI.

    ``POST /v2/models/{m}[/versions/{v}]/infer`` is answered by :func:`~gateway.transports.rest.v2.answer_infer` without
    FastAPI's routing and middleware; any other request goes to ``app``. Every 503 answer, on any
    route, carries ``Retry-After: 1`` (:data:`RETRY_AFTER_SECONDS`). A client that disconnects while
    its inference request waits in the model's queue has the request dropped (never run).

    Args:
        dataplane: the data plane answering inference.
        app: the FastAPI application (:func:`gateway.transports.rest.app.create_app`).
    """

    def __init__(self, dataplane: DataPlane, app: ASGIApp) -> None:
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
                receive = limited_receive(receive, scope, self.dataplane.limits.max_request_bytes)
            send = _with_retry_after(send)
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            raw = await receive_body(receive, headers, self.dataplane.limits.max_request_bytes)
            if raw is None:  # the client went away
                return
            answer = await answer_infer(
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
            answer = error_response(error)
        except Exception as error:
            logger.exception("unexpected error answering POST %s", scope["path"])
            answer = internal_error_response(error)
        headers_out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
        headers_out.append((b"content-length", str(len(answer.body)).encode()))
        if answer.status == 503:
            headers_out.append(_RETRY_AFTER)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers_out})
        await send({"type": "http.response.body", "body": answer.body})
