"""gRPC transport: KServe v2 ``inference.GRPCInferenceService`` and ``grpc.health.v1`` on grpcio.

- :mod:`~gateway.transports.grpc.codec`: protobuf messages <-> core request and response types.
- :mod:`~gateway.transports.grpc.servicer`: the RPC methods over the core.
- :mod:`~gateway.transports.grpc.server`: the server (grpc.aio, or the synchronous one) and its health status.
"""
