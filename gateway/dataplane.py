"""The protocol-neutral data plane that REST and gRPC both call.

The transports decode their wire format into the dataclasses below (tensors as numpy arrays), call
one :class:`DataPlane` method, and encode what it returns. All checking of a request against the
model, all scheduling and all repository control happens here; errors are raised as
:mod:`gateway.errors` classes, which each transport maps through the one status table.

Semantics follow the KServe v2 / Open Inference Protocol (health, metadata, inference) and its
model repository extension (index, load, unload).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from backends import InferenceInputError
from gateway.errors import FailedPreconditionError, InternalError, InvalidArgumentError, UnavailableError
from gateway.repository import IndexEntry, LoadedVersion, ModelRepository, ModelState
from gateway.settings import ModelControlMode

logger = logging.getLogger(__name__)

SERVER_NAME = "model-gateway"
#: KServe v2 / Triton extensions this server implements.
EXTENSIONS = ("model_repository", "parameters")

Parameters = dict[str, Any]


@dataclass(slots=True)
class InferTensor:
    """One input or output tensor: v2 datatype, shape, and the data as a numpy array of that shape.

    BYTES data is an ``object`` array of ``bytes``.
    """

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asks for by name, with its parameters (e.g. binary_data)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """An inference request after decoding (KServe v2 "Inference Request JSON Object")."""

    model_name: str
    model_version: str | None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    """An inference response before encoding (KServe v2 "Inference Response JSON Object")."""

    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """Name, v2 datatype and shape (-1: variable, including the batch dim) of a model tensor."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """KServe v2 "Model Metadata Response JSON Object"; ``platform`` in Triton's names."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """KServe v2 "Server Metadata Response JSON Object"."""

    name: str
    version: str
    extensions: list[str]


class DataPlane:
    """Health, metadata, inference and repository control over one model repository.

    Args:
        repository: the model repository whose loaded versions serve requests.
        control_mode: the model control mode; load and unload requests need ``explicit``.
    """

    def __init__(self, repository: ModelRepository, control_mode: ModelControlMode) -> None:
        self.repository = repository
        self.control_mode = control_mode
        self.is_ready = False
        try:
            self._version = version("model-gateway")
        except PackageNotFoundError:
            self._version = "0+unknown"

    def live(self) -> bool:
        """Whether the server is alive (it is, while it answers)."""
        return True

    def ready(self) -> bool:
        """Whether the server is ready: the start-up load of the repository has finished."""
        return self.is_ready

    def server_metadata(self) -> ServerMetadata:
        """Server name, version and extensions."""
        return ServerMetadata(SERVER_NAME, self._version, list(EXTENSIONS))

    def model_ready(self, name: str, model_version: str | None = None) -> bool:
        """Whether the model (or one version) is ready for inference.

        Raises:
            NotFoundError: unknown or unloaded model, or a version it does not serve.
            InvalidArgumentError: the version is not an integer.
        """
        try:
            self.repository.get(name, model_version)
        except UnavailableError:
            return False
        return True

    def model_metadata(self, name: str, model_version: str | None = None) -> ModelMetadata:
        """Metadata of the model as served by ``model_version`` (default: its highest ready version).

        Raises:
            NotFoundError, UnavailableError, InvalidArgumentError: as :meth:`ModelRepository.get`.
        """
        loaded = self.repository.get(name, model_version)
        return ModelMetadata(
            name=name,
            versions=[str(v) for v in self.repository.ready_versions(name)],
            platform=loaded.platform,
            inputs=[TensorMetadata(n, s.datatype, list(s.shape)) for n, s in loaded.inputs.items()],
            outputs=[TensorMetadata(n, s.datatype, list(s.shape)) for n, s in loaded.outputs.items()],
        )

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check a request against the model, run it, and return the requested outputs.

        Raises:
            NotFoundError: unknown model or version.
            UnavailableError: the model or version is not ready.
            InvalidArgumentError: a missing, unknown or repeated input; a datatype or shape that
                does not match the model; a batch over max_batch_size; an unknown output.
            InternalError: the backend failed on a request that passed every check.
        """
        loaded = self.repository.get(request.model_name, request.model_version)
        feeds = _check_inputs(loaded, request.inputs)
        output_names = _check_outputs(loaded, request.outputs)
        try:
            results = await loaded.pool.run(feeds, output_names)
        except InferenceInputError as error:
            raise InvalidArgumentError(f"model '{loaded.name}' rejected the inputs: {error}") from None
        except Exception as error:
            logger.exception("model %s version %d failed on a valid request", loaded.name, loaded.version)
            raise InternalError(f"model '{loaded.name}' failed: {error}") from error
        return InferResponse(
            model_name=loaded.name,
            model_version=str(loaded.version),
            id=request.id,
            outputs=[
                InferTensor(
                    name=name,
                    datatype=loaded.outputs[name].datatype,
                    shape=list(results[name].shape),
                    data=results[name],
                )
                for name in output_names
            ],
        )

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model in the repository with its state and, when not ready, the reason."""
        entries = self.repository.index()
        return [entry for entry in entries if entry.state is ModelState.READY] if ready_only else entries

    async def load_model(self, name: str) -> None:
        """Load or reload a model (explicit model control mode only).

        Raises:
            FailedPreconditionError: the server is not in explicit mode.
            NotFoundError: no such model folder.
            UnavailableError: the load failed; the message says why.
        """
        self._require_explicit_mode("load")
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        """Unload a model (explicit model control mode only).

        Raises:
            FailedPreconditionError: the server is not in explicit mode.
            NotFoundError: the model is not loaded.
        """
        self._require_explicit_mode("unload")
        await self.repository.unload(name)

    def _require_explicit_mode(self, action: str) -> None:
        if self.control_mode is not ModelControlMode.EXPLICIT:
            raise FailedPreconditionError(
                f"cannot {action} models in model control mode '{self.control_mode}'; "
                "start the server with --model-control-mode explicit"
            )


def _check_inputs(loaded: LoadedVersion, inputs: list[InferTensor]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    batch_sizes: set[int] = set()
    for tensor in inputs:
        signature = loaded.inputs.get(tensor.name)
        if signature is None:
            raise InvalidArgumentError(
                f"unknown input '{tensor.name}' for model '{loaded.name}'; {_expected_inputs(loaded)}"
            )
        if tensor.name in feeds:
            raise InvalidArgumentError(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != signature.datatype:
            raise InvalidArgumentError(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match the model's {signature.datatype}"
            )
        shape = tuple(tensor.shape)
        if len(shape) != len(signature.shape) or any(
            expected not in (-1, actual) for expected, actual in zip(signature.shape, shape, strict=True)
        ):
            raise InvalidArgumentError(
                f"input '{tensor.name}': shape {list(shape)} does not match the model's "
                f"{list(signature.shape)} (-1: any size)"
            )
        if loaded.max_batch_size > 0:
            if shape[0] > loaded.max_batch_size:
                raise InvalidArgumentError(
                    f"input '{tensor.name}': batch size {shape[0]} exceeds the model's "
                    f"max_batch_size {loaded.max_batch_size}"
                )
            batch_sizes.add(shape[0])
        feeds[tensor.name] = tensor.data
    missing = [name for name in loaded.inputs if name not in feeds]
    if missing:
        raise InvalidArgumentError(f"missing input {', '.join(repr(n) for n in missing)}; {_expected_inputs(loaded)}")
    if len(batch_sizes) > 1:
        raise InvalidArgumentError(f"inputs disagree on the batch size (first dim): {sorted(batch_sizes)}")
    return feeds


def _check_outputs(loaded: LoadedVersion, requested: list[RequestedOutput]) -> list[str]:
    if not requested:
        return list(loaded.outputs)
    names: list[str] = []
    for output in requested:
        if output.name not in loaded.outputs:
            raise InvalidArgumentError(
                f"unknown output '{output.name}' for model '{loaded.name}'; it has {', '.join(loaded.outputs)}"
            )
        if output.name not in names:
            names.append(output.name)
    return names


def _expected_inputs(loaded: LoadedVersion) -> str:
    described = ", ".join(
        f"'{name}' ({signature.datatype} {list(signature.shape)})" for name, signature in loaded.inputs.items()
    )
    return f"the model expects {described}"
