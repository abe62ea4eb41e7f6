"""Make a converted ONNX model smaller or faster at push time, and measure what it costs.

:func:`compress_model` takes the fp32 ONNX model a push exported (and proved faithful) and applies,
with ONNX Runtime's own tools:

- **int8** (``quantize="int8"``): ONNX Runtime's quantization pre-processing (``quant_pre_process``:
  shape inference and basic graph optimizations), then **dynamic** quantization by default
  (``quantize_dynamic``: int8 weights, activations quantized at run time; QOperator format,
  ``MatMulInteger`` / ``ConvInteger``; Gemm is turned into MatMul + Add first), or **static**
  quantization when calibration data is given (``quantize_static``: activation ranges calibrated
  with MinMax on the user's batches; QDQ format, int8 activations and weights). Weights are
  quantized per output channel or per tensor as asked; when not asked, both models are made and the
  one whose outputs are closer to the reference on the parity inputs is kept (lower mean abs error,
  summed over the outputs; a tie keeps per-tensor).
- **fp16** (``precision="fp16"``): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  its default operator block list, inputs and outputs kept in their original dtypes unless
  ``fp16_io``. fp16 targets the CUDA provider; on a machine without it ONNX Runtime still runs the
  model on the CPU, inserting fp32 casts around every fp16 operator it has no CPU kernel for, so the
  figures are measured there and the operators run in fp32 are named (``fp32_operators``).
- **optimize**: ONNX Runtime's offline graph optimizations at level ``extended`` (fusions, without
  the hardware-specific layout changes of level ``all``), saved with ``SessionOptions.optimized_model_filepath``
  by a session on this machine's providers. The saved graph may use ONNX Runtime's contrib operators
  (``com.microsoft`` domain). With fp16 it needs the CUDA provider here: the CPU's inserted casts
  would be saved into the model.

Then the price is measured (:class:`~converters.quantization_report.QuantizationReport`): on the parity
inputs, and on the user's eval data when given, the max and mean abs error of every output against the
reference (the original framework model, or the fp32 ONNX model for an ONNX file pushed as it is),
argmax agreement for classifier outputs, and accuracy before and after when the eval data has labels;
the ONNX file's bytes before and after; and the median latency of :data:`LATENCY_RUNS` calls at batch 1
and at the gateway's max_batch_size, each model in its own ONNX Runtime session with
:data:`LATENCY_THREADS` intra-op thread, calls of the two models interleaved so that load on the
machine touches both alike. The compressed model is loaded by the gateway's own ONNX Runtime backend,
as the server will load it.

**The guard.** A model over ``max_accuracy_drop`` (points of accuracy on the eval data) or
``max_abs_error`` (on any output, parity inputs and eval data) raises :class:`GuardError`, which names
each figure over its limit, by how much, and the operator types that contribute most (see
:class:`GuardError` for how they are found).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from backends import Backend, ModelLoadError, create_backend
from backends.onnxruntime import ARTIFACT as MODEL_FILE
from backends.onnxruntime import OnnxRuntimeOptions, select_providers
from converters.model import InputSpec
from converters.onnx_graph import drop_ignored_gemm_bias, save_onnx
from converters.quantization_report import (
    Accuracy,
    Compression,
    DataFigures,
    Guard,
    LatencyFigures,
    OutputError,
    QuantizationReport,
)
from converters.sources import resolve_entry_point

__all__ = [
    "LABELS",
    "LATENCY_RUNS",
    "LATENCY_THREADS",
    "CompressionData",
    "CompressionOptions",
    "GuardError",
    "OperatorContribution",
    "QuantizationError",
    "Reference",
    "compress_model",
    "load_compression_data",
]

#: Timed calls per model and batch size; the latency figure is their median.
LATENCY_RUNS = 50
#: Untimed calls per model and batch size before the timed ones.
LATENCY_WARMUP_RUNS = 5
#: ONNX Runtime intra-op threads of the timed sessions: one core's work, whatever else the machine runs.
LATENCY_THREADS = 1
#: The array of an eval data ``.npz`` holding the labels (class indices, one per row).
LABELS = "labels"
#: Operator types named by a guard failure, at most.
TOP_OPERATORS = 3

#: Calibration data: a ``.npz`` path, an entry point, or batches (one dict of arrays per input name each).
CalibrationData = str | Path | Iterable[Mapping[str, npt.ArrayLike]]
#: Eval data: a ``.npz`` path, or the arrays themselves (one per input name, plus ``labels``).
EvalData = str | Path | Mapping[str, npt.ArrayLike]
Progress = Callable[[str], None]
Batch = dict[str, np.ndarray]


class QuantizationError(Exception):
    """The model cannot be compressed or measured, or the data given for it cannot be used; the message says why."""


@dataclass(frozen=True)
class OperatorContribution:
    """The error of a model in which only one operator type is compressed (see :class:`GuardError`).

    Attributes:
        op_type: the ONNX operator type (e.g. ``MatMul``).
        max_abs_error: the largest abs error over the outputs, parity inputs and eval data.
        accuracy_drop: accuracy lost on the eval data in points, when it has labels; else None.
    """

    op_type: str
    max_abs_error: float
    accuracy_drop: float | None

    def describe(self) -> str:
        """E.g. ``MatMul (max abs error 3.926e-01, accuracy drop 2.50 points)``."""
        drop = "" if self.accuracy_drop is None else f", accuracy drop {self.accuracy_drop:.2f} points"
        return f"{self.op_type} (max abs error {self.max_abs_error:.3e}{drop})"


class GuardError(QuantizationError):
    """The compressed model is over a limit (``max_accuracy_drop``, ``max_abs_error``): it must not be published.

    The message names each figure over its limit and by how much, then the operator types the error
    comes from. They are found by compressing the model again once per operator type of the original
    graph that the compression handles (int8 dynamic: ONNX Runtime's integer-op registry, Gemm counted
    as MatMul, as its quantizer turns Gemm into MatMul + Add; int8 static: its QDQ registry; fp16:
    every type not in the converter's block list), with only that type compressed and the same
    settings (``op_types_to_quantize``; for fp16, every other type in the block list), and measuring
    each such model on the same data. The types are ranked by accuracy drop when the accuracy limit
    failed, else by max abs error; the first :data:`TOP_OPERATORS` with an error are named. An
    optimization alone names none.

    Attributes:
        report: the figures measured, with the failures in ``report.guard``.
        contributions: the operator types contributing most, largest first (may be empty).
    """

    def __init__(self, report: QuantizationReport, contributions: Sequence[OperatorContribution]) -> None:
        lines = ["the compressed model does not meet the guard:", *(f"  {f}" for f in report.guard.failures)]
        if contributions:
            lines.append(
                "the error comes mostly from these operator types (each compressed alone): "
                + "; ".join(item.describe() for item in contributions)
            )
        else:
            lines.append("no single operator type could be singled out")
        super().__init__("\n".join([*lines, report.table()]))
        self.report = report
        self.contributions = list(contributions)


@dataclass(frozen=True)
class CompressionOptions:
    """What to do to the model at push, and the limits it must meet (``gateway push`` options).

    Attributes:
        quantize: ``"int8"`` or None.
        precision: ``"fp16"`` or None (the model's own, fp32).
        calibration_data: for static int8: a ``.npz`` file (one array per input name, ``[rows, ...]``,
            run in batches of max_batch_size rows), an entry point ``file.py:function`` or
            ``package.module:function`` whose function returns an iterable (e.g. a generator) of
            dicts of arrays, one dict per batch, or such an iterable itself. None: dynamic int8.
        per_channel: int8 weights per output channel (True) or per tensor (False); None: measure both.
        fp16_io: with fp16, take and return fp16 tensors instead of the model's original dtypes.
        optimize: save ONNX Runtime's offline graph optimizations (level extended) in the model.
        eval_data: a ``.npz`` file (or the arrays) with one array per input name and optionally
            :data:`LABELS`, int class indices ``[rows]``: the errors, argmax agreement and accuracy
            are measured on it too.
        max_accuracy_drop: the most accuracy the compression may cost on the eval data, in
            percentage points (needs labels); None: no limit.
        max_abs_error: the largest abs error allowed on any output; None: no limit.

    Raises (from the constructor):
        ValueError: options that do not go together, named as on the command line (e.g.
            ``--max-accuracy-drop`` without ``--eval-data``), or a negative limit.
    """

    quantize: str | None = None
    precision: str | None = None
    calibration_data: CalibrationData | None = None
    per_channel: bool | None = None
    fp16_io: bool = False
    optimize: bool = False
    eval_data: EvalData | None = None
    max_accuracy_drop: float | None = None
    max_abs_error: float | None = None

    def __post_init__(self) -> None:
        if self.quantize not in (None, "int8"):
            raise ValueError(f"--quantize {self.quantize}: the only quantization is int8")
        if self.precision not in (None, "fp16"):
            raise ValueError(f"--precision {self.precision}: the only precision to convert to is fp16")
        if self.quantize is not None and self.precision is not None:
            raise ValueError("--quantize int8 and --precision fp16 are alternatives: give one")
        if self.quantize is None and (self.calibration_data is not None or self.per_channel is not None):
            raise ValueError("--calibration-data and --per-channel/--per-tensor apply to --quantize int8: give it too")
        if self.fp16_io and self.precision != "fp16":
            raise ValueError("--fp16-io applies to --precision fp16: give it too")
        measured = self.eval_data is not None or self.max_accuracy_drop is not None or self.max_abs_error is not None
        if measured and not self.active:
            raise ValueError(
                "--eval-data, --max-accuracy-drop and --max-abs-error measure a compressed model: "
                "give --quantize int8, --precision fp16 or --optimize"
            )
        if self.max_accuracy_drop is not None and self.eval_data is None:
            raise ValueError(
                f"--max-accuracy-drop needs labelled data: give --eval-data FILE (.npz with the inputs and '{LABELS}')"
            )
        for flag, limit in (("--max-accuracy-drop", self.max_accuracy_drop), ("--max-abs-error", self.max_abs_error)):
            if limit is not None and not limit >= 0:
                raise ValueError(f"{flag} must be a number >= 0, got {limit}")

    @property
    def active(self) -> bool:
        """Whether anything is to be done to the model (int8, fp16 or optimization)."""
        return self.quantize is not None or self.precision is not None or self.optimize


@dataclass(frozen=True)
class CompressionData:
    """The user's data for a compression, checked against the model's inputs.

    Attributes:
        calibration: calibration batches (static int8), or None.
        eval_inputs: eval data batches (empty without eval data).
        eval_labels: class indices, one per eval row, or None.
    """

    calibration: list[Batch] | None = None
    eval_inputs: tuple[Batch, ...] = ()
    eval_labels: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class Reference:
    """What the compressed model is compared with.

    Attributes:
        description: for the report, e.g. ``the original torch model``.
        input_specs: the model's inputs.
        output_names: the model's outputs, in order.
        inputs: the parity inputs (one dict of arrays per batch).
        outputs: the reference's outputs on them.
        run: runs the reference on more batches (the eval data), one dict of outputs per batch.
    """

    description: str
    input_specs: list[InputSpec]
    output_names: list[str]
    inputs: list[Batch]
    outputs: list[Batch]
    run: Callable[[Sequence[Batch]], list[Batch]]


# ----------------------------------------------------------------------------- the user's data


def load_compression_data(options: CompressionOptions, specs: Sequence[InputSpec], batch_size: int) -> CompressionData:
    """Read and check the calibration and eval data the options name, before anything is converted.

    Arrays are checked against the input specs (every input present and no other, rank, fixed dims,
    equal lengths along dims sharing a label) and cast to the inputs' dtypes (a float input takes
    float or integer arrays, an integer input integer or bool ones). ``.npz`` files are read without
    pickle and split into batches of ``batch_size`` rows.

    Raises:
        QuantizationError: a file that cannot be read, an entry point that cannot be called or yields
            something else than dicts of arrays, arrays that do not fit the inputs, labels that are
            not one integer per row, or ``max_accuracy_drop`` with eval data that has no labels.
    """
    calibration = None
    if options.calibration_data is not None:
        calibration = _calibration_batches(options.calibration_data, specs, batch_size)
    if options.eval_data is None:
        return CompressionData(calibration)
    data = options.eval_data
    arrays = _read_npz(Path(data)) if isinstance(data, str | Path) else {k: np.asarray(v) for k, v in data.items()}
    labels = arrays.pop(LABELS, None)
    inputs = _conform(arrays, specs, "the eval data")
    rows = len(next(iter(inputs.values())))
    if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != rows):
        raise QuantizationError(
            f"the eval data's '{LABELS}' must be one integer class index per row ({rows} rows), got "
            f"{labels.dtype} {list(labels.shape)}"
        )
    if labels is None and options.max_accuracy_drop is not None:
        raise QuantizationError(f"--max-accuracy-drop needs labels, and the eval data has no '{LABELS}' array")
    return CompressionData(
        calibration,
        tuple(_split(inputs, batch_size)),
        None if labels is None else labels.astype(np.int64),
    )


def _calibration_batches(data: CalibrationData, specs: Sequence[InputSpec], batch_size: int) -> list[Batch]:
    """The calibration batches of a ``.npz`` file, an entry point's iterable, or an iterable."""
    if isinstance(data, str | Path) and str(data).endswith(".npz"):
        return _split(_conform(_read_npz(Path(data)), specs, "the calibration data"), batch_size)
    if isinstance(data, str | Path):
        try:
            data = resolve_entry_point(str(data))()
        except ValueError as error:
            raise QuantizationError(f"--calibration-data {data}: a .npz file or an entry point; {error}") from None
    try:
        items = list(data)  # type: ignore[arg-type]  # checked below: whatever the entry point returned
    except TypeError:
        raise QuantizationError(f"the calibration entry point returned a {type(data).__name__}, not batches") from None
    batches = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise QuantizationError(
                f"calibration batch {index} is a {type(item).__name__}; expected a dict of arrays by input name"
            )
        batches.append(_conform({str(k): np.asarray(v) for k, v in item.items()}, specs, f"calibration batch {index}"))
    if not batches:
        raise QuantizationError("the calibration data holds no batches")
    return batches


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read without pickle."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise QuantizationError(f"cannot read {path} as a .npz file of arrays: {error}") from None


_ACCEPTED_KINDS = {"f": "fiu", "i": "iub", "u": "iub", "b": "b"}


def _conform(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], what: str) -> Batch:
    """The arrays, one per input spec, checked against the specs and cast to their dtypes."""
    names = [spec.name for spec in specs]
    missing = [name for name in names if name not in arrays]
    unknown = sorted(set(arrays) - set(names))
    if missing or unknown:
        raise QuantizationError(
            f"{what} must hold one array per model input {names}: missing {missing}, not inputs {unknown}"
        )
    lengths: dict[str, int] = {}
    batch: Batch = {}
    for spec in specs:
        array = np.asarray(arrays[spec.name])
        if array.dtype.kind not in _ACCEPTED_KINDS.get(spec.dtype.kind, spec.dtype.kind):
            raise QuantizationError(f"{what}: input {spec.name!r} is {array.dtype}, the model takes {spec.dtype}")
        if array.ndim != len(spec.dims):
            raise QuantizationError(
                f"{what}: input {spec.name!r} has shape {list(array.shape)}, the model takes "
                f"[{', '.join(str(dim) for dim in spec.dims)}]"
            )
        for axis, (dim, size) in enumerate(zip(spec.dims, array.shape, strict=True)):
            expected = dim if isinstance(dim, int) else lengths.setdefault(dim, size)
            if size != expected:
                raise QuantizationError(
                    f"{what}: input {spec.name!r} has length {size} along axis {axis}, where the model "
                    f"takes {expected} ({dim})"
                )
        batch[spec.name] = array.astype(spec.dtype, copy=False)
    return batch


def _split(arrays: Batch, batch_size: int) -> list[Batch]:
    """Rows of arrays sharing their first dim, in batches of ``batch_size`` rows."""
    rows = len(next(iter(arrays.values())))
    return [
        {name: array[start : start + batch_size] for name, array in arrays.items()}
        for start in range(0, rows, batch_size)
    ]


class _CalibrationReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime has no type hints
    """ONNX Runtime's calibration data reader over a list of batches."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> Batch | None:
        """The next batch, or None after the last."""
        return next(self._batches, None)


# ----------------------------------------------------------------------------- running and measuring


def _load(folder: Path, what: str, threads: int = 0) -> Backend:
    """The gateway's ONNX Runtime backend over ``folder/model.onnx`` (default providers: CUDA where available, CPU)."""
    try:
        return create_backend("onnxruntime", folder, cpu_threads=threads)
    except ModelLoadError as error:
        raise QuantizationError(f"ONNX Runtime cannot load the {what} model: {error}") from None


def _feeds(backend: Backend, batch: Mapping[str, np.ndarray]) -> Batch:
    """The batch in the dtypes the backend's inputs take (fp16 inputs of an fp16-io model)."""
    return {spec.name: np.asarray(batch[spec.name], dtype=spec.dtype) for spec in backend.inputs}


def _run(backend: Backend, batches: Sequence[Batch], output_names: Sequence[str], what: str) -> list[Batch]:
    results = []
    for batch in batches:
        try:
            results.append(backend.run(_feeds(backend, batch), output_names))
        except Exception as error:  # ONNX Runtime raises its own types for every failure
            shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in batch.items())
            raise QuantizationError(f"ONNX Runtime failed on the {what} model with inputs {shapes}: {error}") from error
    return results


def _output_errors(reference: Sequence[Batch], candidate: Sequence[Batch], names: Sequence[str]) -> list[OutputError]:
    """Max and mean abs error and argmax agreement of each output over every batch."""
    errors = []
    for name in names:
        largest, total, count, agreeing, rows, scores = 0.0, 0.0, 0, 0, 0, True
        for ref_batch, cand_batch in zip(reference, candidate, strict=True):
            ref = np.asarray(ref_batch[name], dtype=np.float64)
            cand = np.asarray(cand_batch[name], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(cand - ref)
            diff[np.isnan(cand) & np.isnan(ref)] = 0.0
            diff[np.isnan(diff)] = np.inf
            if diff.size:
                largest = max(largest, float(diff.max()))
                total += float(diff.sum())
                count += diff.size
            scores = scores and _is_scores(np.asarray(ref_batch[name]))
            if scores:
                agreeing += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
                rows += len(ref)
        mean = total / count if count else 0.0
        errors.append(OutputError(name, largest, mean, agreeing / rows if scores and rows else None))
    return errors


def _is_scores(array: np.ndarray) -> bool:
    """A classifier's scores: a 2-D float array with at least two columns."""
    return array.ndim == 2 and array.dtype.kind == "f" and array.shape[1] >= 2


def _items(batches: Sequence[Batch]) -> int:
    return sum(len(next(iter(batch.values()))) if batch else 0 for batch in batches)


class _Measurement:
    """Runs compressed models on the parity inputs and the eval data and measures them against the reference."""

    def __init__(self, reference: Reference, data: CompressionData) -> None:
        self.reference = reference
        self.data = data
        self._eval_reference: list[Batch] | None = None

    def eval_reference(self) -> list[Batch]:
        """The reference's outputs on the eval data (run once)."""
        if self._eval_reference is None:
            self._eval_reference = self.reference.run(self.data.eval_inputs)
        return self._eval_reference

    def figures(self, backend: Backend, what: str) -> list[DataFigures]:
        """The figures of ``backend``'s model: parity inputs, then eval data when given."""
        names = self.reference.output_names
        outputs = _run(backend, self.reference.inputs, names, what)
        figures = [
            DataFigures(
                "parity inputs",
                len(outputs),
                _items(self.reference.inputs),
                _output_errors(self.reference.outputs, outputs, names),
            )
        ]
        if self.data.eval_inputs:
            reference = self.eval_reference()
            candidate = _run(backend, list(self.data.eval_inputs), names, what)
            figures.append(
                DataFigures(
                    "eval data",
                    len(candidate),
                    _items(self.data.eval_inputs),
                    _output_errors(reference, candidate, names),
                    self._accuracy(reference, candidate),
                )
            )
        return figures

    def _accuracy(self, reference: Sequence[Batch], candidate: Sequence[Batch]) -> Accuracy | None:
        labels = self.data.eval_labels
        if labels is None:
            return None
        output = next((name for name in self.reference.output_names if _is_scores(reference[0][name])), None)
        if output is None:
            raise QuantizationError(
                f"the eval data has '{LABELS}', but no output of the model is a classifier's scores (a 2-D float "
                "output, [batch, classes]) to compare them with"
            )

        def accuracy(batches: Sequence[Batch]) -> float:
            predicted = np.concatenate([np.asarray(batch[output]).argmax(axis=1) for batch in batches])
            return float((predicted == labels).mean())

        return Accuracy(output, accuracy(reference), accuracy(candidate))

    def mean_abs_error(self, folder: Path, what: str) -> float:
        """The mean abs errors of a model's outputs on the parity inputs, added up over the outputs."""
        outputs = _run(_load(folder, what), self.reference.inputs, self.reference.output_names, what)
        return sum(
            error.mean_abs_error
            for error in _output_errors(self.reference.outputs, outputs, self.reference.output_names)
        )


def _latency(
    before: Backend, after: Backend, sample: Batch, batch_sizes: Sequence[int], output_names: Sequence[str]
) -> list[LatencyFigures]:
    """Median call time of both models at each batch size (rows of ``sample`` repeated), calls interleaved."""
    results = []
    for size in batch_sizes:
        batch = {name: np.take(array, np.arange(size) % len(array), axis=0) for name, array in sample.items()}
        runs: list[tuple[Backend, Batch, list[float]]] = [
            (before, _feeds(before, batch), []),
            (after, _feeds(after, batch), []),
        ]
        for index in range(LATENCY_WARMUP_RUNS + LATENCY_RUNS):
            for backend, feeds, times in runs:
                started = time.perf_counter()
                backend.run(feeds, output_names)
                if index >= LATENCY_WARMUP_RUNS:
                    times.append(time.perf_counter() - started)
        results.append(LatencyFigures(size, statistics.median(runs[0][2]) * 1e3, statistics.median(runs[1][2]) * 1e3))
    return results


def _latency_batch_sizes(specs: Sequence[InputSpec], sample: Batch, max_batch_size: int) -> list[int]:
    """1 and ``max_batch_size`` when every input's dim 0 is the same dynamic label; else the sample's own batch."""
    labels = {spec.dims[0] if spec.dims else None for spec in specs}
    if len(labels) == 1 and isinstance(next(iter(labels)), str):
        return sorted({1, max(1, max_batch_size)})
    return [len(next(iter(sample.values())))]


def _guard(options: CompressionOptions, figures: Sequence[DataFigures]) -> Guard:
    """The figures over the options' limits, each as a sentence."""
    failures = []
    if options.max_abs_error is not None:
        worst = max(figures, key=lambda item: item.max_abs_error)
        if not worst.max_abs_error <= options.max_abs_error:
            failures.append(
                f"max abs error {worst.max_abs_error:.3e} on the {worst.name} is over --max-abs-error "
                f"{options.max_abs_error:g} by {worst.max_abs_error - options.max_abs_error:.3e}"
            )
    if options.max_accuracy_drop is not None:
        accuracy = next(item.accuracy for item in figures if item.accuracy is not None)
        if accuracy.drop_points > options.max_accuracy_drop:
            failures.append(
                f"accuracy drop {accuracy.drop_points:.2f} points on the eval data ({accuracy.before:.2%} -> "
                f"{accuracy.after:.2%}) is over --max-accuracy-drop {options.max_accuracy_drop:g} by "
                f"{accuracy.drop_points - options.max_accuracy_drop:.2f} points"
            )
    return Guard(options.max_accuracy_drop, options.max_abs_error, failures)


# ----------------------------------------------------------------------------- the compression steps


def _quantize_int8(
    model: Path,
    target: Path,
    calibration: Sequence[Batch] | None,
    per_channel: bool,
    op_types: Sequence[str] | None = None,
) -> None:
    """int8: dynamic (QOperator) without calibration, static (QDQ, MinMax) with it; ``op_types``: only these."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if calibration is None:
            quantize_dynamic(
                model, target, per_channel=per_channel, weight_type=QuantType.QInt8, op_types_to_quantize=op_types
            )
        else:
            quantize_static(
                model,
                target,
                _CalibrationReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                op_types_to_quantize=op_types,
            )
    except Exception as error:  # the quantization tools raise many types
        raise QuantizationError(f"ONNX Runtime's int8 quantization failed: {error}") from error


def _convert_fp16(model: Path, target: Path, keep_io_types: bool, op_block_list: Sequence[str] | None = None) -> None:
    """fp16 with onnxruntime.transformers' converter; operators in ``op_block_list`` stay fp32 (default: its list).

    The converter appends the casts it adds at the end of the node list; the graph is sorted again
    (onnxruntime.transformers' ``OnnxModel.topological_sort``), as ``onnx.checker`` requires.
    """
    try:
        converted = OnnxModel(
            convert_float_to_float16(
                onnx.load(str(model)),
                keep_io_types=keep_io_types,
                op_block_list=list(op_block_list) if op_block_list is not None else None,
            )
        )
        converted.topological_sort()
    except Exception as error:  # the converter raises many types
        raise QuantizationError(f"the fp16 conversion failed: {error}") from error
    save_onnx(converted.model, target)


#: Operator types that only a quantized model holds (QOperator and QDQ formats).
_QUANTIZED_OPS = frozenset(
    {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul"}
)


def _check_quantized(original: Path, quantized: Path) -> None:
    """Raise QuantizationError when the quantization tools quantized no operator of the model."""
    if not {node.op_type for node in onnx.load(str(quantized)).graph.node} & _QUANTIZED_OPS:
        types = sorted({node.op_type for node in onnx.load(str(original)).graph.node})
        raise QuantizationError(
            f"ONNX Runtime's int8 quantization found no operator to quantize among the model's {', '.join(types)}"
        )


def _session_providers() -> list[str]:
    """The providers the gateway's ONNX Runtime backend uses by default on this machine (CUDA where available, CPU)."""
    return select_providers(OnnxRuntimeOptions().execution_providers, ort.get_available_providers(), warn=False)


def _optimize(model: Path, target: Path, fp16: bool) -> None:
    """Save ONNX Runtime's offline optimizations (level extended) of ``model`` as ``target``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    try:
        session = ort.InferenceSession(str(model), sess_options=options, providers=_session_providers())
    except Exception as error:  # ORT raises its own types
        raise QuantizationError(f"ONNX Runtime's offline optimization failed: {error}") from error
    if fp16 and "CUDAExecutionProvider" not in session.get_providers():
        raise QuantizationError(
            "--optimize with --precision fp16 needs the CUDA provider on this machine: the optimized graph is "
            "saved for the providers that made it, and the CPU provider would save fp32 casts around the fp16 "
            "operators it has no kernel for. Push without --optimize (the server optimizes at load), or push "
            "from a machine where onnxruntime-gpu sees a GPU"
        )


def _operators_run_in_fp32(model: Path, providers: Sequence[str]) -> list[str]:
    """The operator types whose fp16 outputs ONNX Runtime computes in fp32 with ``providers``.

    ONNX Runtime inserts casts to fp32 around an fp16 operator that no provider has an fp16 kernel
    for. The session's graph (before any optimization) is saved, shape inference gives each node's
    output types, and the nodes of ``model`` whose fp16 outputs became fp32 are the ones run in fp32.
    """
    with tempfile.TemporaryDirectory(prefix="gateway-fp16-") as work:
        saved = Path(work) / "session.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(saved)
        ort.InferenceSession(str(model), sess_options=options, providers=list(providers))
        session_graph = onnx.shape_inference.infer_shapes(onnx.load(str(saved))).graph
    original_graph = onnx.shape_inference.infer_shapes(onnx.load(str(model))).graph

    def output_types(graph: onnx.GraphProto) -> dict[str, list[int]]:
        types = {value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.output]}
        return {node.name: [types.get(name, 0) for name in node.output] for node in graph.node}

    before, after = output_types(original_graph), output_types(session_graph)
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    return sorted(
        {
            node.op_type
            for node in original_graph.node
            if any(
                (was, now) == (float16, float32)
                for was, now in zip(before[node.name], after.get(node.name, []), strict=False)
            )
        }
    )


# ----------------------------------------------------------------------------- the whole compression


@dataclass
class _Work:
    """A compression in progress: its scratch folder, the models made there, and how to measure them."""

    folder: Path
    original: Path
    options: CompressionOptions
    data: CompressionData
    measurement: _Measurement
    progress: Progress
    preprocessed: Path | None = None
    per_channel: bool = False

    def model(self, name: str) -> Path:
        return self.folder / name / MODEL_FILE

    def make(self, op_types: Sequence[str] | None, target: Path) -> None:
        """The original model compressed as the options say (int8 or fp16), only ``op_types`` when given."""
        if self.options.quantize is not None:
            assert self.preprocessed is not None
            _quantize_int8(self.preprocessed, target, self.data.calibration, self.per_channel, op_types)
        else:
            blocked = None
            if op_types is not None:
                others = {node.op_type for node in onnx.load(str(self.original)).graph.node} - set(op_types)
                blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | others)
            _convert_fp16(self.original, target, not self.options.fp16_io, blocked)

    def compress(self, target: Path) -> Compression:
        """Write the compressed model to ``target``; returns what was done."""
        options, compression = self.options, Compression()
        current = self.original
        if options.quantize is not None:
            mode = "dynamic" if self.data.calibration is None else "static"
            self.progress(f"quantizing to int8 with ONNX Runtime ({mode})")
            graph = onnx.load(str(self.original))
            drop_ignored_gemm_bias(graph.graph)
            normalized = save_onnx(graph, self.folder / "normalized.onnx")
            self.preprocessed = self.folder / "preprocessed.onnx"
            try:
                quant_pre_process(normalized, self.preprocessed)
            except Exception as error:  # the pre-processing raises many types
                raise QuantizationError(f"ONNX Runtime's quantization pre-processing failed: {error}") from error
            choice = "asked"
            if options.per_channel is None:
                trials = {}
                for per_channel in (False, True):
                    self.per_channel = per_channel
                    self.make(None, self.model(f"per_channel_{per_channel}"))
                    trials[per_channel] = self.measurement.mean_abs_error(
                        self.model(f"per_channel_{per_channel}").parent, "int8"
                    )
                self.per_channel = trials[True] < trials[False]
                choice = f"measured: mean abs error {trials[False]:.3e} per-tensor, {trials[True]:.3e} per-channel"
            else:
                self.per_channel = options.per_channel
                self.make(None, self.model(f"per_channel_{self.per_channel}"))
            current = self.model(f"per_channel_{self.per_channel}")
            _check_quantized(self.original, current)
            calibrated = None if self.data.calibration is None else len(self.data.calibration)
            compression = Compression("int8", mode, self.per_channel, choice, calibrated)
        elif options.precision is not None:
            self.progress(f"converting to {options.precision}")
            current = self.model(options.precision)
            self.make(None, current)
            compression = Compression(precision=options.precision, fp16_io=options.fp16_io)
        target.parent.mkdir(parents=True, exist_ok=True)
        if options.optimize:
            self.progress("saving ONNX Runtime's offline graph optimizations (level extended)")
            _optimize(current, target, fp16=options.precision == "fp16")
            compression = replace(compression, optimized=True)
        else:
            shutil.copyfile(current, target)
        return compression


def _operator_contributions(work: _Work, guard: Guard) -> list[OperatorContribution]:
    """The operator types contributing most to a compressed model's error, largest first (see :class:`GuardError`)."""
    options = work.options
    graph_types = {node.op_type for node in onnx.load(str(work.original)).graph.node}
    if options.quantize is not None and work.data.calibration is None:
        types = (graph_types | ({"MatMul"} if "Gemm" in graph_types else set())) & set(IntegerOpsRegistry)
    elif options.quantize is not None:
        types = graph_types & set(QDQRegistry)
    elif options.precision is not None:
        types = graph_types - set(DEFAULT_OP_BLOCK_LIST)
    else:
        return []
    by_accuracy = any(failure.startswith("accuracy") for failure in guard.failures)
    found = []
    for op_type in sorted(types):
        model = work.model(f"only_{op_type}")
        work.make([op_type], model)
        figures = work.measurement.figures(_load(model.parent, f"{op_type}-only"), f"{op_type}-only")
        accuracy = next((item.accuracy for item in figures if item.accuracy is not None), None)
        found.append(
            OperatorContribution(
                op_type,
                max(item.max_abs_error for item in figures),
                None if accuracy is None else accuracy.drop_points,
            )
        )

    def weight(item: OperatorContribution) -> float:
        return (item.accuracy_drop or 0.0) if by_accuracy else item.max_abs_error

    ranked = sorted((item for item in found if weight(item) > 0), key=weight, reverse=True)
    return ranked[:TOP_OPERATORS]


def compress_model(
    version_dir: Path,
    options: CompressionOptions,
    data: CompressionData,
    reference: Reference,
    *,
    max_batch_size: int,
    progress: Progress | None = None,
) -> QuantizationReport:
    """Compress ``version_dir/model.onnx`` in place as ``options`` say and measure the price.

    The fp32 model is moved to a scratch folder; the compressed one takes its place. The figures
    are measured as the module docstring says; latency at batch 1 and ``max_batch_size`` when every
    input's dim 0 is a dynamic batch dim, else at the parity inputs' first batch.

    Args:
        version_dir: the version folder holding the fp32 ``model.onnx`` (proved faithful).
        options: what to do, and the guard.
        data: the calibration and eval data (:func:`load_compression_data`).
        reference: the parity inputs, the reference's outputs on them, and the reference itself.
        max_batch_size: the batch size latency is measured at besides 1 (the gateway's max_batch_size).
        progress: called with a line of text before each long step.

    Returns:
        The figures; the caller stores them (:func:`converters.quantization_report.write_quantization_file`).

    Raises:
        QuantizationError: a compression step or a measurement fails (the message names it).
        GuardError: the model does not meet ``max_accuracy_drop`` or ``max_abs_error``.
    """
    report = progress or (lambda _: None)
    target = version_dir / MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="gateway-compress-") as folder:
        original = Path(folder) / "original" / MODEL_FILE
        original.parent.mkdir()
        shutil.move(target, original)
        measurement = _Measurement(reference, data)
        work = _Work(Path(folder), original, options, data, measurement, report)
        compression = work.compress(target)
        eval_items = f" and {_items(data.eval_inputs)} eval items" if data.eval_inputs else ""
        report(f"measuring the price on {len(reference.inputs)} parity batches{eval_items}")
        compressed = _load(version_dir, "compressed")
        figures = measurement.figures(compressed, "compressed")
        batch_sizes = _latency_batch_sizes(reference.input_specs, reference.inputs[0], max_batch_size)
        report(f"timing both models, median of {LATENCY_RUNS} calls at batch {' and '.join(map(str, batch_sizes))}")
        latency = _latency(
            _load(original.parent, "original", LATENCY_THREADS),
            _load(version_dir, "compressed", LATENCY_THREADS),
            reference.inputs[0],
            batch_sizes,
            reference.output_names,
        )
        providers = list(compressed.metadata_parameters["execution_providers"])
        guard = _guard(options, figures)
        result = QuantizationReport(
            compression=compression,
            reference=reference.description,
            execution_providers=providers,
            bytes_before=original.stat().st_size,
            bytes_after=target.stat().st_size,
            latency=latency,
            latency_runs=LATENCY_RUNS,
            latency_threads=LATENCY_THREADS,
            data=figures,
            fp32_operators=_operators_run_in_fp32(target, providers) if compression.precision == "fp16" else [],
            guard=guard,
        )
        if not guard.passed:
            report("the guard is not met: compressing each operator type alone to find where the error comes from")
            raise GuardError(result, _operator_contributions(work, guard))
    return result
