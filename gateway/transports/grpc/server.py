"""The grpc.aio server of the gRPC transport: the inference and ``grpc.health.v1`` services on one port.

The inference services are KServe v2's ``inference.GRPCInferenceService`` and TF Serving's
``tensorflow.serving.PredictionService`` and ``ModelService`` (:mod:`gateway.transports.grpc.tfserving`).
"""

from __future__ import annotations

from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.transports.grpc.servicer import InferenceServicer
from gateway.transports.grpc.tfserving import ModelStatusServicer, PredictionServicer
from protos.inference import SERVICE_NAME
from protos.pool import add_service
from protos.tfserving import MODEL_SERVICE, PREDICTION_SERVICE


class HealthStatus(Protocol):
    """The part of grpc_health's asyncio HealthServicer the server uses (grpc-stubs lack ``health.aio``)."""

    async def set(self, service: str, status: int) -> None:
        """Set the serving status of ``service`` ("" for the whole server)."""


def create_grpc_server(
    dataplane: DataPlane,
    control: RepositoryControl,
    address: str,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, HealthStatus]:
    """A grpc.aio server bound to ``address`` (host:port) with the inference and health services.

    The health servicer starts NOT_SERVING; the caller sets SERVING once the server is ready.

    Args:
        dataplane: what inference, health and metadata are answered from.
        control: what the repository RPCs are answered from.
        address: host:port to listen on.
        max_message_bytes: largest message received or sent, in bytes.
        credentials: TLS credentials, or None for plaintext.
        reuse_port: let other processes listen on the same port (SO_REUSEPORT, for worker
            processes); off otherwise, so that a second server on a busy port fails to start.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    add_service(server, SERVICE_NAME, InferenceServicer(dataplane, control))
    add_service(server, PREDICTION_SERVICE, PredictionServicer(dataplane))
    add_service(server, MODEL_SERVICE, ModelStatusServicer(dataplane, control))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address}")
    return server, health_servicer


async def set_serving(health_servicer: HealthStatus, serving: bool) -> None:
    """Set grpc.health.v1 status of the server ("") and of the inference services."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME, PREDICTION_SERVICE, MODEL_SERVICE):
        await health_servicer.set(service, status)
