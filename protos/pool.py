"""The gateway's gRPC service handlers, built at import from :mod:`protos.descriptor_set`.

The messages and their private descriptor pool are :mod:`protos.messages`' (re-exported here, with no
gRPC import there); this module adds the service handlers, from ``grpc``'s generic handlers, so that no
generated ``_pb2_grpc`` code ties the gateway to one grpcio release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from protos.messages import POOL, ProtoMessage, message_class

__all__ = ["POOL", "ProtoMessage", "add_service", "message_class"]


def add_service(
    server: grpc.Server | grpc.aio.Server,
    service_name: str,
    servicer: object,
    adapt: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> None:
    """Serve every method of service ``service_name`` (e.g. ``inference.GRPCInferenceService``) on ``server``.

    Each method is answered by the servicer's method of the same name, ``(request, context) ->
    response``, with the request and response messages of :data:`POOL`; ``adapt``, when given, turns
    each such method into the behaviour the server calls (e.g. a coroutine into a blocking call).

    Raises:
        KeyError: no such service in the gateway's protos.
        TypeError: the servicer lacks a method, or the service has a streaming method (not supported).
    """
    service = POOL.FindServiceByName(service_name)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{service_name}.{method.name} streams; only unary methods are supported")
        behaviour: Callable[..., Any] | None = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {service_name}.{method.name}")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour if adapt is None else adapt(behaviour),
            request_deserializer=message_class(method.input_type.full_name).FromString,
            response_serializer=message_class(method.output_type.full_name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:  # grpcio >= 1.63: methods looked up by a precomputed path (faster)
        register(service_name, handlers)
