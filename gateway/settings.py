"""Server settings, from command-line flags or ``GATEWAY_*`` environment variables.

Each field's description is the help text ``gateway serve --help`` shows, so it is written once.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"


class ModelControlMode(StrEnum):
    """How the model repository is loaded, in Triton's terms."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


class GatewaySettings(BaseSettings):
    """Settings of one gateway process; every field can be set as ``GATEWAY_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=(), extra="forbid")

    model_repository: Path = Field(
        default=Path("model-repository"),
        description="Folder holding one sub-folder per model, each with integer version folders.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address both servers bind to; loopback unless told otherwise (0.0.0.0 for all).",
    )
    http_port: int = Field(default=8000, ge=0, le=65535, description="Port of the REST API.")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="Port of the gRPC API.")
    model_control_mode: ModelControlMode = Field(
        default=ModelControlMode.NONE,
        description="none: load every model at start; poll: also rescan the repository every "
        "repository-poll-seconds; explicit: load and unload only on request (repository API).",
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
        default=64 * 1024 * 1024, gt=0, description="Largest gRPC message accepted or sent, in bytes."
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
