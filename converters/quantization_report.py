"""The price of a compressed model (int8, fp16, offline optimization): its figures, their table, and its file.

:mod:`converters.quantization` compresses a converted model and measures what it cost against the
original model: errors and accuracy on the user's data, model bytes, latency. This module holds those
figures (:class:`QuantizationReport`), renders them as the table ``gateway push`` prints, and stores
them beside the model as ``quantization.json`` (:data:`QUANTIZATION_FILE`): :func:`write_quantization_file`
writes it (the push), :func:`read_quantization_file` reads it back (the server, to show it in the
model's metadata under ``parameters.quantization``). Like :mod:`converters.parity`, it imports only the
standard library and numpy, so the server can import it without any quantization tool or framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.parity import read_json_report, write_json_report

__all__ = [
    "QUANTIZATION_FILE",
    "Accuracy",
    "Compression",
    "DataFigures",
    "Guard",
    "LatencyFigures",
    "OutputError",
    "QuantizationReport",
    "read_quantization_file",
    "write_quantization_file",
]

#: Name of the compression report in a model version folder.
QUANTIZATION_FILE = "quantization.json"


@dataclass(frozen=True)
class OutputError:
    """How far one output of the compressed model is from the reference's, over every batch of a data set.

    Attributes:
        name: the output's name.
        max_abs_error: largest ``|after - reference|`` over every element (``inf`` where one side is
            NaN or infinite and the other is not).
        mean_abs_error: mean of ``|after - reference|`` over every element.
        argmax_agreement: for a classifier's scores (a 2-D float output, ``[batch, classes]`` with
            at least two classes), the fraction (0..1) of rows whose argmax along dim 1 is the
            reference's; None for other outputs.
    """

    name: str
    max_abs_error: float
    mean_abs_error: float
    argmax_agreement: float | None


@dataclass(frozen=True)
class Accuracy:
    """Accuracy on labelled data: the fraction (0..1) of rows whose argmax of ``output`` is the label.

    Attributes:
        output: the classifier output it is read from (the first 2-D float output).
        before: the reference model's accuracy.
        after: the compressed model's accuracy.
    """

    output: str
    before: float
    after: float

    @property
    def drop_points(self) -> float:
        """How much accuracy the compression cost, in percentage points (negative: it gained)."""
        return (self.before - self.after) * 100.0


@dataclass(frozen=True)
class DataFigures:
    """The figures of one data set: the parity inputs, or the user's eval data.

    Attributes:
        name: ``parity inputs`` or ``eval data``.
        batches: input batches run.
        items: rows run (the batch dims added up).
        outputs: one :class:`OutputError` per output, in the model's order.
        accuracy: before and after, when the data has labels; else None.
    """

    name: str
    batches: int
    items: int
    outputs: list[OutputError]
    accuracy: Accuracy | None = None

    @property
    def max_abs_error(self) -> float:
        """The largest max abs error over the outputs."""
        return max(output.max_abs_error for output in self.outputs)


@dataclass(frozen=True)
class LatencyFigures:
    """Median time of one call at one batch size, before and after compression, in milliseconds."""

    batch_size: int
    before_ms: float
    after_ms: float


@dataclass(frozen=True)
class Compression:
    """What was done to the model.

    Attributes:
        quantize: ``int8``, or None.
        mode: ``dynamic`` (activations quantized at run time; ONNX Runtime's QOperator format) or
            ``static`` (activation ranges calibrated on the user's data; QDQ format), for int8.
        per_channel: int8 weights quantized per output channel (True) or per tensor (False).
        per_channel_choice: how that was decided: ``asked``, or ``measured`` with the figures.
        calibration_batches: calibration batches (static mode).
        precision: ``fp32`` (unchanged) or ``fp16``.
        fp16_io: fp16 inputs and outputs (False: they keep the model's original dtypes).
        optimized: ONNX Runtime's offline graph optimizations are saved in the model.
    """

    quantize: str | None = None
    mode: str | None = None
    per_channel: bool | None = None
    per_channel_choice: str | None = None
    calibration_batches: int | None = None
    precision: str = "fp32"
    fp16_io: bool = False
    optimized: bool = False

    def describe(self) -> str:
        """E.g. ``int8 static (QDQ, per-tensor, measured: ...), 10 calibration batches``."""
        parts: list[str] = []
        if self.quantize is not None:
            quant_format = "QDQ" if self.mode == "static" else "QOperator"
            granularity = "per-channel" if self.per_channel else "per-tensor"
            parts.append(f"{self.quantize} {self.mode} ({quant_format}, {granularity}, {self.per_channel_choice})")
            if self.calibration_batches is not None:
                parts.append(f"{self.calibration_batches} calibration batches")
        if self.precision != "fp32":
            io = self.precision if self.fp16_io else "original dtypes"
            parts.append(f"{self.precision} (inputs and outputs in {io})")
        if self.optimized:
            parts.append("ONNX Runtime offline optimizations saved (level extended)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Guard:
    """The limits a compressed model must meet to be published, and the figures that did not.

    Attributes:
        max_accuracy_drop: most accuracy (percentage points, on the eval data) it may cost; None: no limit.
        max_abs_error: largest abs error allowed on any output (parity inputs and eval data); None: no limit.
        failures: one sentence per figure over its limit (which figure, its value, by how much).
    """

    max_accuracy_drop: float | None = None
    max_abs_error: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no figure is over its limit."""
        return not self.failures


@dataclass(frozen=True)
class QuantizationReport:
    """The price of a compression, measured on this machine against the reference model.

    Attributes:
        compression: what was done.
        reference: what the figures compare with, e.g. ``the original torch model``.
        execution_providers: the ONNX Runtime providers the compressed model was measured with.
        bytes_before, bytes_after: the ONNX file's size before and after, in bytes.
        latency: the median call time per batch size (1 and the gateway's max_batch_size).
        latency_runs: the timed calls per batch size and model (the median is over them).
        latency_threads: ONNX Runtime intra-op threads of the timed sessions.
        data: the figures of the parity inputs, then of the eval data when given.
        fp32_operators: for fp16, the operator types this machine's providers ran in fp32 (ONNX
            Runtime inserts casts around an fp16 operator that has no fp16 kernel); empty otherwise.
        guard: the limits and the figures over them.
    """

    compression: Compression
    reference: str
    execution_providers: list[str]
    bytes_before: int
    bytes_after: int
    latency: list[LatencyFigures]
    latency_runs: int
    latency_threads: int
    data: list[DataFigures]
    fp32_operators: list[str] = field(default_factory=list)
    guard: Guard = field(default_factory=Guard)

    def table(self) -> str:
        """The figures as the plain-text table ``gateway push`` prints: one figure a row, before, after, change."""
        rows: list[tuple[str, str, str, str]] = [
            ("model bytes", str(self.bytes_before), str(self.bytes_after), _ratio(self.bytes_after, self.bytes_before))
        ]
        for latency in self.latency:
            rows.append(
                (
                    f"latency ms, batch {latency.batch_size}",
                    f"{latency.before_ms:.3f}",
                    f"{latency.after_ms:.3f}",
                    _ratio(latency.after_ms, latency.before_ms),
                )
            )
        for figures in self.data:
            where = f"{figures.name} ({figures.items} items)"
            if figures.accuracy is not None:
                accuracy = figures.accuracy
                rows.append(
                    (
                        f"accuracy {accuracy.output}, {where}",
                        f"{accuracy.before:.2%}",
                        f"{accuracy.after:.2%}",
                        f"{(accuracy.after - accuracy.before) * 100 + 0.0:+.2f} points",
                    )
                )
            for output in figures.outputs:
                if output.argmax_agreement is not None:
                    rows.append((f"argmax agreement {output.name}, {where}", "", f"{output.argmax_agreement:.2%}", ""))
                rows.append((f"max abs error {output.name}, {where}", "", f"{output.max_abs_error:.3e}", ""))
                rows.append((f"mean abs error {output.name}, {where}", "", f"{output.mean_abs_error:.3e}", ""))
        header = ("figure", "before", "after", "change")
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = [f"{self.compression.describe()}; against {self.reference}"]
        threads = f"{self.latency_threads} intra-op thread{'s' if self.latency_threads > 1 else ''}"
        lines.append(
            f"measured with ONNX Runtime on this machine ({', '.join(self.execution_providers)}; latency: median of "
            f"{self.latency_runs} calls, {threads})"
        )
        table = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)
        ]
        table.insert(1, "  ".join("-" * width for width in widths))
        lines += table
        if self.fp32_operators:
            lines.append(
                f"note: {self.compression.precision} targets the CUDA provider; here ONNX Runtime ran "
                f"{', '.join(self.fp32_operators)} in fp32 (no {self.compression.precision} kernel), so on a GPU "
                "the errors and latency will differ"
            )
        lines.append(self._guard_line())
        return "\n".join(lines)

    def _guard_line(self) -> str:
        limits = []
        if self.guard.max_accuracy_drop is not None:
            limits.append(f"accuracy drop <= {self.guard.max_accuracy_drop:g} points")
        if self.guard.max_abs_error is not None:
            limits.append(f"max abs error <= {self.guard.max_abs_error:g}")
        if not limits:
            return "guard: none set (--max-accuracy-drop, --max-abs-error)"
        verdict = "met" if self.guard.passed else "NOT MET: " + "; ".join(self.guard.failures)
        return f"guard: {', '.join(limits)}: {verdict}"

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values: the content of :data:`QUANTIZATION_FILE`.

        Returns:
            ``{"compression": {...}, "reference": str, "execution_providers": [str], "size": {"bytes_before":
            int, "bytes_after": int}, "latency": {"runs": int, "intra_op_threads": int, "batches":
            [{"batch_size", "before_ms", "after_ms"}]}, "data": [{"name", "batches", "items", "outputs":
            [{"name", "max_abs_error", "mean_abs_error", "argmax_agreement"}], "accuracy": {"output",
            "before", "after", "drop_points"} | null}], "fp32_operators": [str], "guard": {"max_accuracy_drop",
            "max_abs_error", "passed", "failures"}}``; infinite or NaN errors become null.
        """
        compression = self.compression
        return {
            "compression": {
                "quantize": compression.quantize,
                "mode": compression.mode,
                "per_channel": compression.per_channel,
                "per_channel_choice": compression.per_channel_choice,
                "calibration_batches": compression.calibration_batches,
                "precision": compression.precision,
                "fp16_io": compression.fp16_io,
                "optimized": compression.optimized,
            },
            "reference": self.reference,
            "execution_providers": list(self.execution_providers),
            "size": {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after},
            "latency": {
                "runs": self.latency_runs,
                "intra_op_threads": self.latency_threads,
                "batches": [
                    {"batch_size": item.batch_size, "before_ms": item.before_ms, "after_ms": item.after_ms}
                    for item in self.latency
                ],
            },
            "data": [
                {
                    "name": figures.name,
                    "batches": figures.batches,
                    "items": figures.items,
                    "outputs": [
                        {
                            "name": output.name,
                            "max_abs_error": _finite(output.max_abs_error),
                            "mean_abs_error": _finite(output.mean_abs_error),
                            "argmax_agreement": output.argmax_agreement,
                        }
                        for output in figures.outputs
                    ],
                    "accuracy": None
                    if figures.accuracy is None
                    else {
                        "output": figures.accuracy.output,
                        "before": figures.accuracy.before,
                        "after": figures.accuracy.after,
                        "drop_points": figures.accuracy.drop_points,
                    },
                }
                for figures in self.data
            ],
            "fp32_operators": list(self.fp32_operators),
            "guard": {
                "max_accuracy_drop": self.guard.max_accuracy_drop,
                "max_abs_error": self.guard.max_abs_error,
                "passed": self.guard.passed,
                "failures": list(self.guard.failures),
            },
        }


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}x" if before > 0 else ""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_quantization_file(version_dir: Path, report: QuantizationReport) -> None:
    """Write ``report`` as ``version_dir/quantization.json`` (:meth:`QuantizationReport.to_json`), replacing any.

    Raises:
        OSError: the file cannot be written (e.g. ``version_dir`` does not exist).
    """
    write_json_report(version_dir / QUANTIZATION_FILE, report.to_json())


def read_quantization_file(version_dir: Path) -> dict[str, Any] | None:
    """The figures stored in ``version_dir/quantization.json``, as written by :func:`write_quantization_file`.

    Returns:
        The file's JSON object; None when the file is absent or bad (see
        :func:`converters.parity.read_json_report`).
    """
    return read_json_report(version_dir / QUANTIZATION_FILE)
