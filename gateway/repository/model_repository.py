"""The model repository: which models and versions are served, and their load states.

Layout: ``<root>/<model>/config.yaml`` or Triton's ``<root>/<model>/config.pbtxt`` (optional; one
repository may mix them, a model may not have both) and integer version folders
``<root>/<model>/<version>/`` holding the artifact (or a TorchServe archive,
:mod:`gateway.repository.mar`). Models may also live outside the root, each in a folder of its own
with settings from elsewhere (:class:`ConfiguredModel`: TF Serving's ``models.config`` base paths).
A load request may carry a config override (Triton's ``config`` parameter), which replaces the
model's config file until the next load. A model's version labels (``version_labels``) name
versions: :meth:`ModelRepository.get` resolves a label where a version is asked for. The labels
belong to the model's traffic policy (:mod:`gateway.repository.traffic`: labels, routing, shadow),
read from its config or its ``traffic.json`` and swapped whole by :meth:`ModelRepository.set_traffic_policy`.
A pipeline (``pipeline`` in the config, Triton's ensemble) loads as a version without a backend: its
steps checked and ordered (:mod:`gateway.repository.pipelines`), run by the core. The repository
loads, reloads and unloads models as the model control mode asks (Triton's none / poll / explicit),
and answers which loaded version serves a request.

A load never takes the server down: a model or version that fails is recorded as UNAVAILABLE with
the reason, other models keep serving, and a version that fails to reload keeps its previous
files serving. A new or changed version is loaded fully before it replaces the old one, and a new
version that fails to load leaves the versions serving until then in place (even those the version
policy would retire for it).

A version that stops serving (replaced, retired by the policy, unloaded, or its folder removed) is
taken out of routing at once, so that new requests go to its successor or get NOT_FOUND; the
requests already queued or running on it finish, and then its instances are released
(:meth:`gateway.runtime.scheduler.Scheduler.drain`, in the background).

Memory: each version's resident bytes are measured at its load and accounted in :attr:`ModelRepository.budget`
(:mod:`gateway.runtime.memory_budget`). With a limit, loads run one at a time (so that each one's
measure is its own), and a load first evicts the least recently used idle versions of other models
until it fits; an evicted version is loaded again by the next request that asks for it
(:meth:`ModelRepository.load_for_request`), as is any model on disk that is not loaded when the
repository loads on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from backends import ModelLoadError
from converters.parity import read_parity_file
from converters.quantization_report import read_quantization_file
from gateway.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from gateway.metrics import Metrics, VersionMetrics
from gateway.repository.config import (
    CONFIG_FILE,
    ModelConfig,
    ModelConfigError,
    PipelineStep,
    TensorConfig,
    full_shape,
    merge_config,
    read_model_config,
)
from gateway.repository.names import check_model_name, valid_model_name
from gateway.repository.pipelines import PIPELINE_PLATFORM, plan_pipeline
from gateway.repository.traffic import TrafficPolicy, read_traffic_file, write_traffic_file
from gateway.repository.triton_config import CONFIG_PBTXT, parse_config_override, read_triton_config
from gateway.repository.version_loader import Fingerprint, InProcessHost, VersionHost
from gateway.runtime.memory_budget import (
    DEFAULT_ROOM_WAIT_SECONDS,
    MemoryBudget,
    MemoryBudgetError,
    NoRoomError,
    VersionUsage,
    eviction_told,
    release_freed_memory,
)
from gateway.runtime.scheduler import VersionScheduler
from gateway.runtime.warmup import WarmupError

logger = logging.getLogger(__name__)

#: Folder inside the repository where uploads are received and checked (hidden: not a model).
STAGING_FOLDER = ".staging"

#: The index's reason for a version evicted by the memory budget.
_EVICTED = "evicted to make room within the memory budget; an inference request loads it again"


class ModelState(StrEnum):
    """Load state of a model version as the repository index reports it (Triton's names)."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"

    @property
    def tf_serving_name(self) -> str:
        """The state's name in TF Serving's ``ModelVersionStatus.State``: AVAILABLE, LOADING or END."""
        return {"READY": "AVAILABLE", "LOADING": "LOADING"}.get(self.value, "END")


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """An input or output as clients see it: v2 datatype and full shape (-1: any size, batch included)."""

    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """One version that is loaded and serving.

    Attributes:
        config: the completed config (inputs, outputs and max_batch_size all set).
        max_batch_size: the completed config's max_batch_size (0: no batch dimension).
        inputs: per input name, in the model's order, the datatype and full shape a request must match.
        outputs: per output name, in the model's order, its datatype and full shape.
        scheduler: the version's backend instances and request queue (None for a pipeline).
        fingerprint: the files the version was loaded from, to tell when they change.
        metrics: the version's metric children.
        model_bytes: bytes of the version folder's files on disk, counted once at load.
        usage: its resident bytes (measured at load), requests in flight and last use, for the memory budget.
        parity: the conversion's parity figures (``parity.json``), or None.
        quantization: the price of the push's compression (``quantization.json``), or None.
        backend_parameters: how the backend runs the version (e.g. its execution providers), for metadata.
        joined: its load joined the model runner another front end had started (not counted as a load).
        steps: a pipeline's steps in the order they run (:mod:`gateway.repository.pipelines`); empty
            for a model that runs itself.
    """

    name: str
    version: int
    platform: str
    config: ModelConfig
    max_batch_size: int
    inputs: dict[str, TensorSignature]
    outputs: dict[str, TensorSignature]
    scheduler: VersionScheduler | None
    fingerprint: Fingerprint
    metrics: VersionMetrics
    model_bytes: int
    usage: VersionUsage
    parity: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    backend_parameters: dict[str, Any] = field(default_factory=dict)
    joined: bool = False
    steps: tuple[PipelineStep, ...] = ()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index (KServe/Triton repository extension).

    ``resident_bytes``: the bytes a READY version holds, measured at its load; None for other rows.
    ``gpu_bytes``: the bytes a READY version holds on each CUDA device (device number -> bytes), empty on the CPU.
    """

    name: str
    version: str
    state: ModelState
    reason: str
    resident_bytes: int | None = None
    gpu_bytes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfiguredModel:
    """A model served from a folder outside the repository root, with settings given outside its folder.

    Attributes:
        path: the model's folder, holding its integer version folders (TF Serving's ``base_path``).
        config: the settings given for it (e.g. backend, version policy, version labels); its fields
            that are set override the folder's config.yaml, which must not set them too.
        source: where the settings come from, for messages (e.g. ``models.config``).
    """

    path: Path
    config: ModelConfig
    source: str


@dataclass
class _ModelRecord:
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    # The traffic policy (version labels, routing, shadow) of the config or traffic.json last read.
    traffic: TrafficPolicy = field(default_factory=TrafficPolicy)
    # Failure reasons by version; None holds a failure of the whole model (e.g. a bad config.yaml).
    failures: dict[int | None, str] = field(default_factory=dict)
    loading: bool = False
    loaded: bool = False
    fingerprint: Fingerprint | None = None
    # The config override of the last load request (Triton's), as sent and as read; None: the config file.
    override_text: str | None = None
    override: ModelConfig | None = None
    # Versions not loaded for want of memory (evicted, or no room at their load): a request for one loads it.
    evicted: set[int] = field(default_factory=set)


@dataclass
class _LoadOutcome:
    versions: dict[int, LoadedVersion]
    failures: dict[int | None, str]
    traffic: TrafficPolicy | None = None  # None: the config could not be read
    no_room: set[int] = field(default_factory=set)  # versions that failed for want of memory, for now


class ModelRepository:
    """The models under ``root`` and their loaded versions.

    Args:
        root: the repository folder.
        default_max_batch_size: max_batch_size for batchable models whose config sets none.
        metrics: where load times and readiness are published (default: a registry of its own).
        cpu_cores: CPU cores the model instances may use together (default: all those of this process);
            each version's ``instance_count`` instances share them.
        configured_models: models served from folders outside ``root``, by name (TF Serving's
            ``models.config``); uploads and deletes leave them alone (their files are their owner's).
        memory_budget_bytes: bytes the loaded versions may hold together (None: no limit); see
            :mod:`gateway.runtime.memory_budget`.
        memory_budget_counts_process: whether the budget bounds this process's whole resident set (the
            versions get what the process leaves of it), not the versions' bytes alone.
        gpu_memory_budget_bytes: bytes the loaded versions may hold together on each CUDA device (None: no limit).
        host: where versions' instances are loaded and run (default: in this process,
            :class:`~gateway.repository.version_loader.InProcessHost`; a front end of several hands
            a host whose versions run in model runner processes).
        load_on_request: whether an inference request for a model on disk that is not loaded loads it
            (:meth:`load_for_request`); evicted versions are loaded again by their requests either way.

    Raises:
        ValueError: a configured model's name is invalid, or is also a model folder under ``root``.
    """

    def __init__(
        self,
        root: Path,
        default_max_batch_size: int,
        metrics: Metrics | None = None,
        cpu_cores: int | None = None,
        configured_models: dict[str, ConfiguredModel] | None = None,
        memory_budget_bytes: int | None = None,
        load_on_request: bool = False,
        host: VersionHost | None = None,
        memory_budget_counts_process: bool = False,
        gpu_memory_budget_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.configured_models = dict(configured_models or {})
        for name, configured in self.configured_models.items():
            if not valid_model_name(name):
                raise ValueError(f"model name {name!r} ({configured.source}) is not a valid model name")
            if (root / name).is_dir():
                raise ValueError(
                    f"model '{name}' is both in {configured.source} and a folder of the model repository {root}"
                )
        self.default_max_batch_size = default_max_batch_size
        self.metrics = metrics if metrics is not None else Metrics()
        # gateway_model_resident_bytes is published by the process holding the versions: this one, or each
        # version's model runner (a front end publishing it too would count every version once per front end).
        self.budget = MemoryBudget(
            memory_budget_bytes,
            self.metrics if host is None else None,
            memory_budget_counts_process,
            gpu_memory_budget_bytes,
        )
        self.host: VersionHost = (
            host
            if host is not None
            else InProcessHost(
                default_max_batch_size, self.metrics, cpu_cores, memory_budget_bytes, gpu_memory_budget_bytes
            )
        )
        self.load_on_request = load_on_request
        # With a budget, one load at a time: a load's bytes are the process's growth over it.
        self._load_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.budget.has_limit else contextlib.nullcontext()
        )
        # Loads started by requests, by model: concurrent requests for a model wait for one load.
        self._request_loads: dict[str, asyncio.Task[None]] = {}
        # Per (model, version), the fingerprint of the files last loaded and what they measured.
        self._measured: dict[tuple[str, int], tuple[Fingerprint, VersionUsage]] = {}
        # Per model, the (version, backend) label pairs of gateway_model_ready published so far.
        self._published_ready: dict[str, set[tuple[str, str]]] = {}
        self._records: dict[str, _ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Versions taken out of service whose requests are still finishing (see _retire).
        self._draining: set[asyncio.Task[None]] = set()

    def model_names(self) -> list[str]:
        """Names of the model folders on disk and of the configured models, sorted; invalid folder names are skipped."""
        in_root = (
            [
                entry.name
                for entry in self.root.iterdir()
                if entry.is_dir() and not entry.is_symlink() and valid_model_name(entry.name)
            ]
            if self.root.is_dir()
            else []
        )
        return sorted({*in_root, *self.configured_models})

    def model_folder(self, name: str) -> Path:
        """Where model ``name``'s version folders are (or would be): its configured folder, else ``<root>/<name>``."""
        configured = self.configured_models.get(name)
        return configured.path if configured is not None else self.root / name

    def version_for_label(self, name: str, label: str) -> int:
        """The version that version label ``label`` of model ``name`` names.

        Raises:
            NotFoundError: unknown or unloaded model.
            InvalidArgumentError: the model has no such label (TF Serving: "Unrecognized servable
                version label").
        """
        record = self._records.get(name)
        if record is None or not (record.loaded or record.loading):
            raise NotFoundError(self._missing_model_message(name))
        version = record.traffic.version_labels.get(label)
        if version is None:
            known = ", ".join(sorted(record.traffic.version_labels)) or "none"
            raise InvalidArgumentError(
                f"Unrecognized servable version label: '{label}' (model '{name}' has labels: {known})"
            )
        return version

    def traffic_policy(self, name: str) -> TrafficPolicy:
        """The traffic policy in force for model ``name`` (its version labels, routing and shadow).

        Raises:
            NotFoundError: unknown or unloaded model.
        """
        record = self._records.get(name)
        if record is None or not (record.loaded or record.loading):
            raise NotFoundError(self._missing_model_message(name))
        return record.traffic

    async def set_traffic_policy(self, name: str, policy: TrafficPolicy) -> None:
        """Put ``policy`` in force for model ``name``: written to its ``traffic.json``, then swapped in whole.

        A request sees the old policy or the new one, never a part; the files of every version stay.

        Raises:
            NotFoundError: unknown or unloaded model.
            InvalidArgumentError: a label names a version the model does not serve.
            FailedPreconditionError: a configured model (its policy is its configuration's).
            UnavailableError: the model folder cannot be written.
        """
        self._check_repository_model(name, "given a traffic policy")
        async with self._locks.setdefault(name, asyncio.Lock()):
            self.traffic_policy(name)  # raises NotFoundError for a model that is not loaded
            record = self._records[name]
            unserved = {
                label: v
                for label, v in policy.version_labels.items()
                if v not in record.versions and v not in record.evicted
            }
            if unserved:
                served = ", ".join(str(v) for v in sorted(record.versions)) or "none"
                raise InvalidArgumentError(
                    f"model '{name}': "
                    + ", ".join(
                        f"label '{label}' names version {v}, which is not served" for label, v in unserved.items()
                    )
                    + f" (versions served: {served})"
                )
            try:
                await asyncio.to_thread(write_traffic_file, self.model_folder(name), policy)
            except OSError as error:
                raise UnavailableError(f"model '{name}': the traffic policy cannot be written: {error}") from None
            record.traffic = policy
        logger.info("model %s: traffic policy %s", name, policy.to_json())

    async def load_all(self) -> None:
        """Load every model on disk; failures are recorded, never raised."""
        for name in self.model_names():
            await self._load_quietly(name)

    async def poll(self) -> None:
        """Bring the loaded state in line with the disk: load new or changed models, unload removed ones."""
        on_disk = self.model_names()
        for name in on_disk:
            record = self._records.get(name)
            if self.load_on_request and (record is None or not record.loaded):
                continue  # listed; its first request loads it
            fingerprint = await asyncio.to_thread(_fingerprint, self.model_folder(name))
            if record is None or not record.loaded or fingerprint != record.fingerprint:
                await self._load_quietly(name, fingerprint)
        for name in [name for name in self._records if name not in on_disk]:
            async with self._locks.setdefault(name, asyncio.Lock()):
                # Looked at again under the model's lock: an upload may have put it in place since the listing.
                if name in self._records and name not in self.model_names():
                    logger.info("model %s was removed from the repository; unloading it", name)
                    self._forget(name)

    async def load(self, name: str, config_override: str | None = None) -> None:
        """Load (or reload) every version of ``name`` its version policy selects.

        Versions whose files and config did not change keep their loaded instances; a changed
        version is loaded beside the old one and replaces it only once ready.

        Args:
            name: the model.
            config_override: Triton's ModelConfig as JSON (a load request's ``config`` parameter):
                it replaces the model's config file for this load, and for the reloads that follow
                (an upload, a deleted version) until the next load request; None: the config file.

        Raises:
            NotFoundError: no folder ``name`` in the repository (or an invalid name).
            InvalidArgumentError: the config override is not a config the gateway can serve (nothing
                changed).
            UnavailableError: the config or some selected version failed to load; the reasons are
                in the message and in the index, and versions that loaded keep serving.
        """
        override = None
        if config_override is not None:
            try:
                override = parse_config_override(config_override, name)
            except ModelConfigError as error:
                raise InvalidArgumentError(f"model '{name}': {error}") from None
        self._model_path(name)  # raises NotFoundError before the override is kept
        record = self._records.setdefault(name, _ModelRecord())
        record.override_text, record.override = config_override, override
        await self._load(name, None)

    def config_override(self, name: str) -> str | None:
        """The config override ``name`` was last loaded with (Triton's JSON), or None."""
        record = self._records.get(name)
        return record.override_text if record is not None else None

    async def _load(
        self, name: str, fingerprint: Fingerprint | None, deadline: float | None = None, on_request: bool = False
    ) -> None:
        """:meth:`load`, with the model folder's fingerprint when the caller has just taken it.

        Args:
            name, fingerprint: the model, and its folder's fingerprint or None.
            deadline: until when the load may wait for busy versions to make room in the memory budget
                (``time.perf_counter()`` seconds; None: :data:`DEFAULT_ROOM_WAIT_SECONDS` from its start).
            on_request: the load was started by an inference request (counted, and logged so).
        """
        path = self._model_path(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            path = self._model_path(name)  # again: a delete may have taken the folder while this waited
            record = self._records.setdefault(name, _ModelRecord())
            record.loading = True
            try:
                if fingerprint is None:
                    fingerprint = await asyncio.to_thread(_fingerprint, path)
                async with self._load_lock:
                    reserve = self._reserver(name, deadline)
                    outcome = await asyncio.to_thread(  # a copy: an eviction may take a version out meanwhile
                        self._load_versions, name, path, dict(record.versions), record.override, reserve, deadline
                    )
                    await self._back_within_budget(name)
            finally:
                record.loading = False
            # A version its host evicted during the load (evict_hosted) stays out, among the evicted.
            evicted = {version for version, loaded in outcome.versions.items() if not loaded.usage.serving}
            versions = {version: loaded for version, loaded in outcome.versions.items() if version not in evicted}
            retired = _retired(record.versions, versions)
            new = _retired(versions, record.versions)
            record.versions = versions
            record.failures = outcome.failures
            record.evicted = outcome.no_room | evicted
            if outcome.traffic is not None:
                record.traffic = outcome.traffic
            record.loaded = True
            record.fingerprint = fingerprint
            self._publish_ready(name)
            self._retire(retired)
        if on_request:
            for loaded in new:
                if loaded.joined:  # another front end's request loaded it: counted there
                    logger.info("model %s version %d joined its model runner on request", name, loaded.version)
                else:
                    self.metrics.loads_on_request.labels(name, str(loaded.version)).inc()
                    logger.info("model %s version %d loaded on request", name, loaded.version)
        for version, reason in outcome.failures.items():
            logger.warning("model %s%s failed to load: %s", name, _version_suffix(version), reason)
        if outcome.versions:
            logger.info("model %s serving versions %s", name, sorted(outcome.versions))
        if outcome.failures:
            raise UnavailableError(
                f"model '{name}' failed to load: "
                + "; ".join(f"{_version_label(version)}: {reason}" for version, reason in outcome.failures.items())
            )

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``: new requests get NOT_FOUND from now on.

        Requests already queued or running finish on their instances, which are then released in
        the background (the call does not wait for them, as Triton's unload). A model whose folder
        is gone from the repository (deleted by another worker process) is forgotten, loaded or not.

        Raises:
            NotFoundError: the model is not loaded.
        """
        record = self._records.get(name)
        if record is not None and not self.model_folder(name).is_dir():
            async with self._locks.setdefault(name, asyncio.Lock()):
                self._forget(name)
            return
        if record is None or not record.loaded:
            raise NotFoundError(f"model '{name}' is not loaded")
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._retire(record.versions.values())
            record.versions = {}
            record.failures = {}
            record.evicted = set()
            record.loaded = False
            record.fingerprint = None
            record.override_text = record.override = None
            self._publish_ready(name)
        logger.info("model %s unloaded", name)

    async def delete(self, name: str, version: int | None = None) -> list[int]:
        """Delete a model, or one of its versions, from the repository: stop serving it, then remove its files.

        The folder is renamed into the staging area first (one step: the repository holds it whole
        or not at all), then removed. A deleted model stops serving at once, as with :meth:`unload`
        (requests already queued or running finish first). After one version is deleted a loaded
        model is loaded again, so that its version policy chooses among the versions left (with
        ``latest``, the previous one takes over once it is ready); the deleted version stops serving
        even if no other version loads.

        Args:
            name: the model.
            version: the version to delete, or None for the whole model.

        Returns:
            The version folders deleted, ascending.

        Raises:
            NotFoundError: no such model folder, or no such version folder.
            UnavailableError: the repository cannot be written (e.g. mounted read-only).
            FailedPreconditionError: a configured model (its files are not the repository's to delete).
        """
        self._check_repository_model(name, "deleted")
        model_path = self._model_path(name)
        reload = False
        async with self.staging_folder() as staging:
            async with self._locks.setdefault(name, asyncio.Lock()):
                on_disk = await asyncio.to_thread(_version_folders, model_path)
                if version is None:
                    deleted, folder = on_disk, model_path
                elif version in on_disk:
                    deleted, folder = [version], model_path / str(version)
                else:
                    listed = ", ".join(str(v) for v in on_disk) or "none"
                    raise NotFoundError(f"model '{name}' has no version {version} (versions on disk: {listed})")
                try:
                    await asyncio.to_thread(os.rename, folder, staging / "deleted")
                except FileNotFoundError:
                    raise NotFoundError(f"no model '{name}' in the repository") from None
                except OSError as error:
                    raise UnavailableError(f"model '{name}' cannot be deleted: {error}") from None
                if version is None:
                    self._forget(name)
                else:
                    reload = self.is_loaded(name)
            if reload:
                await self._load_quietly(name)
        logger.info("model %s: deleted %s", name, f"version {version}" if version is not None else "every version")
        return deleted

    @contextlib.asynccontextmanager
    async def staging_folder(self) -> AsyncIterator[Path]:
        """A new, empty folder inside the repository (same filesystem), removed with what is left in it.

        The folder is named ``upload-<host>-<pid>-<random>`` after the process that owns it. A process
        killed in the middle of an upload leaves its folder behind (it is hidden: never a model);
        each new staging folder first removes those left by dead processes of this host, and never
        one whose process is alive (several worker processes may share one repository) or one
        of another host (a shared volume).

        Raises:
            UnavailableError: the repository cannot be written (e.g. mounted read-only).
        """
        staging_root = self.root / STAGING_FOLDER
        try:
            staging_root.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(_remove_stale_staging_folders, staging_root)
            folder = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"upload-{_staging_host()}-{os.getpid()}-"))
        except OSError as error:
            raise UnavailableError(f"the model repository cannot be written: {error}") from None
        try:
            yield folder
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def install_version(self, name: str, version: int | None, staged: Path) -> int:
        """Check a staged version folder, move it into the repository atomically, and load the model.

        The staged files are first loaded on their own (one instance, the model's config) and must
        load; then the folder is renamed to ``<root>/<name>/<version>`` (a new model's whole folder
        is renamed into place), so the repository holds the old state or the new one, never a part.
        If the model then fails to load that version, the folder is moved out again and the model is
        reloaded as it was.

        Args:
            name: the model name (``[A-Za-z0-9_.-]+``, not starting with a dot).
            version: the version number, or None for one more than the highest on disk.
            staged: a folder inside :meth:`staging_folder` holding the version's files.

        Returns:
            The version number installed.

        Raises:
            InvalidArgumentError: an invalid model name, or the files do not load (the message says why).
            AlreadyExistsError: that version exists already.
            UnavailableError: the model failed to load the new version; the repository is as before.
            FailedPreconditionError: a configured model (its files are not the repository's to change).
        """
        model_path = self.root / name
        async with self._locks.setdefault(name, asyncio.Lock()):
            await asyncio.to_thread(self.check_staged_version, name, staged)
            is_new_model = not model_path.is_dir()
            highest = 0 if is_new_model else max(_version_folders(model_path), default=0)
            number = version if version is not None else highest + 1
            installed = await asyncio.to_thread(_move_into_place, staged, model_path, number)
        try:
            await self._load(name, None)
        except UnavailableError:
            reason = self.failure(name, number)
            if reason is None:
                return number  # another version's failure; ours loaded (or the policy does not select it)
            await asyncio.to_thread(os.rename, installed, staged.with_name(f"rejected-{uuid.uuid4().hex}"))
            if is_new_model:
                await asyncio.to_thread(shutil.rmtree, model_path, True)
                self._forget(name)
            else:
                await self._load_quietly(name)
            raise UnavailableError(f"model '{name}' version {number} failed to load: {reason}") from None
        return number

    def check_staged_version(self, name: str, staged: Path) -> None:
        """Blocking: check that ``staged`` may become a version of ``name``: one instance loads with its config.

        Raises:
            InvalidArgumentError: an invalid model name, a repository entry ``name`` that is not a model
                folder, or files that do not load (the message says why).
            FailedPreconditionError: a configured model (its files are not the repository's to change).
        """
        check_model_name(name)
        self._check_repository_model(name, "uploaded to")
        model_path = self.root / name
        if model_path.is_symlink() or (model_path.exists() and not model_path.is_dir()):
            raise InvalidArgumentError(f"'{name}' in the repository is not a model folder")
        record = self._records.get(name)
        try:
            override = record.override if record is not None else None
            if override is None and not model_path.is_dir():
                config = ModelConfig()
            else:
                config = self._model_config(model_path.name, model_path, override)
            self.host.check(staged, config)
        except (ModelLoadError, ModelConfigError) as error:
            raise InvalidArgumentError(f"the uploaded model does not load: {error}") from None

    def get(self, name: str, version: str | None = None, label: str | None = None) -> LoadedVersion:
        """The loaded version that serves a request: ``version``, the version ``label`` names, or the highest ready one.

        Raises:
            InvalidArgumentError: ``version`` is not an integer, or the model has no label ``label``.
            NotFoundError: unknown or unloaded model, or a version the model does not serve.
            UnavailableError: the model or version is loading or failed to load.
        """
        if label is not None:
            number = self.version_for_label(name, label)
            try:
                return self.get(name, str(number))
            except (NotFoundError, UnavailableError) as error:
                raise type(error)(f"version label '{label}' names version {number}: {error.message}") from None
        record = self._records.get(name)
        if record is None or not (record.loaded or record.loading):
            raise NotFoundError(self._missing_model_message(name))
        if version is not None and version in record.traffic.version_labels:
            return self.get(name, None, version)  # a label where a version is asked for
        if version is None:
            if record.versions:
                return record.versions[max(record.versions)]
            raise UnavailableError(f"model '{name}' is not ready: {self._unready_reason(record)}")
        number = _parse_version(version)
        loaded = record.versions.get(number)
        if loaded is not None:
            return loaded
        if number in record.evicted and number not in record.failures:
            raise UnavailableError(f"model '{name}' version {number} is not ready: {_EVICTED}")
        if number in record.failures:
            raise UnavailableError(f"model '{name}' version {number} is not ready: {record.failures[number]}")
        if record.loading:
            raise UnavailableError(f"model '{name}' is loading")
        served = ", ".join(str(v) for v in sorted(record.versions)) or "none"
        raise NotFoundError(f"model '{name}' has no version {number} (versions served: {served})")

    async def load_for_request(
        self, name: str, version: str | None = None, label: str | None = None, deadline: float | None = None
    ) -> float | None:
        """Before :meth:`get` for an inference request: load the version first if it is not loaded for want of memory.

        A version evicted by the memory budget (or refused for want of room at its last load) is
        loaded again; with :attr:`load_on_request`, so is a model on disk that is not loaded. Concurrent
        requests for the same model wait for one load. A version that failed for another reason is
        not tried again (its reason is in the index).

        A load that fails raises nothing here: :meth:`get` then says whether the version asked for
        serves, and why not (e.g. the memory budget's sizes).

        Args:
            name, version, label: as :meth:`get`.
            deadline: the request's deadline in ``time.perf_counter()`` seconds, or None; the load
                itself waits for busy versions to make room until the deadline of the request that
                started it.

        Returns:
            When the request began to wait for a load (``time.perf_counter()`` seconds), or None
            when it did not wait.

        Raises:
            NotFoundError: the model's folder was removed meanwhile.
            DeadlineExceededError: the deadline passed while the model was loading.
        """
        if not self._waits_for_load(name, version, label):
            return None
        started = time.perf_counter()
        task = self._request_loads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name, None, deadline, on_request=True))
            self._request_loads[name] = task
            task.add_done_callback(functools.partial(self._request_load_done, name))
        try:
            await asyncio.wait_for(asyncio.shield(task), None if deadline is None else deadline - started)
        except TimeoutError:
            raise DeadlineExceededError(f"the request's deadline passed while model '{name}' was loading") from None
        except UnavailableError:
            pass  # some version failed: get says whether the one asked for serves, and why not
        return started

    def _request_load_done(self, name: str, task: asyncio.Task[None]) -> None:
        """A load started by requests has ended: the next request that finds the model unloaded starts another."""
        if self._request_loads.get(name) is task:
            del self._request_loads[name]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone; the reasons are in the index and logs

    def _waits_for_load(self, name: str, version: str | None, label: str | None) -> bool:
        """Whether a request for ``name`` (``version`` or ``label``) must first load it (:meth:`load_for_request`)."""
        record = self._records.get(name)
        if record is None or not record.loaded:  # not loaded, or loading for the first time
            return self.load_on_request and name in self.model_names()
        if not record.evicted:
            return False
        labels = record.traffic.version_labels
        if label is None and version is None:
            return max(record.evicted) > max(record.versions, default=-1)  # the highest version serves
        number = labels.get(label if label is not None else str(version))
        if number is None and label is None and version is not None and version.isascii() and version.isdigit():
            number = int(version)
        return number in record.evicted

    def failure(self, name: str, version: int) -> str | None:
        """Why version ``version`` of ``name`` failed its last load, or None."""
        record = self._records.get(name)
        return record.failures.get(version) if record is not None else None

    def ready_versions(self, name: str) -> list[int]:
        """The versions of ``name`` that are loaded and serving, ascending."""
        record = self._records.get(name)
        return sorted(record.versions) if record is not None else []

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is loaded: its versions serve, or failed to load and say why in the index."""
        record = self._records.get(name)
        return record is not None and (record.loaded or record.loading)

    def index(self) -> list[IndexEntry]:
        """Every model on disk or loaded, with each version's state and, when not ready, the reason."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self.model_names()) | set(self._records)):
            entries += self._index_entries(name)
        return entries

    def model_index(self, name: str) -> list[IndexEntry]:
        """One model's index entries, plus an entry for each version folder on disk that they do not list.

        Such a version is UNAVAILABLE with the reason ``not loaded`` (the model is not loaded) or
        ``not served: the version policy does not select it``.

        Raises:
            NotFoundError: the model is neither on disk nor loaded.
        """
        path = self.model_folder(name)
        on_disk = _version_folders(path) if valid_model_name(name) and path.is_dir() and not path.is_symlink() else []
        if not on_disk and name not in self._records:
            self._model_path(name)  # raises NotFoundError for a name that is not a model folder
        entries = self._index_entries(name)
        if not self.is_loaded(name) and on_disk:
            return [IndexEntry(name, str(version), ModelState.UNAVAILABLE, "not loaded") for version in on_disk]
        listed = {entry.version for entry in entries}
        entries += [
            IndexEntry(name, str(version), ModelState.UNAVAILABLE, "not served: the version policy does not select it")
            for version in on_disk
            if str(version) not in listed
        ]
        return sorted(entries, key=lambda entry: (entry.version == "", int(entry.version or 0)))

    def _index_entries(self, name: str) -> list[IndexEntry]:
        """The index entries of ``name``: a model-level entry when it is not loaded, is loading or failed
        as a whole, and one per version loaded or failed."""
        record = self._records.get(name)
        if record is None or not (record.loaded or record.loading):
            return [IndexEntry(name, "", ModelState.UNAVAILABLE, "not loaded")]
        entries: list[IndexEntry] = []
        if record.loading:
            entries.append(IndexEntry(name, "", ModelState.LOADING, ""))
        for version in sorted(set(record.versions) | record.evicted | {v for v in record.failures if v is not None}):
            reason = record.failures.get(version, "")
            loaded = record.versions.get(version)
            if loaded is not None:
                if reason:
                    reason = f"reload failed, previous files still serving: {reason}"
                usage = loaded.usage
                entries.append(
                    IndexEntry(name, str(version), ModelState.READY, reason, usage.resident_bytes, usage.gpu_bytes)
                )
            else:
                entries.append(IndexEntry(name, str(version), ModelState.UNAVAILABLE, reason or _EVICTED))
        if None in record.failures:
            entries.append(IndexEntry(name, "", ModelState.UNAVAILABLE, record.failures[None]))
        return entries

    def _forget(self, name: str) -> None:
        """Drop every record of ``name`` (its folder is gone): its versions stop serving and are released."""
        removed = self._records.pop(name, None)
        self._publish_ready(name)
        if removed is not None:
            self._retire(removed.versions.values())

    def _retire(self, versions: Iterable[LoadedVersion]) -> None:
        """Release versions that no longer serve once their queued and running requests have finished."""
        loop = asyncio.get_running_loop()
        for loaded in versions:
            loaded.usage.serving = False
            task = loop.create_task(self._drain(loaded))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _drain(self, loaded: LoadedVersion) -> None:
        """Wait for the version's queued and running requests, release its instances and its share of the budget."""
        logger.info("model %s version %d no longer serves; draining its requests", loaded.name, loaded.version)
        if loaded.scheduler is not None:
            await loaded.scheduler.drain()
            await asyncio.to_thread(release_freed_memory)  # the freed pages go back to the system
            self.budget.remove(loaded.usage)
        logger.info("model %s version %d released", loaded.name, loaded.version)

    async def _evict(self, usage: VersionUsage) -> None:
        """Take an idle version out of service to make room in the budget; return once it is released.

        Its model stays loaded: the version shows as evicted in the index, and the next request for
        it loads it again (:meth:`load_for_request`).
        """
        usage.serving = False
        record = self._records.get(usage.model)
        loaded = record.versions.get(usage.version) if record is not None else None
        if record is None or loaded is None or loaded.usage is not usage:
            return  # no longer serving: it is being released, which frees its bytes
        self.metrics.evictions.labels(usage.model, str(usage.version)).inc()
        idle = time.monotonic() - usage.last_used
        budget = self.budget
        told = eviction_told(budget.limit_bytes, budget.gpu_limit_bytes, usage.resident_bytes, usage.gpu_bytes, idle)
        logger.info("model %s version %d %s", usage.model, usage.version, told)
        await self._take_out_evicted(record, loaded)

    async def evict_hosted(self, scheduler: VersionScheduler, resident_bytes: int) -> None:
        """The host evicted the version that ``scheduler`` runs (its model runner, to make room within the
        supervisor's memory budget): take it out of service as :meth:`_evict` does; return once drained.

        The eviction is counted and logged where it was decided (the runner, the supervisor), once per machine.

        Args:
            scheduler: the version's scheduler (a runner's client); nothing happens if no version has it.
            resident_bytes: the bytes its runner held.
        """
        for record in self._records.values():
            for loaded in list(record.versions.values()):
                if loaded.scheduler is scheduler:
                    loaded.usage.serving = False
                    logger.info(
                        "model %s version %d evicted by the model runners' memory budget (it held %d bytes)",
                        loaded.name,
                        loaded.version,
                        resident_bytes,
                    )
                    await self._take_out_evicted(record, loaded)
                    return

    async def _take_out_evicted(self, record: _ModelRecord, loaded: LoadedVersion) -> None:
        """Out of routing, kept among the model's evicted versions (its next request loads it again), drained."""
        del record.versions[loaded.version]
        record.evicted.add(loaded.version)
        self._publish_ready(loaded.name)
        await self._drain(loaded)

    def _reserver(self, name: str, deadline: float | None) -> Callable[[int, int, dict[int, int]], None] | None:
        """With a budget limit, what a loading thread calls before a version loads, with the bytes the
        version is expected to keep and to hold at its load's peak, and to hold on each CUDA device.

        Room is made for the peak (at most the whole budget, or what the process leaves of it when the
        budget counts the process); a version expected to keep more raises :class:`LargerThanBudgetError`.
        The call blocks the thread while the event loop evicts (:meth:`MemoryBudget.make_room`), and
        raises what that raises.
        """
        if not self.budget.has_limit:
            return None
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = time.perf_counter() + DEFAULT_ROOM_WAIT_SECONDS

        def reserve(kept_bytes: int, peak_bytes: int, gpu_bytes: dict[int, int]) -> None:
            needed_bytes = max(kept_bytes, min(peak_bytes, self.budget.models_limit_bytes() or 0))
            room = self.budget.make_room(name, needed_bytes, self._evict, deadline, gpu_bytes)
            asyncio.run_coroutine_threadsafe(room, loop).result()

        return reserve

    async def _back_within_budget(self, name: str) -> None:
        """After a load that measured more than its estimate: evict idle versions of other models to fit again.

        Busy ones are not waited for: the budget is exceeded (logged) until the next load makes room.
        """
        try:
            await self.budget.make_room(name, 0, self._evict, time.perf_counter())
        except MemoryBudgetError as error:
            logger.warning("over the memory budget for now: %s", error)

    async def _load_quietly(self, name: str, fingerprint: Fingerprint | None = None) -> None:
        with contextlib.suppress(NotFoundError, UnavailableError):  # recorded in the index, and logged
            await self._load(name, fingerprint)

    def _model_path(self, name: str) -> Path:
        if name in self.configured_models:
            return self.configured_models[name].path  # a missing folder is a load failure, in the index
        path = self.root / name
        if not valid_model_name(name) or not path.is_dir() or path.is_symlink():
            raise NotFoundError(f"no model '{name}' in the repository")
        return path

    def _check_repository_model(self, name: str, done: str) -> None:
        """Refuse to change the files of a configured model (they are where its configuration says, not ours).

        Raises:
            FailedPreconditionError: ``name`` is a configured model.
        """
        configured = self.configured_models.get(name)
        if configured is not None:
            raise FailedPreconditionError(
                f"model '{name}' is served from {configured.path} as {configured.source} says, and cannot be "
                f"{done} through the gateway; change its files there"
            )

    def _model_config(self, name: str, path: Path, override: ModelConfig | None = None) -> ModelConfig:
        """The model's config: the load's config override, else its config.yaml or config.pbtxt
        (:func:`read_config`), with the settings of its configuration when it is a configured model.

        Raises:
            ModelConfigError: the config file is invalid, or sets a field its configuration sets too.
        """
        config = override if override is not None else read_config(path)
        configured = self.configured_models.get(name)
        return config if configured is None else merge_config(config, configured.config, configured.source)

    def _missing_model_message(self, name: str) -> str:
        if valid_model_name(name) and (name in self.configured_models or (self.root / name).is_dir()):
            return f"model '{name}' is not loaded"
        return f"unknown model '{name}'"

    @staticmethod
    def _unready_reason(record: _ModelRecord) -> str:
        if record.loading:
            return "loading"
        reasons = [f"{_version_label(version)}: {reason}" for version, reason in record.failures.items()]
        reasons += [f"version {version}: {_EVICTED}" for version in sorted(record.evicted - set(record.failures))]
        return "; ".join(reasons) or "no version is loaded"

    def _load_versions(
        self,
        name: str,
        path: Path,
        current: dict[int, LoadedVersion],
        override: ModelConfig | None,
        reserve: Callable[[int, int, dict[int, int]], None] | None = None,
        room_deadline: float | None = None,
    ) -> _LoadOutcome:
        """Runs in a worker thread: read the config (or take the override) and load each selected version.

        ``reserve`` (with a budget limit) is called before a version loads with the bytes it is expected
        to keep and the bytes its load is expected to hold at its peak: those measured at its last load
        of the same files, else its files' bytes and twice them (a runtime holds the parsed file and the
        built weights at once). ``room_deadline`` goes to the host, for a budget it holds itself (the
        supervisor's, with model runners): until when (``time.perf_counter()`` seconds) a load may wait
        for room, None for the default wait.
        """
        try:
            config = self._model_config(name, path, override)
            traffic = read_traffic_file(path) or TrafficPolicy.of_config(config)
        except ModelConfigError as error:
            return _LoadOutcome(versions=dict(current), failures={None: str(error)})
        labels = traffic.version_labels
        if not path.is_dir():
            return _LoadOutcome(
                versions={}, failures={None: f"the model folder {path} does not exist"}, traffic=traffic
            )
        available = _version_folders(path)
        if config.pipeline is not None:
            available = available or [1]  # a pipeline needs no version folder (Triton's ensembles have an empty 1/)
        if not available:
            return _LoadOutcome(versions={}, failures={None: "no version folders (1/, 2/, ...)"}, traffic=traffic)
        selected = config.version_policy.select(available)
        if not selected:
            return _LoadOutcome(
                versions={},
                failures={None: f"the version policy selects none of versions {available}"},
                traffic=traffic,
            )
        config_fingerprint = _file_fingerprint(path / CONFIG_FILE) + _file_fingerprint(path / CONFIG_PBTXT)
        if override is not None:
            # A digest the same in every process (not hash(), salted per process): front ends compare it.
            config_fingerprint += (("config override", 0, zlib.crc32(override.model_dump_json().encode())),)
        versions: dict[int, LoadedVersion] = {}
        failures: dict[int | None, str] = {}
        no_room: set[int] = set()
        unserved = {label: version for label, version in labels.items() if version not in selected}
        if unserved:
            failures[None] = (
                "version_labels: "
                + ", ".join(
                    f"'{label}' names version {version}, which is not served" for label, version in unserved.items()
                )
                + f" (versions served by the policy: {', '.join(str(v) for v in selected)})"
            )
        for version in selected:
            version_path = path / str(version)
            files = _fingerprint(version_path)
            fingerprint = config_fingerprint + files
            previous = current.get(version)
            if previous is not None and previous.fingerprint == fingerprint:
                versions[version] = previous
                continue
            model_bytes = sum(size for _, size, _ in files)
            try:
                if reserve is not None and config.pipeline is None:
                    measured = self._measured.get((name, version))
                    if measured is not None and measured[0] == fingerprint:
                        usage = measured[1]
                        reserve(usage.resident_bytes, usage.load_peak_bytes, usage.gpu_bytes)
                    else:  # a first load's GPU bytes are unknown: a load over the GPU budget evicts after it
                        reserve(model_bytes, 2 * model_bytes, {})
                started = time.perf_counter()
                metrics = self.metrics.for_version(name, version)
                loaded = self._load_version(
                    name, version, version_path, config, fingerprint, metrics, model_bytes, room_deadline
                )
                if not loaded.joined:  # a front end joining a runner another one started waited, it did not load
                    self.metrics.load_duration.labels(name, str(version)).observe(time.perf_counter() - started)
                if loaded.scheduler is not None:
                    self.budget.add(loaded.usage)
                    self._measured[(name, version)] = (fingerprint, loaded.usage)
                versions[version] = loaded
            except (ModelLoadError, ModelConfigError, WarmupError, MemoryBudgetError) as error:
                failures[version] = str(error)
                if isinstance(error, NoRoomError):
                    no_room.add(version)
                release_freed_memory()  # what the failed load allocated goes back to the system
            except Exception as error:  # a runtime's unexpected failure must not take the server down
                logger.exception("unexpected error loading %s version %s", name, version)
                failures[version] = f"unexpected error: {error!r}"
            if version in failures and previous is not None:
                versions[version] = previous
        if any(version not in versions for version in failures):
            # A version failed with nothing to fall back on: what serves now keeps serving (e.g. version
            # 1 stays while a broken version 2 is fixed, although the policy "latest 1" selects only 2),
            # unless its folder is gone (removed or deleted).
            for version, loaded in current.items():
                if version in available:
                    versions.setdefault(version, loaded)
        return _LoadOutcome(versions=versions, failures=failures, traffic=traffic, no_room=no_room)

    def _load_version(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        fingerprint: Fingerprint,
        metrics: VersionMetrics,
        model_bytes: int,
        room_deadline: float | None = None,
    ) -> LoadedVersion:
        """Load one version's instances, warm them up, and measure the bytes they hold (``room_deadline``:
        see :meth:`VersionHost.load`).

        Raises:
            ModelLoadError, ModelConfigError: the files do not load, or the config does not fit them.
            WarmupError: a warmup request failed.
            LargerThanBudgetError: the version measured more bytes than the whole memory budget
                (its instances are released).
        """
        if config.pipeline is not None:
            return self._load_pipeline(name, version, config, fingerprint, metrics)
        hosted = self.host.load(name, version, path, config, model_bytes, metrics, fingerprint, room_deadline)
        completed = hosted.config
        max_batch_size = completed.max_batch_size or 0

        def signatures(tensors: list[TensorConfig]) -> dict[str, TensorSignature]:
            return {t.name: TensorSignature(t.datatype, tuple(full_shape(t, max_batch_size))) for t in tensors}

        return LoadedVersion(
            name=name,
            version=version,
            platform=hosted.platform,
            config=completed,
            max_batch_size=max_batch_size,
            inputs=signatures(completed.inputs),
            outputs=signatures(completed.outputs),
            scheduler=hosted.scheduler,
            fingerprint=fingerprint,
            metrics=metrics,
            model_bytes=model_bytes,
            usage=VersionUsage(name, version, hosted.resident_bytes, hosted.peak_bytes, dict(hosted.gpu_bytes)),
            parity=read_parity_file(path),
            quantization=read_quantization_file(path),
            backend_parameters=hosted.backend_parameters,
            joined=hosted.joined,
        )

    def _load_pipeline(
        self, name: str, version: int, config: ModelConfig, fingerprint: Fingerprint, metrics: VersionMetrics
    ) -> LoadedVersion:
        """A pipeline's version: its graph checked and ordered, its steps' models found (not loaded here)."""

        def step_config(model: str) -> ModelConfig | None:
            if model not in self.model_names():
                return None
            return self._model_config(model, self.model_folder(model))

        steps = plan_pipeline(name, config, step_config)
        max_batch_size = config.max_batch_size or 0
        completed = config.model_copy(update={"max_batch_size": max_batch_size})

        def signatures(tensors: list[TensorConfig]) -> dict[str, TensorSignature]:
            return {t.name: TensorSignature(t.datatype, tuple(full_shape(t, max_batch_size))) for t in tensors}

        return LoadedVersion(
            name=name,
            version=version,
            platform=PIPELINE_PLATFORM,
            config=completed,
            max_batch_size=max_batch_size,
            inputs=signatures(completed.inputs),
            outputs=signatures(completed.outputs),
            scheduler=None,
            fingerprint=fingerprint,
            metrics=metrics,
            model_bytes=0,
            usage=VersionUsage(name, version, 0),
            steps=steps,
        )

    def _publish_ready(self, name: str) -> None:
        """Set ``gateway_model_ready`` to 1 for each version of ``name`` serving now, 0 for the others seen."""
        record = self._records.get(name)
        current = {
            (str(version), loaded.config.backend or "")
            for version, loaded in (record.versions.items() if record is not None else ())
        }
        published = self._published_ready.setdefault(name, set())
        for version_label, backend in published - current:
            self.metrics.model_ready.labels(name, version_label, backend).set(0)
        for version_label, backend in current:
            self.metrics.model_ready.labels(name, version_label, backend).set(1)
        published |= current

    def is_known(self, name: str) -> bool:
        """Whether ``name`` is a model of this repository (loaded or not): labels of its metrics may name it."""
        return name in self._records


def _retired(current: dict[int, LoadedVersion], new: dict[int, LoadedVersion]) -> list[LoadedVersion]:
    """The loaded versions of ``current`` that ``new`` does not hold (by identity: a reload is a new object)."""
    kept = {id(loaded) for loaded in new.values()}
    return [loaded for loaded in current.values() if id(loaded) not in kept]


_STAGING_NAME = re.compile(r"upload-(?P<host>[A-Za-z0-9._]*)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+")


def _staging_host() -> str:
    """This host's name as it appears in staging folder names (no '-': it separates the fields)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", os.uname().nodename)[:64]


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging_folders(staging_root: Path) -> None:
    """Remove the staging folders of dead processes of this host; other folders are left alone."""
    host = _staging_host()
    for entry in staging_root.iterdir():
        match = _STAGING_NAME.fullmatch(entry.name)
        if match is None or match["host"] != host or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        logger.info("removing %s, left by process %d, which is gone", entry, pid)
        shutil.rmtree(entry, ignore_errors=True)


def _move_into_place(staged: Path, model_path: Path, version: int) -> Path:
    """Rename ``staged`` to ``<model_path>/<version>`` in one step; a new model's folder moves as a whole.

    Raises:
        AlreadyExistsError: the version (or, for a new model, the model folder) exists already.
    """
    target = model_path / str(version)
    try:
        if model_path.is_dir():
            if target.exists():
                raise AlreadyExistsError(f"model '{model_path.name}' version {version} exists already")
            os.rename(staged, target)
        else:
            new_model = staged.with_name(f"model-{uuid.uuid4().hex}")
            new_model.mkdir()
            os.rename(staged, new_model / str(version))
            os.rename(new_model, model_path)
    except OSError as error:  # e.g. the folder appeared meanwhile: rename onto a non-empty folder
        raise AlreadyExistsError(f"model '{model_path.name}' version {version} cannot be created: {error}") from None
    return target


def read_config(model_path: Path) -> ModelConfig:
    """The config of the model folder ``model_path``: its ``config.yaml`` or its Triton ``config.pbtxt``.

    A folder with neither gets the all-default config (completed from the artifact at load).

    Raises:
        ModelConfigError: the folder holds both files, or the one it holds is invalid (the message
            names the file and the field).
    """
    if (model_path / CONFIG_PBTXT).is_file():
        if (model_path / CONFIG_FILE).exists():
            raise ModelConfigError(f"the model folder holds both {CONFIG_FILE} and {CONFIG_PBTXT}; keep one")
        return read_triton_config(model_path)
    return read_model_config(model_path)


def _parse_version(version: str) -> int:
    if not (version.isascii() and version.isdigit()):  # '²' is a digit to str.isdigit, not to int()
        raise InvalidArgumentError(f"model version '{version}' is not a non-negative integer")
    return int(version)


def _version_folders(path: Path) -> list[int]:
    return sorted(
        int(entry.name)
        for entry in path.iterdir()
        if entry.is_dir() and entry.name.isascii() and entry.name.isdigit() and entry.name == str(int(entry.name))
    )


def _version_label(version: int | None) -> str:
    return "config" if version is None else f"version {version}"


def _version_suffix(version: int | None) -> str:
    return "" if version is None else f" version {version}"


def _file_fingerprint(path: Path) -> Fingerprint:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    return ((path.name, stat.st_size, stat.st_mtime_ns),)


def _fingerprint(folder: Path) -> Fingerprint:
    entries: list[tuple[str, int, int]] = []
    for directory, _, files in os.walk(folder):
        for file_name in files:
            file_path = Path(directory, file_name)
            try:
                stat = file_path.lstat()
            except FileNotFoundError:
                continue
            entries.append((str(file_path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))
