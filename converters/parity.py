"""Numerical parity between a reference model's outputs and a converted model's outputs, and its file.

Typical use: run the same input batches through the framework model (reference) and through the
converted artifact (candidate), collect one ``{output_name: array}`` mapping per batch from each,
and pass both sequences to :func:`compare_outputs`.

The report is stored beside the model it checks, as ``parity.json`` (:data:`PARITY_FILE`) in the
version folder: :func:`write_parity_file` writes it (the conversion pipeline), :func:`read_parity_file`
reads it back (the server, to show it in the model's metadata). :func:`write_json_report` and
:func:`read_json_report` are the one way every report a push stores is written and read
(``quantization.json`` too, :mod:`converters.quantization_report`). This module imports only the
standard library and numpy, so the server can import it without any framework installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PARITY_FILE",
    "OutputParity",
    "ParityReport",
    "compare_outputs",
    "parity_to_json",
    "read_json_report",
    "read_parity_file",
    "write_json_report",
    "write_parity_file",
]

logger = logging.getLogger(__name__)

#: Name of the parity report in a model version folder.
PARITY_FILE = "parity.json"

# Output dtypes that can be compared numerically: bool, signed/unsigned integers, floats.
_NUMERIC_KINDS = frozenset("biuf")


@dataclass(frozen=True)
class OutputParity:
    """Parity of one named output over all compared batches.

    Attributes:
        name: output name.
        max_abs_error: largest ``|candidate - reference|`` over all elements of all batches (0.0 if
            they are identical; ``inf`` where one side is NaN/inf and the other is not).
        max_rel_error: largest ``|candidate - reference| / |reference|`` over the elements whose
            reference is non-zero (elements with a zero reference are judged by ``atol`` only).
        inputs_tried: number of input batches compared.
        within_tolerance: every element satisfies ``|candidate - reference| <= atol + rtol *
            |reference|`` (``numpy.allclose`` with the reference as ``b``; NaN equals NaN, an
            infinity only equals the same infinity).
    """

    name: str
    max_abs_error: float
    max_rel_error: float
    inputs_tried: int
    within_tolerance: bool


@dataclass(frozen=True)
class ParityReport:
    """Result of :func:`compare_outputs`: one :class:`OutputParity` per output plus the tolerances."""

    outputs: list[OutputParity]
    atol: float
    rtol: float

    @property
    def ok(self) -> bool:
        """True when at least one output was compared and every output is within tolerance."""
        return bool(self.outputs) and all(output.within_tolerance for output in self.outputs)

    def table(self) -> str:
        """Render the report as a plain-text table (one row per output, then a verdict line)."""
        header = ("output", "max_abs_error", "max_rel_error", "batches", "within_tolerance")
        rows = [
            (
                output.name,
                f"{output.max_abs_error:.3e}",
                f"{output.max_rel_error:.3e}",
                str(output.inputs_tried),
                "yes" if output.within_tolerance else "NO",
            )
            for output in self.outputs
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict} (|candidate - reference| <= {self.atol:g} + {self.rtol:g} * |reference|)")
        return "\n".join(lines)


def _as_numeric(value: npt.ArrayLike, *, name: str, side: str) -> npt.NDArray[np.float64]:
    """Convert one output to float64, refusing dtypes that cannot be compared numerically.

    Raises:
        TypeError: for non-numeric dtypes (strings, objects, complex, ...).
    """
    array = np.asarray(value)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{side} output {name!r} has non-numeric dtype {array.dtype}; cannot compare")
    return array.astype(np.float64, copy=False)


def _compare_arrays(
    reference: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64], *, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Return ``(max_abs_error, max_rel_error, within_tolerance)`` for two same-shape float64 arrays."""
    if reference.size == 0:
        return 0.0, 0.0, True
    same = (candidate == reference) | (np.isnan(candidate) & np.isnan(reference))
    finite = np.isfinite(candidate) & np.isfinite(reference)
    with np.errstate(invalid="ignore", over="ignore"):
        abs_error = np.where(same, 0.0, np.abs(candidate - reference))
    abs_error = np.where(same | finite, abs_error, np.inf)
    abs_reference = np.abs(reference)
    within = same | (finite & (abs_error <= atol + rtol * abs_reference))
    relative_mask = ~same & (abs_reference > 0)
    if relative_mask.any():
        with np.errstate(invalid="ignore"):
            relative = abs_error[relative_mask] / abs_reference[relative_mask]
        relative = np.where(np.isfinite(relative), relative, np.inf)
        max_rel = float(relative.max())
    else:
        max_rel = 0.0
    return float(abs_error.max()), max_rel, bool(within.all())


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ParityReport:
    """Compare a converted model's outputs against the reference model's, batch by batch.

    Args:
        reference: one mapping per input batch, ``{output_name: array}``, from the original model.
            Arrays may have any shape (typically ``[batch, ...]``) and any bool/int/uint/float dtype;
            values are compared in float64, so reference and candidate dtypes may differ (e.g. an
            FP32 candidate against an FP64 reference).
        candidate: the same structure from the converted model, for the same batches in the same
            order.
        atol: absolute tolerance (>= 0).
        rtol: relative tolerance (>= 0); the rule is ``numpy.allclose``'s
            ``|candidate - reference| <= atol + rtol * |reference|``.

    Returns:
        A :class:`ParityReport` with one :class:`OutputParity` per output name, in the key order of
        ``reference[0]``; ``inputs_tried`` is the number of batches.

    Raises:
        ValueError: if there are no batches, the sequences differ in length, a batch has no
            outputs, output names differ between reference and candidate or between batches, an
            output's shapes differ, or a tolerance is negative or NaN.
        TypeError: if an output has a non-numeric dtype (strings, objects, complex).
    """
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"tolerances must be >= 0, got atol={atol} rtol={rtol}")
    if len(reference) != len(candidate):
        raise ValueError(f"got {len(reference)} reference batches but {len(candidate)} candidate batches")
    if not reference:
        raise ValueError("no batches to compare")
    names = list(reference[0].keys())
    if not names:
        raise ValueError("batch 0 has no outputs to compare")

    per_output: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in names}
    for index, (ref_batch, cand_batch) in enumerate(zip(reference, candidate, strict=True)):
        if set(ref_batch) != set(names):
            raise ValueError(
                f"batch {index}: reference outputs {sorted(ref_batch)} differ from batch 0's {sorted(names)}"
            )
        if set(cand_batch) != set(names):
            missing = sorted(set(names) - set(cand_batch))
            extra = sorted(set(cand_batch) - set(names))
            raise ValueError(
                f"batch {index}: candidate output names differ from reference: missing {missing}, unexpected {extra}"
            )
        for name in names:
            ref = _as_numeric(ref_batch[name], name=name, side="reference")
            cand = _as_numeric(cand_batch[name], name=name, side="candidate")
            if ref.shape != cand.shape:
                raise ValueError(
                    f"batch {index}: output {name!r} has shape {list(cand.shape)} in the candidate "
                    f"but {list(ref.shape)} in the reference"
                )
            per_output[name].append(_compare_arrays(ref, cand, atol=atol, rtol=rtol))

    outputs = [
        OutputParity(
            name=name,
            max_abs_error=max(abs_err for abs_err, _, _ in results),
            max_rel_error=max(rel_err for _, rel_err, _ in results),
            inputs_tried=len(results),
            within_tolerance=all(within for _, _, within in results),
        )
        for name, results in per_output.items()
    ]
    return ParityReport(outputs=outputs, atol=atol, rtol=rtol)


def parity_to_json(report: ParityReport) -> dict[str, Any]:
    """The report as JSON-ready values: the content of :data:`PARITY_FILE`.

    Returns:
        ``{"atol": float, "rtol": float, "passed": bool, "outputs": [{"name": str, "max_abs_error":
        float | None, "max_rel_error": float | None, "inputs_tried": int, "within_tolerance": bool},
        ...]}``, outputs in the report's order; infinite errors become None (JSON ``null``).
    """

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


def write_json_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write a report's JSON-ready values to ``path`` (indented, UTF-8), replacing any file there.

    Raises:
        OSError: the file cannot be written (e.g. its folder does not exist).
    """
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def read_json_report(path: Path) -> dict[str, Any] | None:
    """A report written by :func:`write_json_report`, as the JSON object it holds.

    Returns:
        The file's JSON object; None when the file is absent, cannot be read or parsed (a warning
        is logged), or holds something other than a JSON object. Never raises for a bad file.
    """
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return None
    return report if isinstance(report, dict) else None


def write_parity_file(version_dir: Path, report: ParityReport) -> None:
    """Write ``report`` as ``version_dir/parity.json`` (:func:`parity_to_json`, indented), replacing any.

    Raises:
        OSError: the file cannot be written (e.g. ``version_dir`` does not exist).
    """
    write_json_report(version_dir / PARITY_FILE, parity_to_json(report))


def read_parity_file(version_dir: Path) -> dict[str, Any] | None:
    """The parity figures stored in ``version_dir/parity.json``, as written by :func:`write_parity_file`.

    Returns:
        The file's JSON object; None when the file is absent or bad (see :func:`read_json_report`).
    """
    return read_json_report(version_dir / PARITY_FILE)
