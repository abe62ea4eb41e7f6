"""Server settings, from command-line flags or ``GATEWAY_*`` environment variables.

Each field's description is the help text ``gateway serve --help`` shows, so it is written once.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.logs import LogFormat

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
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the management API (upload, load, unload) requires. When none is given "
        "the server makes one and writes it to admin-token-dir, readable by its user only.",
    )
    admin_token_dir: Path = Field(
        default_factory=lambda: default_admin_token_dir(),
        description="Folder where a generated admin token is written as admin-token-<http port>; "
        "`gateway push` to a server on this machine reads it from there.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Largest model package accepted by an upload, in bytes, compressed and unpacked alike.",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    log_format: LogFormat = Field(
        default=LogFormat.TEXT, description="text, or json: one JSON object per line (with the request id)."
    )


def default_admin_token_dir() -> Path:
    """``$GATEWAY_ADMIN_TOKEN_DIR``, else ``$XDG_STATE_HOME/model-gateway``, else ``~/.local/state/model-gateway``."""
    configured = os.environ.get(f"{ENV_PREFIX}ADMIN_TOKEN_DIR")
    if configured:
        return Path(configured)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "model-gateway"
