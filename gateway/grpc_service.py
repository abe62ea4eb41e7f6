"""KServe v2 gRPC API: a thin grpc.aio adapter over the data plane, plus ``grpc.health.v1``.

Service ``inference.GRPCInferenceService`` as in KServe's grpc_predict_v2.proto, with the repository
RPCs of Triton's superset (``protos/grpc_predict_v2.proto``). Inputs come as typed ``contents`` or as
``raw_input_contents``; a request with raw inputs gets ``raw_output_contents`` back, as Triton does.
Errors are aborted with the status code from :mod:`gateway.errors`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
    TensorMetadata,
)
from gateway.datatypes import (
    BYTES,
    DEFAULT_LIMITS,
    RequestLimits,
    array_from_raw,
    array_from_values,
    array_to_raw,
    check_value_count,
    element_count,
    numpy_dtype,
)
from gateway.errors import GatewayError, InvalidArgumentError, grpc_status
from gateway.logs import current_request_id
from protos import grpc_predict_v2_pb2 as pb
from protos import grpc_predict_v2_pb2_grpc as pb_grpc

SERVICE_NAME = "inference.GRPCInferenceService"
#: The ``protocol`` label of the gRPC service's metrics.
PROTOCOL = "v2-grpc"
REQUEST_ID_KEY = "x-request-id"

#: Which InferTensorContents field carries each datatype (FP16 has none: it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Method = Callable[[Any, _Request, Context], Awaitable[_Response]]


class HealthStatus(Protocol):
    """The part of grpc_health's asyncio HealthServicer the server uses (grpc-stubs lack ``health.aio``)."""

    async def set(self, service: str, status: int) -> None:
        """Set the serving status of ``service`` ("" for the whole server)."""


def _abort_on_error(method: _Method[_Request, _Response]) -> _Method[_Request, _Response]:
    """Turn a :class:`GatewayError` raised by an RPC into a gRPC status with its message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: _Request, context: Context) -> _Response:
        try:
            return await method(self, request, context)
        except GatewayError as error:
            request_id = current_request_id()
            if request_id:
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            await context.abort(grpc_status(error), error.message)
            raise  # unreachable: abort raises

    return wrapper


def decode_parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict of bool/int/float/str values."""
    decoded: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        decoded[key] = getattr(parameter, choice) if choice else None
    return decoded


def encode_parameters(values: dict[str, Any], target: Any) -> None:
    """Write a dict of bool/int/float/str values into a ``map<string, InferParameter>``."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def decode_infer_request(request: pb.ModelInferRequest, limits: RequestLimits = DEFAULT_LIMITS) -> InferRequest:
    """Decode a ModelInferRequest into the data plane's request.

    The message's size was limited by grpc (``max_request_bytes``); ``limits`` bounds the number of
    inputs and requested outputs and each shape's element count, before any tensor is built.

    Raises:
        InvalidArgumentError: raw contents that do not pair up with the inputs, FP16 sent as typed
            contents, a bad shape, or data that does not fit the declared datatype and shape.
        PayloadTooLargeError: more inputs or requested outputs than the limit, or a shape that
            declares more elements than the limit (RESOURCE_EXHAUSTED).
    """
    limits.check_tensor_counts(len(request.inputs), len(request.outputs))
    max_elements = limits.max_tensor_elements
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidArgumentError(
            f"raw_input_contents holds {len(raw_contents)} entries for {len(request.inputs)} inputs"
        )
    inputs: list[InferTensor] = []
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw_contents:
            data = array_from_raw(raw_contents[index], tensor.datatype, shape, tensor.name, max_elements)
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                numpy_dtype(tensor.datatype)  # raises for an unknown datatype
                raise InvalidArgumentError(
                    f"input '{tensor.name}': {tensor.datatype} has no typed contents field; "
                    "send it in raw_input_contents"
                )
            contents = getattr(tensor.contents, field)
            # Counted before the contents are copied into a list (a Python object per element).
            count = element_count(shape, tensor.name, max_elements)
            check_value_count(count, len(contents), tensor.datatype, shape, tensor.name)
            data = array_from_values(list(contents), tensor.datatype, shape, tensor.name, max_elements)
        inputs.append(InferTensor(tensor.name, tensor.datatype, shape, data, decode_parameters(tensor.parameters)))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version or None,
        id=request.id or None,
        parameters=decode_parameters(request.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(o.name, decode_parameters(o.parameters)) for o in request.outputs],
    )


def encode_infer_response(response: InferResponse, raw: bool) -> pb.ModelInferResponse:
    """Encode a data plane response; ``raw`` writes ``raw_output_contents`` instead of typed contents.

    Typed contents cannot carry FP16, so a response with an FP16 output is written raw.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    encode_parameters(response.parameters, message.parameters)
    raw = raw or any(tensor.datatype not in CONTENTS_FIELD for tensor in response.outputs)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            message.raw_output_contents.append(array_to_raw(tensor.data))
        else:
            getattr(output.contents, CONTENTS_FIELD[tensor.datatype]).extend(tensor.data.ravel().tolist())
    return message


def _metadata_value(context: Context, wanted: str) -> str | None:
    """The value of metadata key ``wanted`` (lower case, as gRPC sends keys) of a call, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == wanted:
            return value if isinstance(value, str) else value.decode()
    return None


def _tensor_metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @_abort_on_error
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        """KServe v2 ServerLive."""
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_abort_on_error
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        """KServe v2 ServerReady."""
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_abort_on_error
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        """KServe v2 ModelReady; NOT_FOUND for an unknown model."""
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    @_abort_on_error
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        """KServe v2 ServerMetadata."""
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version, extensions=metadata.extensions)

    @_abort_on_error
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        """KServe v2 ModelMetadata."""
        metadata = self.dataplane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[_tensor_metadata(t) for t in metadata.inputs],
            outputs=[_tensor_metadata(t) for t in metadata.outputs],
        )

    @_abort_on_error
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        """KServe v2 ModelInfer; raw inputs get raw outputs.

        The call's gRPC deadline (``context.time_remaining()``) bounds the request, with Triton's
        ``timeout`` parameter and the server's request timeout: past it, DEADLINE_EXCEEDED and queued
        work is dropped. A client that cancels has grpc.aio cancel this coroutine, which takes the
        request off the model's queue (see :meth:`gateway.scheduler.Scheduler.run`).
        """
        raw = bool(request.raw_input_contents)
        response: pb.ModelInferResponse = await self.dataplane.infer(
            PROTOCOL,
            request.model_name,
            request.model_version or None,
            decode=lambda: decode_infer_request(request, self.dataplane.limits),
            encode=lambda answer: encode_infer_response(answer, raw=raw),
            request_id=_metadata_value(context, REQUEST_ID_KEY),
            timeout_seconds=context.time_remaining(),
        )
        # Trailing, not initial, metadata: it travels with the status instead of costing a send of its own.
        context.set_trailing_metadata(((REQUEST_ID_KEY, current_request_id() or ""),))
        return response

    @_abort_on_error
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        """Triton's RepositoryIndex."""
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state.value, reason=e.reason
                )
                for e in self.dataplane.repository_index(ready_only=request.ready)
            ]
        )

    @_abort_on_error
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """Triton's RepositoryModelLoad (explicit mode only; ``authorization: Bearer <admin token>`` metadata)."""
        await self.dataplane.load_model(request.model_name, _metadata_value(context, "authorization"))
        return pb.RepositoryModelLoadResponse()

    @_abort_on_error
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        """Triton's RepositoryModelUnload (explicit mode only; ``authorization: Bearer <admin token>`` metadata)."""
        await self.dataplane.unload_model(request.model_name, _metadata_value(context, "authorization"))
        return pb.RepositoryModelUnloadResponse()


def create_grpc_server(
    dataplane: DataPlane,
    address: str,
    max_message_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, HealthStatus]:
    """A grpc.aio server bound to ``address`` (host:port) with the inference and health services.

    The health servicer starts NOT_SERVING; the caller sets SERVING once the server is ready.

    Args:
        dataplane: what the services answer from.
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
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address}")
    return server, health_servicer


async def set_serving(health_servicer: HealthStatus, serving: bool) -> None:
    """Set grpc.health.v1 status of the server ("") and of the inference service."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
