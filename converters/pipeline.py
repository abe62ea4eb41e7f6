"""Export a source model to a servable artifact and prove the export is faithful.

:func:`convert_model` exports a :class:`~converters.model.SourceModel` into a version folder, as ONNX
(``model.onnx``, the default) or in its own framework's format (``model.pt2``, ``model.savedmodel/``),
loads the artifact with the gateway's own backend (:func:`backends.create_backend`, as the server
will), runs it and the original model on the example inputs and on random batches drawn from the
input specs (several batch sizes and several lengths along every dynamic axis), and compares them
(:mod:`converters.parity`). The report is written beside the model as ``parity.json``
(:func:`converters.parity.write_parity_file`) so the server can show it in the model's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from backends import BACKEND_RUNTIMES, Backend, ModelLoadError, create_backend, detect_backend
from backends.onnxruntime import ARTIFACT as MODEL_FILE
from converters.model import BATCH_LABEL, ConversionError, InputSpec, SourceModel
from converters.onnx_graph import graph_dims
from converters.parity import ParityReport, compare_outputs, write_parity_file
from converters.quantization import (
    CompressionData,
    CompressionOptions,
    Reference,
    compress_model,
    load_compression_data,
)
from converters.quantization_report import QuantizationReport, write_quantization_file

__all__ = [
    "MODEL_FILE",
    "ConversionResult",
    "ExportFormat",
    "ParityError",
    "convert_model",
    "example_from_specs",
    "parity_inputs",
    "random_batches",
]

#: Batch sizes of the random batches, in order (cycled when more batches are asked for).
RANDOM_BATCH_SIZES = (1, 2, 3, 4, 5, 7, 8, 11, 16, 1, 2, 6, 9, 13, 32, 3)
#: Length of a dynamic non-batch axis when no example shows one.
DEFAULT_AXIS_LENGTH = 8
#: Range of random integers when no example shows one: [0, 10).
DEFAULT_INT_HIGH = 10

Progress = Callable[[str], None]


class ParityError(Exception):
    """The converted model's outputs differ from the original's beyond the tolerance.

    Attributes:
        report: the parity figures.
    """

    def __init__(self, report: ParityReport) -> None:
        super().__init__("the converted model differs from the original beyond the tolerance:\n" + report.table())
        self.report = report


class ExportFormat(StrEnum):
    """What a model is exported to: ONNX (served by ONNX Runtime) or its own framework's format."""

    ONNX = "onnx"
    NATIVE = "native"


@dataclass(frozen=True)
class ConversionResult:
    """A converted model in its version folder.

    Attributes:
        version_dir: folder holding the artifact and (when checked) ``parity.json``.
        backend: the gateway backend that serves the artifact (``onnxruntime``, ``torch``, ``tensorflow``).
        input_specs: the model's inputs.
        output_specs: the model's outputs, in order, described as inputs are: dtype and dims
            (a label for a dynamic dim, ``?`` where the artifact does not say).
        parity: the parity figures, or None for a source without a reference (an ONNX file).
        quantization: the price of the compression (int8, fp16, optimization), or None without one.
    """

    version_dir: Path
    backend: str
    input_specs: list[InputSpec]
    output_specs: list[InputSpec]
    parity: ParityReport | None
    quantization: QuantizationReport | None = None


def _axis_lengths(specs: Sequence[InputSpec], examples: Mapping[str, np.ndarray] | None) -> dict[str, int]:
    """Per dynamic label, the length the examples show (the largest), else a default."""
    lengths: dict[str, int] = {}
    for spec in specs:
        for axis, label in spec.dynamic_axes().items():
            if examples is not None and spec.name in examples:
                lengths[label] = max(lengths.get(label, 1), int(np.shape(examples[spec.name])[axis]))
            else:
                lengths.setdefault(label, 2 if label == BATCH_LABEL else DEFAULT_AXIS_LENGTH)
    return lengths


def _random_values(
    spec: InputSpec, shape: tuple[int, ...], example: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Random values of the spec's dtype, within the range the example shows (if any)."""
    kind = spec.dtype.kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(spec.dtype)
    if kind in "iu":
        low, high = (
            (int(example.min()), int(example.max()))
            if example is not None and example.size
            else (0, DEFAULT_INT_HIGH - 1)
        )
        return rng.integers(low, high + 1, size=shape).astype(spec.dtype)
    if kind == "f":
        if example is not None and example.size and np.isfinite(example).all():
            bottom, top = float(example.min()), float(example.max())
            if bottom == top:
                bottom, top = bottom - 1.0, top + 1.0
            return rng.uniform(bottom, top, size=shape).astype(spec.dtype)
        return rng.standard_normal(size=shape).astype(spec.dtype)
    raise ConversionError(
        f"input {spec.name!r} has dtype {spec.dtype}; random inputs are drawn for bool, int and float only"
    )


def random_batches(
    specs: Sequence[InputSpec],
    examples: Mapping[str, np.ndarray] | None,
    count: int = 16,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Random input batches drawn from the input specs, varying every dynamic axis.

    The batch axis takes the sizes of :data:`RANDOM_BATCH_SIZES` in turn; every other dynamic axis
    takes lengths spread from half to twice the length the examples show (:data:`DEFAULT_AXIS_LENGTH`
    without examples), so each batch has a different shape. Inputs sharing a label share its length.
    Values are uniform within each example's range (floats and ints), standard normal floats and
    integers in [0, 10) without examples, or random bools.

    Args:
        specs: the model's inputs.
        examples: example arrays by input name, or None.
        count: number of batches.
        seed: seed of the random generator (the same seed gives the same batches).

    Returns:
        ``count`` dicts of one array per input spec.

    Raises:
        ConversionError: an input's dtype is not bool, int or float.
    """
    rng = np.random.default_rng(seed)
    base = _axis_lengths(specs, examples)
    batches: list[dict[str, np.ndarray]] = []
    for index in range(count):
        lengths: dict[str, int] = {}
        for label, length in base.items():
            if label == BATCH_LABEL:
                lengths[label] = RANDOM_BATCH_SIZES[index % len(RANDOM_BATCH_SIZES)]
            else:
                low, high = max(1, length // 2), max(2, 2 * length)
                lengths[label] = low + (index * 7) % (high - low + 1)
        batch: dict[str, np.ndarray] = {}
        for spec in specs:
            shape = tuple(lengths[dim] if isinstance(dim, str) else dim for dim in spec.dims)
            example = None if examples is None else examples.get(spec.name)
            batch[spec.name] = _random_values(spec, shape, example, rng)
        batches.append(batch)
    return batches


def example_from_specs(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """One random batch for sources that carry no examples: batch 2, other dynamic axes of length 8.

    Raises:
        ConversionError: an input's dtype is not bool, int or float.
    """
    rng = np.random.default_rng(seed)
    lengths = _axis_lengths(specs, None)
    return {
        spec.name: _random_values(spec, tuple(lengths[d] if isinstance(d, str) else d for d in spec.dims), None, rng)
        for spec in specs
    }


def _describe_shapes(batch: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in batch.items())


def parity_inputs(
    source: SourceModel, batches: int = 16, seed: int = 0, examples: Mapping[str, np.ndarray] | None = None
) -> list[dict[str, np.ndarray]]:
    """The input batches of the parity check: the examples (if any), then ``batches`` random batches.

    Args:
        source: the model.
        batches, seed: as :func:`random_batches`.
        examples: example arrays by input name; None: the source's own example inputs.

    Raises:
        ConversionError: an input's dtype is not bool, int or float.
    """
    examples = source.example_inputs if examples is None else examples
    return ([dict(examples)] if examples else []) + random_batches(source.input_specs, examples, batches, seed)


def _run_source(source: SourceModel, inputs: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The original model's outputs, batch by batch.

    Raises:
        ConversionError: the model fails on a batch (the message names the shapes).
    """
    outputs = []
    for batch in inputs:
        try:
            outputs.append(source.run(batch))
        except Exception as error:
            raise ConversionError(
                f"the original model failed on inputs {_describe_shapes(batch)}: {error}. The parity check "
                "draws random values within the example inputs' range: give examples whose values and shapes "
                "are typical"
            ) from error
    return outputs


def _run_candidate(
    candidate: Backend, inputs: Sequence[Mapping[str, np.ndarray]], output_names: Sequence[str], runtime: str
) -> list[dict[str, np.ndarray]]:
    """The converted model's outputs, batch by batch.

    Raises:
        ConversionError: the runtime fails on a batch (the message names the shapes).
    """
    outputs = []
    for batch in inputs:
        try:
            outputs.append(candidate.run(batch, output_names))
        except Exception as error:
            raise ConversionError(
                f"{runtime} failed on the converted model with inputs {_describe_shapes(batch)}: {error}"
            ) from error
    return outputs


def _check_names(source: SourceModel, candidate: Backend) -> None:
    """Raise ConversionError unless the candidate's inputs and outputs are named as the source's."""
    input_names = sorted(spec.name for spec in candidate.inputs)
    output_names = [spec.name for spec in candidate.outputs]
    if input_names != sorted(spec.name for spec in source.input_specs) or sorted(output_names) != sorted(
        source.output_names
    ):
        raise ConversionError(
            f"the exported model takes {input_names} and returns {output_names}, but the original takes "
            f"{sorted(spec.name for spec in source.input_specs)} and returns {source.output_names}"
        )


def convert_model(
    source: SourceModel,
    version_dir: Path,
    *,
    export_format: ExportFormat = ExportFormat.ONNX,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batches: int = 16,
    compression: CompressionOptions | None = None,
    max_batch_size: int = 64,
    progress: Progress | None = None,
) -> ConversionResult:
    """Export ``source`` into ``version_dir``, check parity with the gateway's backend, write ``parity.json``.

    With ``compression`` (int8, fp16, offline optimization; ONNX only), the fp32 export is checked
    first, then compressed in place and its price measured against the original model on the same
    parity inputs (:func:`converters.quantization.compress_model`), stored as ``quantization.json``.
    An ONNX file has no original model: its compression is measured against the fp32 file, run by
    ONNX Runtime, on random batches drawn from its input specs, within the range of the user's
    calibration or eval data when given.

    Args:
        source: the model to convert.
        version_dir: the folder to write into (created if missing); meant to be a staging folder.
        export_format: ``onnx`` (``model.onnx``, served by ONNX Runtime) or ``native`` (the source's
            own format, served by its framework: ``model.pt2`` for torch, ``model.savedmodel/`` for
            Keras, TensorFlow and JAX).
        atol, rtol: parity tolerances, ``|converted - original| <= atol + rtol * |original|``.
        batches: number of random batches besides the examples (at least 16 recommended).
        compression: what to do to the exported ONNX model, and the limits it must meet; None: nothing.
        max_batch_size: the gateway's max_batch_size for the model: the compression's latency is
            measured at it, and its calibration and eval data run in batches of that many rows.
        progress: called with a line of text before each long step.

    Returns:
        The result; ``parity`` is None when the source has no reference (an ONNX file).

    Raises:
        ConversionError: the export fails, the backend cannot load what was exported, a model
            fails to run on a parity batch, or compression is asked with the native format.
        ParityError: outputs differ beyond the tolerance (nothing is wrong with the files written,
            but they must not be served).
        QuantizationError: the compression data cannot be used, or a compression step fails.
        GuardError: the compressed model does not meet its limits (it must not be served).
    """
    report = progress or (lambda _: None)
    if compression is not None and not compression.active:
        compression = None
    if compression is not None and export_format is not ExportFormat.ONNX:
        raise ConversionError(
            "--quantize, --precision and --optimize compress ONNX models, served by ONNX Runtime: "
            "leave out --format native"
        )
    data = None if compression is None else load_compression_data(compression, source.input_specs, max_batch_size)
    version_dir.mkdir(parents=True, exist_ok=True)
    if export_format is ExportFormat.ONNX:
        report(f"exporting the {source.framework} model to ONNX")
        source.export_onnx(version_dir / MODEL_FILE)
    else:
        report(f"exporting the {source.framework} model natively, for the gateway's {source.native_backend} backend")
        source.export_native(version_dir)
    try:
        backend_name = detect_backend(version_dir)
    except ModelLoadError as error:
        raise ConversionError(f"the export wrote no servable model: {error}") from None
    if not source.has_reference and data is None:
        return ConversionResult(
            version_dir, backend_name, source.input_specs, _onnx_output_specs(version_dir / MODEL_FILE), None
        )
    runtime = BACKEND_RUNTIMES[backend_name]
    try:
        candidate = create_backend(backend_name, version_dir)
    except ModelLoadError as error:
        raise ConversionError(f"{runtime} cannot load the exported model: {error}") from None
    _check_names(source, candidate)
    inputs = parity_inputs(source, batches, examples=_user_examples(source, data))
    parity = None
    if source.has_reference:
        report(f"checking parity with {runtime} on {len(inputs)} input batches")
        reference = _run_source(source, inputs)
        parity = compare_outputs(
            reference, _run_candidate(candidate, inputs, source.output_names, runtime), atol=atol, rtol=rtol
        )
        write_parity_file(version_dir, parity)
        if not parity.ok:
            raise ParityError(parity)
    quantization = None
    if compression is not None and data is not None:
        if source.has_reference:
            description = f"the original {source.framework} model"

            def run_reference(more: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
                return _run_source(source, more)
        else:
            description = "the fp32 ONNX model (ONNX Runtime)"
            reference = _run_candidate(candidate, inputs, source.output_names, runtime)

            def run_reference(more: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
                return _run_candidate(candidate, more, source.output_names, runtime)

        quantization = compress_model(
            version_dir,
            compression,
            data,
            Reference(description, source.input_specs, source.output_names, inputs, reference, run_reference),
            max_batch_size=max_batch_size,
            progress=report,
        )
        write_quantization_file(version_dir, quantization)
    if backend_name == "onnxruntime":
        output_specs = _onnx_output_specs(version_dir / MODEL_FILE)
    else:
        output_specs = _labelled_output_specs(candidate, source.input_specs)
    return ConversionResult(version_dir, backend_name, source.input_specs, output_specs, parity, quantization)


def _user_examples(source: SourceModel, data: CompressionData | None) -> dict[str, np.ndarray] | None:
    """For a source without example inputs (an ONNX file), the first batch of the user's calibration or eval data.

    Random parity batches are then drawn within the range of the user's own data instead of a
    standard normal, which may lie far from what the model is made for.
    """
    if source.example_inputs or data is None:
        return None
    batches = data.calibration or list(data.eval_inputs)
    return batches[0] if batches else None


def _onnx_output_specs(model_path: Path) -> list[InputSpec]:
    """The outputs of an ONNX file with the graph's dims (symbol names for dynamic dims, ``?`` where unknown)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [
        InputSpec(
            value.name,
            np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)),
            tuple(graph_dims(value)),
        )
        for value in model.graph.output
    ]


def _labelled_output_specs(backend: Backend, input_specs: Sequence[InputSpec]) -> list[InputSpec]:
    """A backend's outputs, dynamic dims labelled ``batch`` at dim 0 when every input has a batch dim, else ``?``."""
    batched = bool(input_specs) and all(spec.dims[:1] == (BATCH_LABEL,) for spec in input_specs)
    return [
        InputSpec(
            spec.name,
            spec.dtype,
            tuple(
                size if size >= 0 else BATCH_LABEL if axis == 0 and batched else "?"
                for axis, size in enumerate(spec.shape)
            ),
        )
        for spec in backend.outputs
    ]
