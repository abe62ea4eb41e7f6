"""The gRPC transport's server: the inference and ``grpc.health.v1`` services on one port, of either kind.

The inference services are KServe v2's ``inference.GRPCInferenceService`` and TF Serving's
``tensorflow.serving.PredictionService`` and ``ModelService`` (:mod:`gateway.transports.grpc.tfserving`).
Their methods are coroutines on the gateway's event loop, served by one of grpcio's two servers
(``--grpc-server``, :class:`~gateway.settings.GrpcServerKind`):

- ``asyncio`` (the default): ``grpc.aio``, on the event loop itself;
- ``threads``: the synchronous ``grpc.server`` with a pool of ``--grpc-threads`` threads; each call's thread
  hands the servicer's coroutine to the event loop (:func:`on_loop`) and waits for it. Measured in the
  gateway (``bench/grpc_breakdown.py``, small MLP, concurrency 32): with the process on one core, a call
  costs 194 us of CPU against 430 through grpc.aio, twice the calls per second; with its threads free
  to run on several cores it is slower than grpc.aio (the GIL passes between the loop's thread and the
  call's on every call, and passing it between cores costs more than the server saves), so it pays where each
  gateway process has a core of its own (``taskset``, a cpuset, several busy workers).

Either way deadlines are the servicers' to honour (``context.time_remaining()``); a call that ends
before its answer (the client cancelled, its deadline passed) cancels its coroutine, which takes the
request off the model's queue (grpc.aio cancels it; with threads, :func:`on_loop`'s ``add_callback``);
the health service is grpc_health's servicer of the same kind; stopping gives the calls in flight a
grace period while the loop keeps running (:meth:`GrpcServer.stop`). With threads a call holds its
thread until answered: calls beyond the pool wait in gRPC's queue for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.transports.grpc.servicer import Context, InferenceServicer
from gateway.transports.grpc.tfserving import ModelStatusServicer, PredictionServicer
from protos.inference import SERVICE_NAME
from protos.pool import add_service
from protos.tfserving import MODEL_SERVICE, PREDICTION_SERVICE

#: A servicer's method as the services define it: ``(request, context) -> response``, a coroutine.
LoopMethod = Callable[[Any, Context], Coroutine[Any, Any, Any]]


class LoopContext:
    """A synchronous server's call context with the asyncio API the servicers use (:class:`Context`).

    Args:
        context: the call's ``grpc.ServicerContext``; its methods are safe to call from the event loop's thread.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        """The call's metadata (lower-case keys)."""
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline; None without one."""
        return self._context.time_remaining()

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None:
        """Metadata sent with the call's status."""
        self._context.set_trailing_metadata(tuple(trailing_metadata))

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """End the call with ``code`` and ``details``: raises, and the server sends that status."""
        self._context.abort(code, details)
        raise AssertionError("grpc.ServicerContext.abort returned")  # it always raises


def on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[LoopMethod], Callable[[Any, grpc.ServicerContext], Any]]:
    """How a servicer's coroutine method is served by the synchronous server: run on ``loop``, waited for.

    The returned adapter takes a method and gives the blocking behaviour a server thread calls. When
    the call ends first (cancelled by the client, past its deadline), its coroutine is cancelled, and
    the thread ends the call as CANCELLED (the client is gone; nothing is sent).
    """

    def adapt(method: LoopMethod) -> Callable[[Any, grpc.ServicerContext], Any]:
        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            answer = asyncio.run_coroutine_threadsafe(method(request, LoopContext(context)), loop)

            def cancel() -> None:  # called when the call ends, answered or not
                answer.cancel()

            if not context.add_callback(cancel):  # it has ended already
                cancel()
            try:
                return answer.result()
            except concurrent.futures.CancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "the call ended before its answer")

        return behaviour

    return adapt


class GrpcServer:
    """A gRPC server with the gateway's services and its health status: start, set serving, stop.

    Made by :func:`create_grpc_server`; its methods are called on the event loop that serves the calls.
    """

    def __init__(self, server: grpc.Server | grpc.aio.Server, health_servicer: Any) -> None:
        self._server = server
        self._health = health_servicer

    async def start(self) -> None:
        """Start taking calls."""
        if isinstance(self._server, grpc.aio.Server):
            await self._server.start()
        else:
            self._server.start()

    async def set_serving(self, serving: bool) -> None:
        """Set the grpc.health.v1 status of the server ("") and of the inference services."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME, PREDICTION_SERVICE, MODEL_SERVICE):
            if isinstance(self._server, grpc.aio.Server):
                await self._health.set(service, status)
            else:
                self._health.set(service, status)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking calls, give those in flight ``grace_seconds`` to finish (their coroutines run on this
        loop meanwhile), then end them; return once the server has stopped."""
        if isinstance(self._server, grpc.aio.Server):
            await self._server.stop(grace_seconds)
        else:
            await asyncio.to_thread(self._server.stop(grace_seconds).wait)


def create_grpc_server(
    dataplane: DataPlane,
    control: RepositoryControl,
    address: str,
    max_message_bytes: int,
    threads: int | None = None,
    credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
) -> GrpcServer:
    """A gRPC server bound to ``address`` (host:port) with the inference and health services, answered on the
    running event loop (call it from a coroutine).

    The health status starts NOT_SERVING; the caller sets SERVING once the server is ready.

    Args:
        dataplane: what inference, health and metadata are answered from.
        control: what the repository RPCs are answered from.
        address: host:port to listen on.
        max_message_bytes: largest message received or sent, in bytes.
        threads: None: a grpc.aio server; else the synchronous server with this many threads (calls
            answered at once; the others wait for a thread).
        credentials: TLS credentials, or None for plaintext.
        reuse_port: let other processes listen on the same port (SO_REUSEPORT, for worker
            processes); off otherwise, so that a second server on a busy port fails to start.

    Raises:
        RuntimeError: the address cannot be bound, or no event loop runs.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    server: grpc.Server | grpc.aio.Server
    health_servicer: Any
    if threads is None:
        server = grpc.aio.server(options=options)
        adapt = None
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lack health.aio
    else:
        pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="grpc")
        server = grpc.server(pool, options=options)
        adapt = on_loop(asyncio.get_running_loop())
        health_servicer = health.HealthServicer()
    add_service(server, SERVICE_NAME, InferenceServicer(dataplane, control), adapt)
    add_service(server, PREDICTION_SERVICE, PredictionServicer(dataplane), adapt)
    add_service(server, MODEL_SERVICE, ModelStatusServicer(dataplane, control), adapt)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address}")
    return GrpcServer(server, health_servicer)
