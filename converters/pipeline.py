"""Convert a source model to ONNX and prove the conversion is faithful.

:func:`convert_to_onnx` exports a :class:`~converters.model.SourceModel` into a version folder
(``model.onnx``), runs the original model and ONNX Runtime on the example inputs and on random
batches drawn from the input specs (several batch sizes and several lengths along every dynamic
axis), and compares them (:mod:`converters.parity`). The report is written beside the model as
``parity.json`` so the server can show it in the model's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import BATCH_LABEL, ConversionError, InputSpec, SourceModel
from converters.parity import ParityReport, compare_outputs

__all__ = [
    "MODEL_FILE",
    "PARITY_FILE",
    "ConversionResult",
    "ParityError",
    "convert_to_onnx",
    "example_from_specs",
    "random_batches",
]

MODEL_FILE = "model.onnx"
PARITY_FILE = "parity.json"

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


@dataclass(frozen=True)
class ConversionResult:
    """A converted model in its version folder.

    Attributes:
        version_dir: folder holding ``model.onnx`` and (when checked) ``parity.json``.
        input_specs: the model's inputs.
        output_names: the model's outputs, in order.
        parity: the parity figures, or None for a source without a reference (an ONNX file).
    """

    version_dir: Path
    input_specs: list[InputSpec]
    output_names: list[str]
    parity: ParityReport | None


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


def check_parity(
    source: SourceModel,
    model_path: Path,
    *,
    atol: float,
    rtol: float,
    batches: int = 16,
    seed: int = 0,
) -> ParityReport:
    """Compare the source model with ONNX Runtime (CPU) running ``model_path``.

    Runs the example inputs (if any) and ``batches`` random batches (:func:`random_batches`).

    Raises:
        ConversionError: the original model or ONNX Runtime fails on a batch (the message names
            the shapes), or their output names differ.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inputs = ([dict(source.example_inputs)] if source.example_inputs else []) + random_batches(
        source.input_specs, source.example_inputs, batches, seed
    )
    reference: list[dict[str, np.ndarray]] = []
    candidate: list[dict[str, np.ndarray]] = []
    for batch in inputs:
        try:
            reference.append(source.run(batch))
        except Exception as error:
            raise ConversionError(
                f"the original model failed on random inputs ({_describe_shapes(batch)}): {error}. "
                "Give example inputs whose values and shapes are typical (random values are drawn "
                "within their range)"
            ) from error
        try:
            values = session.run(source.output_names, batch)
        except Exception as error:
            raise ConversionError(
                f"ONNX Runtime failed on the converted model with inputs {_describe_shapes(batch)}: {error}"
            ) from error
        candidate.append(dict(zip(source.output_names, (np.asarray(v) for v in values), strict=True)))
    return compare_outputs(reference, candidate, atol=atol, rtol=rtol)


def parity_to_json(report: ParityReport) -> dict[str, Any]:
    """The report as JSON-ready values (infinite errors become null)."""

    def number(value: float) -> float | None:
        return value if np.isfinite(value) else None

    return {
        "atol": report.atol,
        "rtol": report.rtol,
        "passed": report.ok,
        "outputs": [
            {
                "name": output.name,
                "max_abs_error": number(output.max_abs_error),
                "max_rel_error": number(output.max_rel_error),
                "inputs_tried": output.inputs_tried,
                "within_tolerance": output.within_tolerance,
            }
            for output in report.outputs
        ],
    }


def convert_to_onnx(
    source: SourceModel,
    version_dir: Path,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    batches: int = 16,
    progress: Progress | None = None,
) -> ConversionResult:
    """Export ``source`` to ``version_dir/model.onnx``, check parity, and write ``parity.json``.

    Args:
        source: the model to convert.
        version_dir: the folder to write into (created if missing); meant to be a staging folder.
        atol, rtol: parity tolerances, ``|onnx - original| <= atol + rtol * |original|``.
        batches: number of random batches besides the examples (at least 16 recommended).
        progress: called with a line of text before each long step.

    Returns:
        The result; ``parity`` is None when the source has no reference (an ONNX file).

    Raises:
        ConversionError: the export fails, or a model fails to run on a parity batch.
        ParityError: outputs differ beyond the tolerance (nothing is wrong with the files written,
            but they must not be served).
    """
    report = progress or (lambda _: None)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / MODEL_FILE
    report(f"exporting the {source.framework} model to ONNX")
    source.export_onnx(model_path)
    if not source.has_reference:
        return ConversionResult(version_dir, source.input_specs, source.output_names, None)
    tried = batches + (1 if source.example_inputs else 0)
    report(f"checking parity with ONNX Runtime on {tried} input batches")
    parity = check_parity(source, model_path, atol=atol, rtol=rtol, batches=batches)
    (version_dir / PARITY_FILE).write_text(json.dumps(parity_to_json(parity), indent=2) + "\n")
    if not parity.ok:
        raise ParityError(parity)
    return ConversionResult(version_dir, source.input_specs, source.output_names, parity)
