"""The ``gateway`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError

from gateway.logs import LogFormat, configure_logging
from gateway.settings import ENV_PREFIX, GatewaySettings, ModelControlMode

app = typer.Typer(help="Serve PyTorch, TensorFlow/Keras, JAX and ONNX models over KServe v2 REST and gRPC.")


def _option(field: str, flag: str) -> typer.models.OptionInfo:
    """A CLI option whose help is the settings field's description, with its environment variable."""
    info = GatewaySettings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    default = default.value if hasattr(default, "value") else default
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
    admin_token: Annotated[str | None, _option("admin_token", "--admin-token")] = None,
    admin_token_dir: Annotated[Path | None, _option("admin_token_dir", "--admin-token-dir")] = None,
    max_upload_bytes: Annotated[int | None, _option("max_upload_bytes", "--max-upload-bytes")] = None,
    workers: Annotated[int | None, _option("workers", "--workers")] = None,
    exit_timeout_seconds: Annotated[float | None, _option("exit_timeout_seconds", "--exit-timeout-seconds")] = None,
    tls_cert_file: Annotated[Path | None, _option("tls_cert_file", "--tls-cert-file")] = None,
    tls_key_file: Annotated[Path | None, _option("tls_key_file", "--tls-key-file")] = None,
    cors_allow_origins: Annotated[list[str] | None, _option("cors_allow_origins", "--cors-allow-origin")] = None,
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
    """Serve every model in the model repository over REST and gRPC (in one process, or --workers processes).

    Every option can also be set by its GATEWAY_* environment variable.
    """
    given = {name: value for name, value in locals().items() if value is not None}
    try:
        settings = GatewaySettings(**given)
    except ValidationError as error:
        raise typer.BadParameter(str(error)) from None
    configure_logging(settings.log_level, settings.log_format)
    from gateway.process.server import StartupError, run_gateway, run_worker

    if settings.workers > 1:
        from gateway.process.supervisor import run_supervisor

        raise typer.Exit(run_supervisor(settings, run_worker))

    try:
        run_gateway(settings)
    except StartupError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def push(
    source: Annotated[
        str,
        typer.Argument(
            help="The model: a .onnx, .pt2 (torch.export), TorchScript or .keras file, a SavedModel folder, "
            "or an entry point 'path/to/file.py:function' / 'package.module:function' returning "
            "(model, example_inputs)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Model name in the repository.")],
    version: Annotated[int | None, typer.Option("--version", help="Version to create (default: the next one).")] = None,
    framework: Annotated[
        str | None,
        typer.Option("--framework", help="torch, tensorflow, keras, jax or onnx (default: detected from SOURCE)."),
    ] = None,
    input_spec: Annotated[
        list[str] | None,
        typer.Option(
            "--input-spec",
            help="NAME:DATATYPE:DIMS of one input, e.g. input:FP32:-1,64 (-1: dynamic); repeat per input. "
            "Needed for TorchScript, which carries no shapes.",
        ),
    ] = None,
    dynamic_axes: Annotated[
        list[str] | None,
        typer.Option(
            "--dynamic-axes",
            help="NAME:AXIS=LABEL,... e.g. input_ids:0=batch,1=sequence; repeat per input. "
            "Dim 0 is dynamic (batch) by default.",
        ),
    ] = None,
    export_format: Annotated[
        Literal["onnx", "native"] | None,
        typer.Option(
            "--format",
            help="onnx: convert to ONNX, served by ONNX Runtime (the default). native: export in the model's own "
            "format (torch: .pt2 via torch.export; Keras/TensorFlow: SavedModel; JAX: SavedModel via jax2tf), "
            "served by the gateway's torch or tensorflow backend.",
            show_default=False,
        ),
    ] = None,
    atol: Annotated[float, typer.Option("--atol", help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="Parity: relative tolerance.")] = 1e-3,
    server: Annotated[
        str | None, typer.Option("--server", help="Base URL of a running gateway, e.g. http://127.0.0.1:8000.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=f"{ENV_PREFIX}ADMIN_TOKEN",
            help="Admin token of the gateway (default: the token file a server on this machine wrote).",
            show_default=False,
        ),
    ] = None,
    repository: Annotated[
        Path | None, typer.Option("--repository", help="Write into this local model repository instead.")
    ] = None,
    quantize: Annotated[
        Literal["int8"] | None,
        typer.Option(
            "--quantize",
            help="int8: quantize the ONNX model with ONNX Runtime (dynamic; static QDQ with --calibration-data).",
            show_default=False,
        ),
    ] = None,
    calibration_data: Annotated[
        str | None,
        typer.Option(
            "--calibration-data",
            help="Calibrate int8 (static quantization) on these inputs: a .npz with one array per input name, "
            "or an entry point 'file.py:function' / 'package.module:function' yielding dicts of arrays.",
        ),
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option(
            "--per-channel/--per-tensor",
            help="int8 weights per output channel or per tensor (default: both measured, the closer one kept).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Literal["fp16"] | None,
        typer.Option(
            "--precision",
            help="fp16: convert the ONNX model to float16, for the CUDA provider (inputs and outputs keep their "
            "dtypes).",
            show_default=False,
        ),
    ] = None,
    fp16_io: Annotated[
        bool, typer.Option("--fp16-io", help="With --precision fp16: fp16 inputs and outputs too.")
    ] = False,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="Save ONNX Runtime's offline graph optimizations with the version.")
    ] = False,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval-data",
            help="Measure the compression on this .npz too: one array per input name, and 'labels' (class "
            "indices) for accuracy.",
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option("--max-accuracy-drop", help="Refuse a compression costing more accuracy (points, needs labels)."),
    ] = None,
    max_abs_error: Annotated[
        float | None,
        typer.Option("--max-abs-error", help="Refuse a compression whose outputs differ from the original's by more."),
    ] = None,
) -> None:
    """Convert a PyTorch, TensorFlow/Keras, JAX or ONNX model to ONNX (or export it natively), prove parity, upload it.

    The model is converted on this machine; the parity check runs the original model and the
    converted one, loaded by the gateway's own backend, on the example inputs and 16 random
    batches, and refuses the push when they differ. --quantize int8, --precision fp16 and --optimize
    then compress the ONNX model and measure the price (errors, accuracy, bytes, latency), stored
    with the version; --max-accuracy-drop and --max-abs-error refuse a compression that costs too much.
    """
    from converters.model import ConversionError
    from converters.pipeline import ExportFormat, example_from_specs
    from converters.quantization import CompressionOptions
    from converters.sources import load_source
    from gateway.push_client import PushError, parse_dynamic_axes, parse_input_spec, push_source, stderr_progress

    progress = stderr_progress()
    try:
        compression = CompressionOptions(
            quantize=quantize,
            precision=precision,
            calibration_data=calibration_data,
            per_channel=per_channel,
            fp16_io=fp16_io,
            optimize=optimize,
            eval_data=eval_data,
            max_accuracy_drop=max_accuracy_drop,
            max_abs_error=max_abs_error,
        )
        axes = parse_dynamic_axes(dynamic_axes or [])
        specs = [parse_input_spec(value, axes) for value in input_spec or []] or None
        progress(f"loading {source}")
        model = load_source(
            source,
            framework=framework,
            input_specs=specs,
            example_inputs=example_from_specs(specs) if specs else None,
            dynamic_axes=axes,
        )
        result = push_source(
            model,
            name=name,
            version=version,
            server=server,
            token=token,
            repository=repository,
            export_format=ExportFormat(export_format) if export_format is not None else None,
            atol=atol,
            rtol=rtol,
            compression=compression,
            progress=progress,
        )
    except (PushError, ConversionError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.summary())
