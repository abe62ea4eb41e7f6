"""Loading one model version's backend instances: where they run, and the in-process loader.

A :class:`VersionHost` turns a version folder and its config into a :class:`HostedVersion`: the
completed config, how the backend runs it, the bytes it holds, and the scheduler that runs its
requests. :class:`InProcessHost` loads the instances in this process (a backend session per
instance, Triton's ``reshape``, warmup, the resident-bytes measure, a
:class:`~gateway.runtime.scheduler.Scheduler` with the config's dynamic batching). A model runner
process uses the same loader; a front end of ``gateway serve --workers N`` is handed instead a host
whose versions run in model runner processes (:mod:`gateway.process.runners`), so that each version
is loaded once per machine and a front end never imports a framework.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backends import Backend, create_backend, detect_backend
from backends.onnxruntime import import_runtime as import_onnx_runtime
from backends.tensorflow_savedmodel import TensorFlowBackend, saved_model_folder
from gateway.metrics import Metrics, VersionMetrics
from gateway.repository.config import (
    ModelConfig,
    check_instance_kind,
    complete_config,
    full_shape,
    runs_on_gpu,
)
from gateway.repository.mar import served_version
from gateway.repository.tfserving_warmup import read_tf_serving_warmup
from gateway.repository.warmup_config import configured_requests
from gateway.runtime.gpu_memory import on_gpus, read_gpu_memory, version_gpu_bytes
from gateway.runtime.memory_budget import (
    LargerThanBudgetError,
    more_than_gpu_budget,
    peak_resident_bytes,
    release_freed_memory,
    reset_peak_resident,
    resident_bytes,
)
from gateway.runtime.reshape import ReshapedBackend
from gateway.runtime.scheduler import (
    DEFAULT_MAX_QUEUE_SIZE,
    BatchingPolicy,
    Scheduler,
    VersionScheduler,
)
from gateway.runtime.warmup import WarmupError, generated_requests, read_warmup_samples, run_warmup

logger = logging.getLogger(__name__)

#: (relative path or name, size in bytes, modification time in ns, or a digest) of every file a version was
#: loaded from: its files and its model's config files (and a config override's digest).
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class HostedVersion:
    """A version whose instances are loaded, warmed up and ready to run requests.

    Attributes:
        config: the completed config (inputs, outputs and max_batch_size all set).
        platform: the backend's platform name (e.g. ``onnxruntime_onnx``).
        backend_parameters: how the backend runs the version (e.g. its execution providers), for metadata.
        scheduler: runs the version's requests (in process, or through its model runner).
        resident_bytes: bytes the version holds once loaded, measured at the load.
        peak_bytes: bytes the load held at its peak above its start (at least ``resident_bytes``).
        gpu_bytes: bytes the version holds on each CUDA device (device number -> bytes), measured at the load.
        joined: nothing was loaded for this call: it joined the model runner another front end's call had
            started (not counted as a load).
    """

    config: ModelConfig
    platform: str
    backend_parameters: dict[str, Any]
    scheduler: VersionScheduler
    resident_bytes: int
    peak_bytes: int
    gpu_bytes: dict[int, int] = field(default_factory=dict)
    joined: bool = False


class VersionHost(Protocol):
    """Where a version's instances are loaded and run (handed to the repository by the process layer)."""

    def load(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        model_bytes: int,
        metrics: VersionMetrics,
        fingerprint: Fingerprint,
        room_deadline: float | None = None,
    ) -> HostedVersion:
        """Blocking (a loading thread): load version ``version`` of model ``name`` from ``path``.

        Args:
            name, version: the model and version, for messages and metrics.
            path: the version folder.
            config: the model's config as read (not yet completed from the artifact).
            model_bytes: bytes of the version folder's files (the least a version is counted for).
            metrics: the version's metric children, where its batches are recorded.
            fingerprint: the files it is loaded from, as the repository saw them: a host may share one
                load among callers that give the same version, config and fingerprint.
            room_deadline: until when (``time.perf_counter()`` seconds) the load may wait for room in a
                memory budget the host holds itself (the supervisor's, with model runners); None for
                :data:`~gateway.runtime.memory_budget.DEFAULT_ROOM_WAIT_SECONDS`.

        Raises:
            ModelLoadError, ModelConfigError: the files do not load, or the config does not fit them.
            WarmupError: a shipped or configured warmup request failed.
            LargerThanBudgetError: the version holds more than the whole memory budget, or more than the GPU
                budget on a device.
        """
        ...

    def check(self, path: Path, config: ModelConfig) -> None:
        """Blocking: check that the files in ``path`` load with ``config`` (one instance), then release them.

        Raises:
            ModelLoadError, ModelConfigError: they do not load, or the config does not fit them.
            UnavailableError: the model runner that would check them cannot be started.
        """
        ...


class InProcessHost:
    """Loads versions in this process: backend instances, warmup, the resident-bytes measure, a scheduler.

    Args:
        default_max_batch_size: max_batch_size for batchable models whose config sets none.
        metrics: where warmup times are recorded.
        cpu_cores: CPU cores the instances of one version share (default: all those of this process).
        budget_limit_bytes: the memory budget (None: none); a version holding more fails its load.
        gpu_budget_limit_bytes: the GPU memory budget of each device (None: none); a version holding more on a
            device fails its load.
    """

    def __init__(
        self,
        default_max_batch_size: int,
        metrics: Metrics,
        cpu_cores: int | None = None,
        budget_limit_bytes: int | None = None,
        gpu_budget_limit_bytes: int | None = None,
    ) -> None:
        self.default_max_batch_size = default_max_batch_size
        self.metrics = metrics
        self.cpu_cores = cpu_cores if cpu_cores is not None else len(os.sched_getaffinity(0))
        self.budget_limit_bytes = budget_limit_bytes
        self.gpu_budget_limit_bytes = gpu_budget_limit_bytes
        import_onnx_runtime()  # not counted in the first version's resident bytes

    def load(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        model_bytes: int,
        metrics: VersionMetrics,
        fingerprint: Fingerprint = (),
        room_deadline: float | None = None,
    ) -> HostedVersion:
        """Load one version's instances, warm them up, and measure the bytes they hold (see :class:`VersionHost`).

        Each call loads its own instances (``fingerprint`` is not used). ``room_deadline`` is not used
        either: in process, the repository makes room in its budget before it calls this.

        The resident bytes are the process's growth over the load, warmup included, each end taken
        once what was freed (e.g. the parsed model file) is handed back to the system; never less
        than the files' bytes (another thread may have freed memory meanwhile). The GPU bytes are the
        growth of what the process holds on each CUDA device (:func:`~gateway.runtime.gpu_memory.version_gpu_bytes`).
        """
        release_freed_memory()  # pages freed before the load must not lower its measure when they are trimmed
        gpu_before = read_gpu_memory()
        before = resident_bytes()
        reset_peak_resident()
        instances, completed, parameters = self.create_instances(path, config)
        max_batch_size = completed.max_batch_size or 0
        check_instance_kind(completed, instances[0].metadata_parameters)
        input_dims = {t.name: t.reshape for t in completed.inputs if t.reshape is not None}
        output_dims = {t.name: t.dims for t in completed.outputs if t.reshape is not None}
        if input_dims or output_dims:
            instances = [ReshapedBackend(i, input_dims, output_dims, max_batch_size > 0) for i in instances]
        if completed.warmup != "none":
            self._warm_up(name, version, path, completed, instances)
        peak = max(peak_resident_bytes() - before, 0)
        release_freed_memory()
        measured = max(resident_bytes() - before, model_bytes)
        on_gpu = runs_on_gpu(instances[0].metadata_parameters)
        gpu_bytes = version_gpu_bytes(gpu_before, read_gpu_memory(), on_gpu)
        limit, gpu_limit = self.budget_limit_bytes, self.gpu_budget_limit_bytes
        if limit is not None and measured > limit:
            raise LargerThanBudgetError(
                f"model '{name}' version {version} holds {measured} bytes once loaded, more than the whole memory "
                f"budget of {limit} bytes"
            )
        for device, bytes_ in gpu_bytes.items():
            if gpu_limit is not None and bytes_ > gpu_limit:
                raise LargerThanBudgetError(
                    f"model '{name}' version {version} holds {bytes_} bytes on GPU {device} once loaded, "
                    f"{more_than_gpu_budget(gpu_limit)}"
                )
        logger.info(
            "model %s version %d loaded: %d bytes resident, %d at the load's peak%s",
            name,
            version,
            measured,
            peak,
            on_gpus(gpu_bytes),
        )
        return HostedVersion(
            config=completed,
            platform=instances[0].platform,
            backend_parameters={**instances[0].metadata_parameters, **parameters},
            scheduler=version_scheduler(instances, completed, metrics),
            resident_bytes=measured,
            peak_bytes=max(peak, measured),
            gpu_bytes=gpu_bytes,
        )

    def check(self, path: Path, config: ModelConfig) -> None:
        """Load one instance of the files in ``path`` with ``config``, then drop it (see :class:`VersionHost`)."""
        self.create_instances(path, config.model_copy(update={"instance_count": 1}))

    def create_instances(self, path: Path, config: ModelConfig) -> tuple[list[Backend], ModelConfig, dict[str, Any]]:
        """The ``instance_count`` backend sessions of the version files in ``path``, the completed config,
        and what the metadata shows of a TorchServe archive (:func:`gateway.repository.mar.served_version`).

        The CPU cores (:attr:`cpu_cores`) are divided among the instances.

        Raises:
            ModelLoadError: the files do not load (an archive refused:
                :class:`~gateway.repository.mar.ArchiveError`).
            ModelConfigError: the config does not fit the model.
        """
        with served_version(path, config) as served:  # an archive's model file is extracted for the load
            path, config = served.path, served.config
            backend_name = config.backend or detect_backend(path)
            options = config.backend_options(backend_name)
            declared = config.declared_signature()
            cpu_threads = max(1, self.cpu_cores // config.instance_count)
            instances = [
                create_backend(
                    backend_name,
                    path,
                    options,
                    declared,
                    cpu_threads=cpu_threads,
                    artifact=config.default_model_filename,
                )
                for _ in range(config.instance_count)
            ]
        completed = complete_config(config, backend_name, instances[0], self.default_max_batch_size)
        return instances, completed, served.parameters

    def _warm_up(self, name: str, version: int, path: Path, config: ModelConfig, instances: list[Backend]) -> None:
        """Run the version's warmup requests on each instance (:mod:`gateway.runtime.warmup`), before it serves.

        The requests: the configured ones when ``warmup`` lists them (:mod:`gateway.repository.warmup_config`),
        else the samples in ``warmup/*.npz``, else a SavedModel's TF Serving warmup file
        (:mod:`gateway.repository.tfserving_warmup`), else requests generated from the signature. Zeros
        are not a valid input of every model (serialized tf.Examples, ids a lookup refuses...), so a
        generated request that fails is logged and the version serves without warmup; a shipped one
        that fails fails the load.

        Raises:
            WarmupError: a shipped sample cannot be read or does not fit the model, or it failed to run.
        """
        signature = {t.name: (t.datatype, tuple(full_shape(t, config.max_batch_size or 0))) for t in config.inputs}
        output_names = [t.name for t in config.outputs]
        if isinstance(config.warmup, list):  # configured requests (Triton's model_warmup): those only
            shipped = configured_requests(config.warmup, path.parent, signature)
        else:
            shipped = read_warmup_samples(path, signature)
        if not shipped and instances[0].platform == TensorFlowBackend.platform:
            shipped = read_tf_serving_warmup(saved_model_folder(path, config.default_model_filename), signature)
        requests = shipped or generated_requests(signature, config.max_batch_size or 0)
        try:
            seconds = run_warmup(instances, requests, output_names)
        except WarmupError as error:
            if shipped:
                raise
            logger.warning(
                "model %s version %d serves without warmup: %s (zeros do not suit it: ship warmup/*.npz samples)",
                name,
                version,
                error,
            )
            return
        self.metrics.warmup_duration.labels(name, str(version)).observe(seconds)
        logger.info(
            "model %s version %d warmed up: %d request(s) on %d instance(s) in %.3f s",
            name,
            version,
            len(requests),
            len(instances),
            seconds,
        )


def version_scheduler(instances: list[Backend], config: ModelConfig, metrics: VersionMetrics) -> Scheduler:
    """The scheduler of a loaded version, with the batching its completed config asks for."""
    batching = config.dynamic_batching
    if batching is None:  # Triton sets a queue's size under dynamic_batching only: a default bound here
        return Scheduler(instances, metrics, max_queue_size=DEFAULT_MAX_QUEUE_SIZE)
    max_batch_size = config.max_batch_size or 0
    policy = BatchingPolicy(
        max_batch_size=max_batch_size,
        preferred_batch_size=max(batching.preferred_batch_size, default=max_batch_size),
        max_queue_delay_seconds=batching.max_queue_delay_microseconds / 1e6,
    )
    return Scheduler(instances, metrics, policy, batching.max_queue_size)
