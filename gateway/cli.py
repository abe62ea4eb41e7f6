"""The ``gateway`` command."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from gateway.settings import ENV_PREFIX, GatewaySettings, ModelControlMode

app = typer.Typer(help="Serve PyTorch, TensorFlow/Keras, JAX and ONNX models over KServe v2 REST and gRPC.")


def _option(field: str, flag: str) -> typer.models.OptionInfo:
    """A CLI option whose help is the settings field's description, with its environment variable."""
    info = GatewaySettings.model_fields[field]
    default = info.default.value if hasattr(info.default, "value") else info.default
    option: typer.models.OptionInfo = typer.Option(
        flag,
        help=f"{info.description} (default: {default})",
        envvar=f"{ENV_PREFIX}{field.upper()}",
        show_default=False,
    )
    return option


@app.callback()
def main() -> None:
    """Serve PyTorch, TensorFlow/Keras, JAX and ONNX models over KServe v2 REST and gRPC."""


@app.command()
def serve(
    model_repository: Annotated[Path | None, _option("model_repository", "--model-repository")] = None,
    host: Annotated[str | None, _option("host", "--host")] = None,
    http_port: Annotated[int | None, _option("http_port", "--http-port")] = None,
    grpc_port: Annotated[int | None, _option("grpc_port", "--grpc-port")] = None,
    model_control_mode: Annotated[
        ModelControlMode | None, _option("model_control_mode", "--model-control-mode")
    ] = None,
    repository_poll_seconds: Annotated[
        float | None, _option("repository_poll_seconds", "--repository-poll-seconds")
    ] = None,
    default_max_batch_size: Annotated[int | None, _option("default_max_batch_size", "--default-max-batch-size")] = None,
    log_level: Annotated[str | None, _option("log_level", "--log-level")] = None,
) -> None:
    """Serve every model in the model repository over REST and gRPC (one process).

    Every option can also be set by its GATEWAY_* environment variable.
    """
    given = {name: value for name, value in locals().items() if value is not None}
    try:
        settings = GatewaySettings(**given)
    except ValidationError as error:
        raise typer.BadParameter(str(error)) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.server import serve as run_server

    asyncio.run(run_server(settings))
