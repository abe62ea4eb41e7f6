"""Server settings, from command-line flags or ``GATEWAY_*`` environment variables.

Each field's description is the help text ``gateway serve --help`` shows, so it is written once.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.logs import LogFormat

ENV_PREFIX = "GATEWAY_"

#: Default of ``--max-request-bytes``: Triton's default largest request, 64 MiB.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Default of ``--max-tensor-elements``: 64 Mi elements (256 MiB of FP32).
DEFAULT_MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024
#: Default of ``--max-json-depth``: levels of nested JSON arrays and objects.
DEFAULT_MAX_JSON_DEPTH = 32
#: Default of ``--max-inputs``: input tensors, and requested outputs, per request.
DEFAULT_MAX_INPUTS = 64


class ModelControlMode(StrEnum):
    """How the model repository is loaded, in Triton's terms."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


class MemoryBudgetScope(StrEnum):
    """What ``--memory-budget-bytes`` bounds."""

    #: The bytes the loaded versions hold, each measured at its load.
    MODELS = "models"
    #: All the gateway's memory: the versions get the budget less what the gateway's own processes hold.
    GATEWAY = "gateway"


class GrpcServerKind(StrEnum):
    """Which of grpcio's servers serves the gRPC API (:mod:`gateway.transports.grpc.server`)."""

    #: grpc.aio, on the event loop.
    ASYNCIO = "asyncio"
    #: The synchronous server with a thread pool, each call handed to the event loop.
    THREADS = "threads"


#: URI schemes of a shared model repository (fsspec's protocols): followed through a local cache.
STORE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "file")


def store_uri(repository: str) -> str | None:
    """``repository`` when it is a shared repository's URI (``s3://bucket/prefix``, ``gs://``, ``az://``,
    ``file:///shared/folder``), else None (a local folder)."""
    scheme, separator, _ = repository.partition("://")
    return repository if separator and scheme.lower() in STORE_SCHEMES else None


class StoreSettings(BaseSettings):
    """How to reach an object store holding the model repository (read by ``gateway serve`` and ``gateway push``).

    Unset fields fall back to the store library's own configuration: for S3, botocore's usual
    variables and files (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance or pod role).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=(), extra="ignore")

    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint URL of an S3-compatible store (MinIO, Ceph...), e.g. http://minio:9000; default: "
        "AWS_ENDPOINT_URL, else AWS S3.",
    )
    s3_region: str | None = Field(default=None, description="S3 region; default: AWS_REGION or the AWS config.")
    s3_access_key_id: SecretStr | None = Field(
        default=None, description="S3 access key id; default: AWS_ACCESS_KEY_ID or the AWS credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret access key; default: AWS_SECRET_ACCESS_KEY or the AWS credential chain."
    )


class GatewaySettings(StoreSettings):
    """Settings of one gateway process; every field can be set as ``GATEWAY_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=(), extra="forbid")

    model_repository: str = Field(
        default="model-repository",
        description="Folder holding one sub-folder per model, each with integer version folders; or a repository "
        "shared by several replicas: s3://bucket/prefix, gs://..., az://..., or file:///shared/folder (each "
        "replica serves it from its repository-cache-dir and follows it in poll mode).",
    )
    repository_cache_dir: Path | None = Field(
        default=None,
        description="Folder where a replica keeps the versions of a shared model repository that it serves, "
        "downloaded once and checked against their digests (default: a folder per URI under "
        "~/.cache/model-gateway, or XDG_CACHE_HOME's).",
    )
    model_config_file: Path | None = Field(
        default=None,
        description="TF Serving's models.config (text format of its ModelServerConfig): models served from their "
        "base paths, with their version policies and version labels, beside those of model-repository.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address both servers bind to; loopback unless told otherwise (0.0.0.0 for all).",
    )
    http_port: int = Field(default=8000, ge=0, le=65535, description="Port of the REST API.")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="Port of the gRPC API.")
    grpc_server: GrpcServerKind = Field(
        default=GrpcServerKind.ASYNCIO,
        description="asyncio: grpc.aio on the event loop. threads: grpcio's synchronous server, each call handed to "
        "the event loop: half the CPU per call when each gateway process keeps to one core (taskset, a cpuset), "
        "slower than asyncio when its threads spread over several.",
    )
    grpc_threads: int = Field(
        default=64,
        ge=1,
        description="With grpc-server threads: the server's threads (in each worker), the gRPC calls answered at "
        "once; a call holds its thread until answered, and further calls wait for one. Fewer threads cost less CPU "
        "per call (8 served 20-30% more short calls than 64 on 2 cores); more keep calls to slow models from "
        "holding up the rest.",
    )
    model_control_mode: ModelControlMode = Field(
        default=ModelControlMode.NONE,
        description="none: load every model at start; poll: also rescan the repository every "
        "repository-poll-seconds; explicit: load and unload only on request (repository API).",
    )
    model_load_on_request: bool = Field(
        default=False,
        description="Load a model on its first inference request instead of at start (in every model control "
        "mode; the request waits for the load, under its time limits). Versions evicted by the memory budget are "
        "loaded again by their next request either way.",
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Bytes the loaded model versions may hold together, each measured at its load (the process's "
        "resident memory growth, warmup included). A load that would pass it first unloads the least recently used "
        "idle versions of other models; never one with requests queued or running. With model runners the budget "
        "is the machine's, for all runners together (each counted with its process's own pages); with several "
        "whole gateways (model-runners off), each worker gets an equal share. None by default: no budget.",
    )
    memory_budget_scope: MemoryBudgetScope = Field(
        default=MemoryBudgetScope.MODELS,
        description="What memory-budget-bytes bounds. models: the loaded versions' bytes. gateway: all the gateway's "
        "memory, e.g. a container's memory limit: the versions may hold the budget less what the gateway's own "
        "processes hold, measured at each load (in process: its resident set less the versions'; with model runners: "
        "the proportional set size of the supervisor, the fork server and the front ends).",
    )
    gpu_memory_budget_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Bytes the loaded model versions may hold together on each CUDA device (the same budget for "
        "every device), each version measured at its load (the device memory its process holds more, per NVML; "
        "needs nvidia-ml-py, in the gpu extra). A load that would pass it first unloads the least recently used idle "
        "versions of other models holding bytes on that device. With model runners the budget is the machine's; "
        "with several whole gateways, each worker gets an equal share. None by default: no budget.",
    )
    repository_poll_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between two scans of the repository in poll mode."
    )
    default_max_batch_size: int = Field(
        default=64,
        ge=0,
        description="max_batch_size given to a model whose config does not set one and whose every "
        "input and output has a variable first dim.",
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        gt=0,
        description="Largest request body (REST, after decompression) or gRPC message accepted or sent, in bytes "
        "(Triton's default, 64 MiB).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the management API (upload, load, unload) requires. When none is given "
        "the server makes one and writes it to admin-token-dir, readable by its user only.",
    )
    admin_token_dir: Path = Field(
        default_factory=lambda: default_admin_token_dir(),
        description="Folder where a generated admin token is written as admin-token-PORT (PORT: the HTTP "
        "port); the gateway commands on this machine read it from there.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Largest model package accepted by an upload, in bytes, compressed and unpacked alike.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes (front ends) sharing the REST and gRPC ports (SO_REUSEPORT). With model "
        "runners (the default with several workers) each model version is loaded once, in a runner process, for "
        "all of them; without, each worker loads the whole repository with its own batchers and gets an equal "
        "share of the CPU cores.",
    )
    model_runners: bool | None = Field(
        default=None,
        description="Run each loaded model version in a model runner process of its own, shared by every worker "
        "(front end): each version is loaded once per machine and one dynamic batcher sees the requests of all "
        "workers, handed over through shared memory. Default: on with several workers, off with one (the models "
        "then run in the server's own process).",
    )
    exit_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Seconds that requests in flight get to finish after SIGTERM or SIGINT (readiness turns "
        "false at once and new requests get 503 / UNAVAILABLE); then the process exits.",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) to serve REST and gRPC over TLS; needs tls-key-file."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls-cert-file.")
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins browsers may call the REST API from (CORS), e.g. https://app.example.com, or * "
        "for any; none by default (no CORS headers are sent).",
    )
    max_tensor_elements: int = Field(
        default=DEFAULT_MAX_TENSOR_ELEMENTS,
        gt=0,
        description="Most elements an input tensor's shape may declare (64 Mi = 67108864 by default); a larger "
        "one gets 413 / RESOURCE_EXHAUSTED before anything is allocated.",
    )
    max_json_depth: int = Field(
        default=DEFAULT_MAX_JSON_DEPTH,
        ge=1,
        le=128,
        description="Deepest nesting of arrays and objects in a JSON request body (32 levels by default, at most "
        "128); a deeper body gets 400 / INVALID_ARGUMENT before it is parsed.",
    )
    max_inputs: int = Field(
        default=DEFAULT_MAX_INPUTS,
        gt=0,
        description="Most input tensors, and most requested outputs, in one inference request (64 by default); "
        "more get 413 / RESOURCE_EXHAUSTED.",
    )
    request_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Longest an inference request may take, in seconds, REST and gRPC alike (none by default: no "
        "limit). A gRPC deadline or the request's `timeout` parameter (microseconds, as Triton) may shorten it. "
        "When it passes: 504 / DEADLINE_EXCEEDED; queued work is dropped, running work's result discarded.",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    log_format: LogFormat = Field(
        default=LogFormat.TEXT, description="text, or json: one JSON object per line (with the request id)."
    )

    @field_validator("model_repository", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls-cert-file and tls-key-file")
        if self.workers > 1 and 0 in (self.http_port, self.grpc_port):
            raise ValueError("several workers share fixed ports: http-port and grpc-port cannot be 0")
        if self.workers > 1 and self.store_uri is not None:
            raise ValueError("a shared model repository (URI) is served by one worker per replica: scale with replicas")
        if self.model_runners and self.store_uri is not None:
            raise ValueError("a shared model repository (URI) is served without model runners: scale with replicas")
        if self.memory_budget_scope is MemoryBudgetScope.GATEWAY and self.memory_budget_bytes is None:
            raise ValueError("memory-budget-scope gateway needs memory-budget-bytes")
        return self

    @property
    def uses_model_runners(self) -> bool:
        """Whether versions run in model runner processes: model-runners, else on with several workers."""
        if self.model_runners is not None:
            return self.model_runners
        return self.workers > 1

    @property
    def worker_memory_budget_bytes(self) -> int | None:
        """The memory budget of one worker process: memory-budget-bytes divided evenly among the workers; None
        with model runners (the supervisor holds the budget of them all)."""
        return self._worker_share(self.memory_budget_bytes)

    @property
    def worker_gpu_memory_budget_bytes(self) -> int | None:
        """The GPU memory budget of one worker process, per device, shared as :attr:`worker_memory_budget_bytes`."""
        return self._worker_share(self.gpu_memory_budget_bytes)

    def _worker_share(self, budget_bytes: int | None) -> int | None:
        if budget_bytes is None or self.uses_model_runners:
            return None
        return budget_bytes // self.workers

    @property
    def store_uri(self) -> str | None:
        """The shared model repository's URI, or None when model-repository is a local folder."""
        return store_uri(self.model_repository)

    @property
    def repository_folder(self) -> Path:
        """The folder the models are loaded from: model-repository, or the cache of a shared repository."""
        uri = self.store_uri
        if uri is None:
            return Path(self.model_repository)
        if self.repository_cache_dir is not None:
            return self.repository_cache_dir
        cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache_home) / "model-gateway" / re.sub(r"[^A-Za-z0-9._-]+", "_", uri)


def default_admin_token_dir() -> Path:
    """``$GATEWAY_ADMIN_TOKEN_DIR``, else ``$XDG_STATE_HOME/model-gateway``, else ``~/.local/state/model-gateway``."""
    configured = os.environ.get(f"{ENV_PREFIX}ADMIN_TOKEN_DIR")
    if configured:
        return Path(configured)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "model-gateway"
