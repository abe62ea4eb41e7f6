"""``gateway serve``: the server, with every option of :class:`gateway.settings.GatewaySettings`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from gateway.logs import LogFormat, configure_logging
from gateway.settings import ENV_PREFIX, GatewaySettings, GrpcServerKind, MemoryBudgetScope, ModelControlMode


def _option(
    field: str, flag: str, metavar: str | None = None, default_text: str | None = None
) -> typer.models.OptionInfo:
    """A CLI option whose help is the settings field's description, read from its environment variable too.

    The variables are listed once, in the help's epilog (:func:`serve_epilog`): beside each option
    the longest names would not fit an 80-column terminal whole.
    """
    info = GatewaySettings.model_fields[field]
    if default_text is None:
        default = info.get_default(call_default_factory=True)
        default_text = "" if default in (None, []) else str(getattr(default, "value", default))
    option: typer.models.OptionInfo = typer.Option(
        flag,
        help=f"{info.description} (default: {default_text})" if default_text else info.description,
        envvar=_variable(field),
        show_envvar=False,
        metavar=metavar,
        show_default=False,
    )
    return option


def _variable(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def serve_epilog() -> str:
    """The end of ``gateway serve --help``: the environment variable of every option."""
    names = ", ".join(_variable(field) for field in GatewaySettings.model_fields)
    return f"Environment variables, one per option (the option wins when both are given): {names}."


def serve(
    model_repository: Annotated[
        str | None, _option("model_repository", "--model-repository", metavar="PATH|URI")
    ] = None,
    repository_cache_dir: Annotated[
        Path | None, _option("repository_cache_dir", "--repository-cache-dir", default_text="")
    ] = None,
    s3_endpoint_url: Annotated[str | None, _option("s3_endpoint_url", "--s3-endpoint-url", metavar="URL")] = None,
    s3_region: Annotated[str | None, _option("s3_region", "--s3-region")] = None,
    model_config_file: Annotated[Path | None, _option("model_config_file", "--model-config-file")] = None,
    host: Annotated[str | None, _option("host", "--host")] = None,
    http_port: Annotated[int | None, _option("http_port", "--http-port")] = None,
    grpc_port: Annotated[int | None, _option("grpc_port", "--grpc-port")] = None,
    grpc_server: Annotated[GrpcServerKind | None, _option("grpc_server", "--grpc-server", metavar="KIND")] = None,
    grpc_threads: Annotated[int | None, _option("grpc_threads", "--grpc-threads")] = None,
    model_control_mode: Annotated[
        ModelControlMode | None, _option("model_control_mode", "--model-control-mode", metavar="MODE")
    ] = None,
    model_load_on_request: Annotated[
        bool | None, _option("model_load_on_request", "--model-load-on-request", default_text="off")
    ] = None,
    memory_budget_bytes: Annotated[
        int | None, _option("memory_budget_bytes", "--memory-budget-bytes", default_text="none")
    ] = None,
    memory_budget_scope: Annotated[
        MemoryBudgetScope | None, _option("memory_budget_scope", "--memory-budget-scope", metavar="SCOPE")
    ] = None,
    gpu_memory_budget_bytes: Annotated[
        int | None, _option("gpu_memory_budget_bytes", "--gpu-memory-budget-bytes", default_text="none")
    ] = None,
    repository_poll_seconds: Annotated[
        float | None, _option("repository_poll_seconds", "--repository-poll-seconds")
    ] = None,
    default_max_batch_size: Annotated[int | None, _option("default_max_batch_size", "--default-max-batch-size")] = None,
    admin_token: Annotated[str | None, _option("admin_token", "--admin-token")] = None,
    admin_token_dir: Annotated[
        Path | None,
        _option(
            "admin_token_dir",
            "--admin-token-dir",
            default_text="$XDG_STATE_HOME/model-gateway, else ~/.local/state/model-gateway",
        ),
    ] = None,
    max_upload_bytes: Annotated[int | None, _option("max_upload_bytes", "--max-upload-bytes")] = None,
    workers: Annotated[int | None, _option("workers", "--workers")] = None,
    model_runners: Annotated[
        bool | None,
        _option("model_runners", "--model-runners", default_text="on with several workers"),
    ] = None,
    exit_timeout_seconds: Annotated[float | None, _option("exit_timeout_seconds", "--exit-timeout-seconds")] = None,
    tls_cert_file: Annotated[Path | None, _option("tls_cert_file", "--tls-cert-file")] = None,
    tls_key_file: Annotated[Path | None, _option("tls_key_file", "--tls-key-file")] = None,
    cors_allow_origins: Annotated[
        list[str] | None, _option("cors_allow_origins", "--cors-allow-origin", metavar="ORIGIN")
    ] = None,
    max_request_bytes: Annotated[int | None, _option("max_request_bytes", "--max-request-bytes")] = None,
    max_tensor_elements: Annotated[int | None, _option("max_tensor_elements", "--max-tensor-elements")] = None,
    max_json_depth: Annotated[int | None, _option("max_json_depth", "--max-json-depth")] = None,
    max_inputs: Annotated[int | None, _option("max_inputs", "--max-inputs")] = None,
    request_timeout_seconds: Annotated[
        float | None, _option("request_timeout_seconds", "--request-timeout-seconds")
    ] = None,
    log_level: Annotated[str | None, _option("log_level", "--log-level")] = None,
    log_format: Annotated[LogFormat | None, _option("log_format", "--log-format")] = None,
) -> None:
    """Serve every model in the model repository over REST and gRPC.

    In one process, or in --workers processes sharing the ports. Every option can also be set by
    its GATEWAY_* environment variable, listed at the end; the S3 credentials only so
    (GATEWAY_S3_ACCESS_KEY_ID, GATEWAY_S3_SECRET_ACCESS_KEY, or AWS's own variables).
    """
    given = {name: value for name, value in locals().items() if value is not None}
    try:
        settings = GatewaySettings(**given)
    except ValidationError as error:
        raise typer.BadParameter(str(error)) from None
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 or settings.uses_model_runners:  # the supervisor: its children import the server
        from gateway.process.children import runner_entry, worker_entry
        from gateway.process.supervisor import run_supervisor

        raise typer.Exit(run_supervisor(settings, worker_entry, runner_entry if settings.uses_model_runners else None))

    from gateway.process.server import StartupError, run_gateway

    try:
        run_gateway(settings)
    except StartupError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
