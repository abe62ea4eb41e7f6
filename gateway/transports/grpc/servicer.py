"""KServe v2 gRPC API: the RPC methods of ``inference.GRPCInferenceService``, a thin adapter over the core.

Service ``inference.GRPCInferenceService`` as in KServe's grpc_predict_v2.proto, with the repository,
model configuration, statistics and system shared memory RPCs of Triton's superset
(``protos/grpc_predict_v2.proto``; messages from :mod:`protos.inference`). Messages are decoded and
encoded by :mod:`gateway.transports.grpc.codec`; a request with raw inputs (or inputs in shared
memory, as tritonclient sends them) gets ``raw_output_contents`` back, as Triton does. CUDA shared
memory RPCs answer UNIMPLEMENTED. Errors are aborted with the status code of :mod:`gateway.errors`'
one table.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import json_format

from gateway.core.dataplane import DataPlane
from gateway.core.repository_control import RepositoryControl
from gateway.core.shared_memory import REGION, refuse_cuda_shared_memory
from gateway.core.types import TensorMetadata
from gateway.errors import GatewayError, status_code_name
from gateway.logs import current_request_id
from gateway.transports.grpc.codec import decode_infer_request, decode_parameters, encode_infer_response
from protos import inference as pb
from protos.pool import ProtoMessage

#: The ``protocol`` label of the gRPC service's metrics.
PROTOCOL = "v2-grpc"
REQUEST_ID_KEY = "x-request-id"

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Context(Protocol):
    """What the servicers use of a call's context: that much of ``grpc.aio.ServicerContext``'s API, which
    :class:`gateway.transports.grpc.server.LoopContext` gives a call of the synchronous server."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        """The call's metadata (lower-case keys)."""

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline; None without one."""

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None:
        """Metadata sent with the call's status."""

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """End the call with ``code`` and ``details``; raises (the call is over)."""


_Method = Callable[[Any, _Request, Context], Awaitable[_Response]]


def grpc_status(error: GatewayError) -> grpc.StatusCode:
    """The gRPC status code for ``error`` (e.g. INVALID_ARGUMENT for :class:`~gateway.errors.InvalidArgumentError`)."""
    return grpc.StatusCode[status_code_name(error)]


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


def _metadata_value(context: Context, wanted: str) -> str | None:
    """The value of metadata key ``wanted`` (lower case, as gRPC sends keys) of a call, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == wanted:
            return value if isinstance(value, str) else value.decode()
    return None


class _CallMetadata(Mapping[str, str]):
    """A call's metadata as a read-only mapping (lower-case keys), read only when a key is looked up."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def __getitem__(self, key: str) -> str:
        value = _metadata_value(self._context, key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _ in self._context.invocation_metadata() or ()])

    def __len__(self) -> int:
        return len(self._context.invocation_metadata() or ())


def _tensor_metadata(tensor: TensorMetadata) -> ProtoMessage:
    return pb.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)


class InferenceServicer:
    """``inference.GRPCInferenceService`` over the core.

    Args:
        dataplane: answers health, metadata and inference.
        control: answers the repository RPCs (index, load, unload).
    """

    def __init__(self, dataplane: DataPlane, control: RepositoryControl) -> None:
        self.dataplane = dataplane
        self.control = control

    @_abort_on_error
    async def ServerLive(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """KServe v2 ServerLive."""
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_abort_on_error
    async def ServerReady(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """KServe v2 ServerReady."""
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_abort_on_error
    async def ModelReady(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """KServe v2 ModelReady; NOT_FOUND for an unknown model."""
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    @_abort_on_error
    async def ServerMetadata(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """KServe v2 ServerMetadata."""
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version, extensions=metadata.extensions)

    @_abort_on_error
    async def ModelMetadata(self, request: ProtoMessage, context: Context) -> ProtoMessage:
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
    async def ModelInfer(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """KServe v2 ModelInfer; raw inputs get raw outputs.

        The call's gRPC deadline (``context.time_remaining()``) bounds the request, with Triton's
        ``timeout`` parameter and the server's request timeout: past it, DEADLINE_EXCEEDED and queued
        work is dropped. A client that cancels has the server cancel this coroutine, which takes the
        request off the model's queue (see :meth:`gateway.runtime.scheduler.Scheduler.run`).
        """
        raw = bool(request.raw_input_contents) or any(REGION in tensor.parameters for tensor in request.inputs)
        response: ProtoMessage = await self.dataplane.infer(
            PROTOCOL,
            request.model_name,
            request.model_version or None,
            decode=lambda: decode_infer_request(request, self.dataplane.limits, self.dataplane.shared_memory),
            encode=lambda answer: encode_infer_response(answer, raw=raw),
            request_id=_metadata_value(context, REQUEST_ID_KEY),
            timeout_seconds=context.time_remaining(),
            headers=_CallMetadata(context),
        )
        # Trailing, not initial, metadata: it travels with the status instead of costing a send of its own.
        context.set_trailing_metadata(((REQUEST_ID_KEY, current_request_id() or ""),))
        return response

    @_abort_on_error
    async def RepositoryIndex(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's RepositoryIndex."""
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state.value, reason=e.reason
                )
                for e in self.control.index(ready_only=request.ready)
            ]
        )

    @_abort_on_error
    async def RepositoryModelLoad(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's RepositoryModelLoad (explicit mode only; ``authorization: Bearer <admin token>`` metadata).

        The ``config`` parameter (``string_param``: Triton's ModelConfig JSON) loads with a config override.
        """
        parameters = decode_parameters(request.parameters)
        await self.control.load_model(request.model_name, _metadata_value(context, "authorization"), parameters)
        return pb.RepositoryModelLoadResponse()

    @_abort_on_error
    async def RepositoryModelUnload(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's RepositoryModelUnload (explicit mode only; ``authorization: Bearer <admin token>`` metadata)."""
        await self.control.unload_model(request.model_name, _metadata_value(context, "authorization"))
        return pb.RepositoryModelUnloadResponse()

    @_abort_on_error
    async def ModelConfig(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's ModelConfig: the configuration a version is served with (as the REST ``.../config`` route)."""
        config = self.dataplane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    @_abort_on_error
    async def ModelStatistics(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's ModelStatistics: every version serving, of every model when no name is given."""
        statistics = self.dataplane.model_statistics(request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(
            model_stats=[json_format.ParseDict(entry.to_json(), pb.ModelStatistics()) for entry in statistics]
        )

    @_abort_on_error
    async def SystemSharedMemoryStatus(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's SystemSharedMemoryStatus: the registered regions (or the one named)."""
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name or None):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return response

    @_abort_on_error
    async def SystemSharedMemoryRegister(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's SystemSharedMemoryRegister: a region of a POSIX shared memory object, by name."""
        self.dataplane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_abort_on_error
    async def SystemSharedMemoryUnregister(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """Triton's SystemSharedMemoryUnregister: one region, or every region when no name is given."""
        self.dataplane.shared_memory.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_abort_on_error
    async def CudaSharedMemoryStatus(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """CUDA shared memory is not supported: UNIMPLEMENTED."""
        refuse_cuda_shared_memory()

    @_abort_on_error
    async def CudaSharedMemoryRegister(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """CUDA shared memory is not supported: UNIMPLEMENTED."""
        refuse_cuda_shared_memory()

    @_abort_on_error
    async def CudaSharedMemoryUnregister(self, request: ProtoMessage, context: Context) -> ProtoMessage:
        """CUDA shared memory is not supported: UNIMPLEMENTED."""
        refuse_cuda_shared_memory()
