"""The tensors of ``gateway predict``: input files read and cast to the model's inputs, outputs shown.

An input file is ``.npy`` (the model's only input), ``.npz`` (one array per input name) or ``.json``
(``{"INPUT": nested list}``, or a KServe v2 inference request body). Each array is cast to the
datatype the model's metadata gives its input (refused when that would change its values' kind, e.g.
floats to integers), and gets a batch dimension when it lacks one the model has. Kept apart from the
verb so that numpy is imported only when a model is run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import typer

from gateway.client import InferResult, OutputTensor
from gateway.datatypes import BYTES, numpy_dtype

#: Elements of an output printed before numpy summarizes it with "...".
PRINTED_ELEMENTS = 64

#: Per output name, for each row, the best (class index, score) pairs.
BestClasses = dict[str, list[list[tuple[int, float]]]]


class InputFileError(ValueError):
    """The input file cannot be read or does not fit the model's inputs; the message says why."""


def read_inputs(path: Path, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The arrays of ``path`` by input name, cast to the model's datatypes, with the batch dim added if missing.

    Args:
        path: a ``.npy``, ``.npz`` or ``.json`` file.
        inputs: the model metadata's ``inputs`` (``name``, ``datatype``, ``shape``; -1: any size).

    Raises:
        InputFileError: the file cannot be read, names unknown inputs or misses some, or holds
            values that do not fit an input's datatype.
    """
    arrays = _load(path, [tensor["name"] for tensor in inputs])
    expected = {tensor["name"]: tensor for tensor in inputs}
    unknown = [name for name in arrays if name not in expected]
    missing = [name for name in expected if name not in arrays]
    if unknown or missing:
        problems = [f"unknown input {', '.join(unknown)}"] if unknown else []
        problems += [f"missing input {', '.join(missing)}"] if missing else []
        raise InputFileError(f"{'; '.join(problems)}; the model takes {_signature(inputs)}")
    return {name: _fit(name, arrays[name], expected[name]) for name in expected}


def is_classifier(output: OutputTensor) -> bool:
    """Whether ``output`` looks like a classifier's scores: a 2-D float tensor (rows of class scores)."""
    return output.array.ndim == 2 and output.array.dtype.kind == "f"


def top_classes(scores: np.ndarray, count: int) -> list[list[tuple[int, float]]]:
    """For each row of ``scores`` ``[rows, classes]``, the ``count`` highest (class index, score), best first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
    return [[(int(index), float(row[index])) for index in indices] for row, indices in zip(scores, order, strict=True)]


def _load(path: Path, input_names: list[str]) -> dict[str, Any]:
    """The arrays (or nested lists) a file holds, by input name."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if len(input_names) != 1:
                raise InputFileError(
                    f"a .npy file holds one array, but the model has {len(input_names)} inputs "
                    f"({', '.join(input_names)}): give a .npz with one array per input name"
                )
            return {input_names[0]: array}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".json":
            return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        if isinstance(error, InputFileError):
            raise
        raise InputFileError(f"cannot be read: {error}") from None
    raise InputFileError("unsupported file type: give a .npy, .npz or .json file")


def _from_json(body: Any) -> dict[str, Any]:
    """``{"INPUT": nested list}``, or a v2 inference request body's ``inputs``."""
    if not isinstance(body, dict):
        raise InputFileError('expected a JSON object: {"INPUT": nested list} or a v2 request body')
    if not isinstance(body.get("inputs"), list):
        return body
    arrays: dict[str, Any] = {}
    for tensor in body["inputs"]:
        try:
            arrays[tensor["name"]] = np.asarray(tensor["data"]).reshape(tensor["shape"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputFileError(f"a v2 request input needs name, shape and data that fit: {error}") from None
    return arrays


def _fit(name: str, values: Any, tensor: dict[str, Any]) -> np.ndarray:
    """``values`` as an array of the input's datatype, with a leading batch dim when the model has one more dim."""
    datatype, shape = tensor["datatype"], tensor["shape"]
    array = np.asarray(values)
    if datatype == BYTES:
        if array.dtype.kind not in "SUO":
            raise InputFileError(f"input '{name}' is BYTES: give strings, not {array.dtype} values")
    else:
        target = numpy_dtype(datatype)
        if array.dtype.kind not in "biuf" or not np.can_cast(array.dtype, target, casting="same_kind"):
            raise InputFileError(
                f"input '{name}' is {datatype}: {array.dtype} values cannot become {target} without losing "
                "their kind (e.g. fractions)"
            )
        if target.kind in "iu" and array.size and array.dtype.kind in "iu":
            limits = np.iinfo(target)
            if array.min() < limits.min or array.max() > limits.max:
                raise InputFileError(f"input '{name}' is {datatype}: values outside [{limits.min}, {limits.max}]")
        array = array.astype(target)
    if array.ndim == len(shape) - 1 and shape[:1] == [-1]:
        array = array[np.newaxis]
    return array


def _signature(inputs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{tensor['name']} ({tensor['datatype']} {tensor['shape']})" for tensor in inputs)


def described(result: InferResult) -> str:
    """The outputs of ``result`` in a few words: name, datatype and shape of each."""
    return ", ".join(f"{o.name} ({o.datatype} {list(o.array.shape)})" for o in result.outputs)


def as_json(result: InferResult, best: BestClasses) -> dict[str, Any]:
    """What ``gateway predict --json`` prints: the model, version, every output with its values, the top classes."""
    answer: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": [
            {
                "name": output.name,
                "datatype": output.datatype,
                "shape": list(output.array.shape),
                "data": _json_values(output.array),
            }
            for output in result.outputs
        ],
    }
    if best:
        answer["top"] = {
            name: [[{"class": index, "score": score} for index, score in row] for row in rows]
            for name, rows in best.items()
        }
    return answer


def _json_values(array: np.ndarray) -> Any:
    """Nested lists of the values; BYTES elements as text (invalid UTF-8 escaped)."""
    if array.dtype.kind in "SO":
        decoded = [
            item.decode("utf-8", "backslashreplace") if isinstance(item, bytes) else str(item) for item in array.ravel()
        ]
        return np.array(decoded, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def print_outputs(result: InferResult, best: BestClasses) -> None:
    """Print each output (name, datatype, shape, values summarized by numpy) and its rows' best classes."""
    typer.echo(f"model {result.model_name} version {result.model_version}")
    width = shutil.get_terminal_size().columns
    for tensor in result.outputs:
        typer.echo(f"{tensor.name}  {tensor.datatype}  {list(tensor.array.shape)}")
        with np.printoptions(threshold=PRINTED_ELEMENTS, edgeitems=3, precision=4, linewidth=width):
            typer.echo(str(tensor.array))
        for row_number, row in enumerate(best.get(tensor.name, [])):
            classes = ", ".join(f"{index} ({score:.4g})" for index, score in row)
            typer.echo(f"  row {row_number}: best classes {classes}")
