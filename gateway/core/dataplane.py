"""Inference: the protocol-neutral data plane that every transport calls.

The transports decode their wire format into the types of :mod:`gateway.core.types` (tensors as
numpy arrays), call one :class:`DataPlane` method, and encode what it returns. All checking of a
request against the model and all scheduling happens here; errors are raised as
:mod:`gateway.errors` classes, which each transport maps through the one status table. Repository
control (index, load, unload, upload) is :mod:`gateway.core.repository_control`'s.

Semantics follow the KServe v2 / Open Inference Protocol ("Health", "Metadata", "Inference").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from gateway.core.checks import check_inputs, check_outputs
from gateway.core.pipeline import run_version
from gateway.core.routing import choose_label
from gateway.core.shadow import ShadowCopies
from gateway.core.shared_memory import SharedMemoryRegistry, uses_shared_memory
from gateway.core.types import (
    InferRequest,
    InferResponse,
    InferTensor,
    ModelMetadata,
    ModelStatistics,
    Parameters,
    ServerMetadata,
    TensorMetadata,
)
from gateway.datatypes import DEFAULT_LIMITS, RequestLimits
from gateway.errors import GatewayError, InvalidArgumentError, UnavailableError
from gateway.logs import new_request_id, set_request_id
from gateway.metrics import SUCCESS, error_status
from gateway.repository.config import ShadowConfig, triton_model_config
from gateway.repository.model_repository import LoadedVersion, ModelRepository, ModelState
from gateway.runtime.scheduler import Disconnected

logger = logging.getLogger(__name__)

SERVER_NAME = "model-gateway"
#: KServe v2 / Triton extensions this server implements.
EXTENSIONS = (
    "model_repository",
    "model_upload",
    "model_configuration",
    "parameters",
    "statistics",
    "system_shared_memory",
)

#: What a transport's encoder makes of a response (a JSON body, a protobuf message...).
Encoded = TypeVar("Encoded")


class DataPlane:
    """Health, metadata and inference over the loaded versions of one model repository.

    Args:
        repository: the model repository whose loaded versions serve requests.
        limits: the limits inference requests are held to (body size, JSON depth, tensors, elements);
            the transports' decoders read them here. Default: :class:`RequestLimits`' defaults.
        request_timeout_seconds: longest an inference request may take, in seconds (None: no limit);
            see :meth:`infer` for how it combines with gRPC deadlines and Triton's ``timeout``.
        shared_memory: the system shared memory regions requests may read inputs from and write
            outputs to (the transports' decoders read the inputs); default: a new registry.
    """

    def __init__(
        self,
        repository: ModelRepository,
        limits: RequestLimits | None = None,
        request_timeout_seconds: float | None = None,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        self.repository = repository
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.request_timeout_seconds = request_timeout_seconds
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self._ready = False
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shadows = ShadowCopies(repository, repository.metrics)
        try:
            self._version = version("model-gateway")
        except PackageNotFoundError:
            self._version = "0+unknown"

    def live(self) -> bool:
        """Whether the server is alive (it is, while it answers)."""
        return True

    def ready(self) -> bool:
        """Whether the server is ready: the start-up load of the repository has finished, and no shutdown began."""
        return self._ready and not self._draining

    def mark_ready(self) -> None:
        """Say that the start-up load of the repository has finished: readiness turns true (unless draining)."""
        self._ready = True

    @property
    def inflight(self) -> int:
        """Inference requests being answered now, all models together."""
        return self._inflight

    def start_draining(self) -> None:
        """Begin a graceful shutdown: readiness turns false and new inference requests get UNAVAILABLE."""
        self._draining = True

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` until no inference request is in flight; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True

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

    def model_metadata(
        self, name: str, model_version: str | None = None, version_label: str | None = None
    ) -> ModelMetadata:
        """Metadata of the model as served by ``model_version``, or the version ``version_label`` names
        (default: its highest ready version).

        Raises:
            NotFoundError, UnavailableError, InvalidArgumentError: as :meth:`ModelRepository.get`.
        """
        loaded = self.repository.get(name, model_version, version_label)
        return ModelMetadata(
            name=name,
            versions=[str(v) for v in self.repository.ready_versions(name)],
            platform=loaded.platform,
            inputs=[TensorMetadata(n, s.datatype, list(s.shape)) for n, s in loaded.inputs.items()],
            outputs=[TensorMetadata(n, s.datatype, list(s.shape)) for n, s in loaded.outputs.items()],
            parameters={
                **loaded.backend_parameters,
                "model_bytes": loaded.model_bytes,
                **({"parity": loaded.parity} if loaded.parity is not None else {}),
                **({"quantization": loaded.quantization} if loaded.quantization is not None else {}),
            },
        )

    def version_for_label(self, name: str, version_label: str) -> str:
        """The version (a decimal string) that ``version_label`` of model ``name`` names (TF Serving's version labels).

        Raises:
            NotFoundError: unknown or unloaded model.
            InvalidArgumentError: the model has no such label.
        """
        return str(self.repository.version_for_label(name, version_label))

    def model_config(self, name: str, model_version: str | None = None) -> dict[str, Any]:
        """The configuration ``model_version`` (default: the highest ready version) is served with.

        Triton's model configuration extension: the completed config (config.yaml filled in from
        the artifact) in the JSON shape of Triton's ``ModelConfig``
        (:func:`gateway.repository.config.triton_model_config`).

        Raises:
            NotFoundError, UnavailableError, InvalidArgumentError: as :meth:`ModelRepository.get`.
        """
        loaded = self.repository.get(name, model_version)
        return triton_model_config(loaded.config, name, loaded.platform, loaded.backend_parameters)

    def model_statistics(self, name: str | None = None, model_version: str | None = None) -> list[ModelStatistics]:
        """Triton's statistics extension: the statistics of the versions loaded and serving.

        Args:
            name: the model, or None (or empty) for every model.
            model_version: the version, or None for every version of ``name`` that serves.

        Raises:
            NotFoundError, UnavailableError, InvalidArgumentError: as :meth:`ModelRepository.get`,
                for a model (or version) named that does not serve.
        """
        if name and model_version:
            loaded = [self.repository.get(name, model_version)]
        elif name:
            self.repository.get(name)  # raises for a model that does not serve
            loaded = [self.repository.get(name, str(version)) for version in self.repository.ready_versions(name)]
        else:
            loaded = [
                self.repository.get(entry.name, entry.version)
                for entry in self.repository.index()
                if entry.state is ModelState.READY and entry.version
            ]
        return [ModelStatistics(v.name, str(v.version), v.metrics.statistics) for v in loaded]

    async def infer(
        self,
        protocol: str,
        model_name: str,
        model_version: str | None,
        decode: Callable[[], InferRequest],
        encode: Callable[[InferResponse], Encoded],
        request_id: str | None = None,
        timeout_seconds: float | None = None,
        disconnected: Disconnected | None = None,
        version_label: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Encoded:
        """Answer one inference request: decode it, check it against the model, run it, encode the answer.

        The transport passes its own decoder and encoder, so that the request's metrics (count by
        status, server-side duration in seconds from decoding to encoded answer, in-flight gauge)
        and its request id are kept here, once for every protocol. The request id is the v2 ``id``,
        else ``request_id`` (the transport's ``X-Request-ID``), else a new one; it is set for the
        logs (:func:`gateway.logs.current_request_id`) before anything can fail.

        Args:
            protocol: the ``protocol`` label, e.g. ``v2-rest``.
            model_name, model_version: the model addressed (version None: its highest ready one).
            decode: turns the wire request into an :class:`InferRequest`.
            encode: turns the :class:`InferResponse` into the wire answer, which is returned.
            request_id: the id the transport received beside the body, if any.
            timeout_seconds: the transport's own time limit from now, in seconds (the time left
                until a gRPC deadline, ``context.time_remaining()``), or None.
            disconnected: a coroutine function returning when the client goes away (REST), watched
                only while the request waits; see :meth:`gateway.runtime.scheduler.Scheduler.run`.
            version_label: a version label of the model (TF Serving's), naming the version in place
                of ``model_version``.
            headers: the request's headers (REST) or metadata (gRPC) with lower-case keys, for a
                sticky routing policy; None when the transport has none.

        A model on disk that is not loaded (with load on request), or a version evicted by the memory
        budget, is loaded first (:meth:`ModelRepository.load_for_request`), under the transport's and the
        server's time limits; the wait counts in the request's queue time.

        A request naming neither a version nor a label goes where the model's traffic policy routes
        it (:mod:`gateway.core.routing`: a weighted split between labels, maybe sticky), else to the
        highest ready version; such a request may be copied to the policy's shadow label once
        answered (:mod:`gateway.core.shadow`). The response's ``model_version`` is the version that
        answered. A policy sticky by a request parameter needs the body decoded before the version
        is chosen: a body that does not decode is then counted as refused before a version was chosen.

        The request's deadline is the earliest of ``timeout_seconds``, the server's
        ``request_timeout_seconds`` and the request's ``timeout`` parameter (Triton's: a non-negative
        integer in microseconds, 0 for none; in the v2 ``parameters``, REST or gRPC), counted from
        the call. Past it the request is answered :class:`DeadlineExceededError`: still queued, it is
        dropped and never runs; running, the backend finishes and the result is discarded.

        Raises:
            NotFoundError: unknown model or version.
            UnavailableError: the model or version is not ready, its queue is full, or it cannot be
                loaded within the memory budget (the message gives the sizes).
            InvalidArgumentError: an unknown version label; a body that does not decode; a missing, unknown
                or repeated input; a datatype or shape that does not match the model; a batch over
                max_batch_size; an unknown output; a ``timeout`` parameter that is not a non-negative integer.
            DeadlineExceededError: the deadline passed before the answer was ready.
            asyncio.CancelledError: the caller was cancelled or ``disconnected`` returned.
            InternalError: the backend failed on a request that passed every check.
        """
        started = time.perf_counter()
        set_request_id(request_id or new_request_id())
        request: InferRequest | None = None
        shadow: ShadowConfig | None = None
        try:
            if self._draining:
                raise UnavailableError("the server is shutting down; send the request to another replica")
            load_deadline = None
            if timeout_seconds is not None or self.request_timeout_seconds is not None:
                load_deadline = self._deadline(started, timeout_seconds, {})
            queued_since = await self.repository.load_for_request(
                model_name, model_version, version_label, load_deadline
            )
            if model_version is None and version_label is None:
                policy = self.repository.traffic_policy(model_name)
                shadow = policy.shadow
                if policy.routing is not None:
                    if policy.routing.sticky_parameter is not None:
                        request = decode()  # the sticky key may be a request parameter
                    version_label = choose_label(policy.routing, request.parameters if request else {}, headers)
                    if version_label is not None:  # the label routed to may name an evicted version
                        queued_since = (
                            await self.repository.load_for_request(model_name, None, version_label, load_deadline)
                            or queued_since
                        )
            # No await from here until the request is queued on the version (run_version): the memory
            # budget never evicts a version between the two.
            loaded = self.repository.get(model_name, model_version, version_label)
        except GatewayError as error:
            known = model_name if self.repository.is_known(model_name) else ""
            # No version was chosen: the label stays empty, so that clients cannot add series at will.
            self.repository.metrics.count_request(known, "", protocol, error_status(error))
            logger.info("%s inference for model '%s' refused: %s", protocol, model_name, error.message)
            raise
        metrics = loaded.metrics
        metrics.inflight.inc()
        self._inflight += 1
        self._idle.clear()
        status = SUCCESS
        try:
            if request is None:
                request = decode()
            if request.id:
                set_request_id(request.id)
            deadline = None
            if timeout_seconds is not None or self.request_timeout_seconds is not None or request.parameters:
                deadline = self._deadline(started, timeout_seconds, request.parameters)
            answer = await self._check_and_run(loaded, request, deadline, disconnected, queued_since)
            if shadow is not None:
                self._shadows.copy(shadow, loaded, request, answer)
            return encode(answer)
        except GatewayError as error:
            status = error_status(error)
            logger.info("%s inference for model '%s' refused: %s", protocol, model_name, error.message)
            raise
        except asyncio.CancelledError:  # the client went away
            status = "Cancelled"
            raise
        except Exception:
            status = "Internal"
            raise
        finally:
            metrics.inflight.dec()
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
            seconds = time.perf_counter() - started
            metrics.observe_request(protocol, status, seconds)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s inference model %s version %d: %s in %.3f ms",
                    protocol,
                    loaded.name,
                    loaded.version,
                    status,
                    seconds * 1e3,
                )

    def _deadline(self, started: float, timeout_seconds: float | None, parameters: Parameters) -> float | None:
        """The request's deadline in ``time.perf_counter()`` seconds, or None; see :meth:`infer`.

        Raises:
            InvalidArgumentError: the ``timeout`` parameter is not a non-negative integer (microseconds).
        """
        limits = [seconds for seconds in (timeout_seconds, self.request_timeout_seconds) if seconds is not None]
        timeout = parameters.get("timeout")
        if timeout is not None:
            if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
                raise InvalidArgumentError(
                    f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}"
                )
            if timeout:
                limits.append(timeout / 1e6)
        return started + min(limits) if limits else None

    async def _check_and_run(
        self,
        loaded: LoadedVersion,
        request: InferRequest,
        deadline: float | None = None,
        disconnected: Disconnected | None = None,
        queued_since: float | None = None,
    ) -> InferResponse:
        """Check a decoded request against the loaded version, run it, and collect the requested outputs.

        ``queued_since``: when the request began to wait for the version to load, if it did (counted
        in its queue time).
        """
        feeds = check_inputs(loaded, request.inputs)
        output_names = check_outputs(loaded, request.outputs)
        in_shared_memory = {
            output.name: output.parameters for output in request.outputs if uses_shared_memory(output.parameters)
        }
        results = await run_version(self.repository, loaded, feeds, output_names, deadline, disconnected, queued_since)
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
                    parameters=(
                        self.shared_memory.write_output(name, results[name], in_shared_memory[name])
                        if name in in_shared_memory
                        else {}
                    ),
                )
                for name in output_names
            ],
        )
