"""KServe v2 / Open Inference Protocol gRPC messages (``protos/grpc_predict_v2.proto``), from :mod:`protos.pool`.

``inference.GRPCInferenceService`` as in KServe's grpc_predict_v2.proto, with the repository, model
configuration, statistics and shared memory RPCs of Triton's superset. Use them as generated classes:
``ModelInferRequest(model_name="m")``, ``ModelInferResponse.FromString(data)``,
``ModelMetadataResponse.TensorMetadata``.
"""

from __future__ import annotations

from protos.pool import ProtoMessage, message_class

#: The service's full name (its RPC paths are ``/inference.GRPCInferenceService/<Method>``).
SERVICE_NAME = "inference.GRPCInferenceService"


def _message(name: str) -> type[ProtoMessage]:
    return message_class(f"inference.{name}")


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")
ModelConfigRequest = _message("ModelConfigRequest")
ModelConfigResponse = _message("ModelConfigResponse")
ModelConfig = _message("ModelConfig")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
ModelStatistics = _message("ModelStatistics")
SystemSharedMemoryStatusRequest = _message("SystemSharedMemoryStatusRequest")
SystemSharedMemoryStatusResponse = _message("SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterRequest = _message("SystemSharedMemoryRegisterRequest")
SystemSharedMemoryRegisterResponse = _message("SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterRequest = _message("SystemSharedMemoryUnregisterRequest")
SystemSharedMemoryUnregisterResponse = _message("SystemSharedMemoryUnregisterResponse")
