"""``gateway push``: check the target, convert, prove parity, compress if asked, upload (:mod:`gateway.push_client`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from gateway.client import SERVER_VARIABLE
from gateway.commands.common import JsonOption, TokenOption, fail, print_json
from gateway.push_client import (
    PushError,
    check_push_target,
    parse_dynamic_axes,
    parse_input_spec,
    push_archive,
    push_source,
    stderr_progress,
)


def push(
    source: Annotated[
        str,
        typer.Argument(
            help="The model: a .onnx, .pt2 (torch.export), TorchScript or .keras file, a SavedModel folder, "
            "a TorchServe archive (.mar), or an entry point path/to/file.py:function or "
            "package.module:function returning (model, example_inputs).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Model name in the repository (a .mar's default: the archive's model name).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Version to create (default: the next one).", show_default=False)
    ] = None,
    framework: Annotated[
        str | None,
        typer.Option(
            "--framework",
            help="torch, tensorflow, keras, jax or onnx (default: detected from SOURCE).",
            show_default=False,
        ),
    ] = None,
    input_spec: Annotated[
        list[str] | None,
        typer.Option(
            "--input-spec",
            metavar="SPEC",
            help="NAME:DATATYPE:DIMS of one input, e.g. input:FP32:-1,64 (-1: dynamic); repeat per input. "
            "Needed for TorchScript, which carries no shapes.",
            show_default=False,
        ),
    ] = None,
    dynamic_axes: Annotated[
        list[str] | None,
        typer.Option(
            "--dynamic-axes",
            metavar="AXES",
            help="NAME:AXIS=LABEL,... e.g. input_ids:0=batch,1=sequence; repeat per input. "
            "Dim 0 is dynamic (batch) by default.",
            show_default=False,
        ),
    ] = None,
    export_format: Annotated[
        Literal["onnx", "native"] | None,
        typer.Option(
            "--format",
            help="onnx: convert to ONNX, served by ONNX Runtime (the default). native: export in the model's own "
            "format (torch: .pt2 via torch.export; Keras/TensorFlow: SavedModel; JAX: SavedModel via jax2tf), "
            "served by the gateway's torch or tensorflow backend. A .mar is pushed as it is unless converting "
            "is asked (onnx, --input-spec, a compression).",
            show_default=False,
        ),
    ] = None,
    atol: Annotated[float, typer.Option("--atol", help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="Parity: relative tolerance.")] = 1e-3,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar=SERVER_VARIABLE,
            metavar="URL",
            help="Base URL of a running gateway to upload to, e.g. http://127.0.0.1:8000.",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    repository: Annotated[
        str | None,
        typer.Option(
            "--repository",
            metavar="PATH|URI",
            help="Write into this model repository instead of uploading: a local folder, or a repository shared "
            "by replicas (s3://bucket/prefix, gs://, az://, file:///shared/folder; S3 settings from GATEWAY_S3_* "
            "or AWS_* variables).",
            show_default=False,
        ),
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
            metavar="DATA",
            help="Calibrate int8 (static quantization) on these inputs: a .npz with one array per input name, "
            "or an entry point file.py:function or package.module:function yielding dicts of arrays.",
            show_default=False,
        ),
    ] = None,
    per_channel: Annotated[
        bool,
        typer.Option(
            "--per-channel",
            help="int8 weights per output channel (default: per channel and per tensor both measured, the "
            "closer one kept).",
        ),
    ] = False,
    per_tensor: Annotated[bool, typer.Option("--per-tensor", help="int8 weights per tensor.")] = False,
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
            metavar="NPZ",
            help="Measure the compression on this .npz too: one array per input name, and labels (class "
            "indices) for accuracy.",
            show_default=False,
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            "--max-accuracy-drop",
            metavar="POINTS",
            help="Refuse a compression costing more accuracy (percentage points; needs labels).",
            show_default=False,
        ),
    ] = None,
    max_abs_error: Annotated[
        float | None,
        typer.Option(
            "--max-abs-error",
            metavar="ERROR",
            help="Refuse a compression whose outputs differ from the original's by more.",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Convert a PyTorch, TensorFlow/Keras, JAX or ONNX model, prove parity, upload it.

    First, in under a second, push checks what can fail on the way out: --server (or GATEWAY_SERVER)
    or --repository given, the server reachable, the admin token accepted, the name valid and an
    explicit --version free. Then the model is converted on this machine, to ONNX or with --format
    native in its own format; the parity check runs the original model and the converted one, loaded
    by the gateway's own backend, on the example inputs and 16 random batches, and refuses the push
    when they differ.

    --quantize int8, --precision fp16 and --optimize then compress the ONNX model and measure the
    price (errors, accuracy, bytes, latency), stored with the version; --max-accuracy-drop and
    --max-abs-error refuse a compression that costs too much.

    A TorchServe archive (.mar, TorchScript, ONNX or .pt2 with a default handler or none) is pushed
    as it is and served as TorchServe served it, under its archive name unless --name says
    otherwise; nothing from it runs. --format onnx or --input-spec convert its model to ONNX.
    """
    progress = stderr_progress()
    archive = _archive(source)
    try:
        name = name or _archive_name(archive)
        if archive is not None and framework is not None:
            raise PushError("--framework: a TorchServe archive's manifest says what its model is; leave it out")
        target = check_push_target(name, version=version, server=server, token=token, repository=repository)
        axes = parse_dynamic_axes(dynamic_axes or [])
        specs = [parse_input_spec(value, axes) for value in input_spec or []] or None
    except PushError as error:
        fail(str(error))
    # Only now the slow imports (ONNX, the converters): every check above answered without them.
    from converters.model import ConversionError
    from converters.pipeline import ExportFormat, example_from_specs
    from converters.quantization import CompressionOptions
    from converters.sources import load_source

    try:
        if per_channel and per_tensor:
            raise ValueError("--per-channel and --per-tensor are alternatives: give one")
        compression = CompressionOptions(
            quantize=quantize,
            precision=precision,
            calibration_data=calibration_data,
            per_channel=True if per_channel else False if per_tensor else None,
            fp16_io=fp16_io,
            optimize=optimize,
            eval_data=eval_data,
            max_accuracy_drop=max_accuracy_drop,
            max_abs_error=max_abs_error,
        )
    except ValueError as error:  # options that do not go together: before the model is loaded
        fail(str(error))
    chosen_format = ExportFormat(export_format) if export_format is not None else None
    try:
        if archive is not None:
            result = push_archive(
                archive,
                target,
                input_specs=specs,
                dynamic_axes=axes,
                export_format=chosen_format,
                atol=atol,
                rtol=rtol,
                compression=compression,
                progress=progress,
            )
        else:
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
                target,
                export_format=chosen_format,
                atol=atol,
                rtol=rtol,
                compression=compression,
                progress=progress,
            )
    except (PushError, ConversionError, ValueError) as error:
        fail(str(error))
    if json_output:
        print_json(result.to_json())
    else:
        typer.echo(result.summary())


def _archive(source: str) -> Path | None:
    """The TorchServe archive SOURCE is (a ``.mar`` file), or None.

    The suffix is :data:`gateway.repository.mar.ARCHIVE_SUFFIX`, written out: that module (and numpy
    with it) is imported only when an archive is pushed, so that other pushes' checks stay fast.
    """
    path = Path(source)
    return path if path.suffix.lower() == ".mar" and path.is_file() else None


def _archive_name(archive: Path | None) -> str:
    """The model name of a push without --name: a TorchServe archive's own name.

    Raises:
        PushError: no archive (every other source needs --name), or an archive whose name cannot be read.
    """
    if archive is None:
        raise PushError("give the model's name: --name NAME")
    from gateway.repository.mar import ArchiveError, archive_model_name

    try:
        return archive_model_name(archive)
    except ArchiveError as error:
        raise PushError(f"{error}; give the model's name with --name") from None
