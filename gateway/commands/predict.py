"""``gateway predict MODEL --input FILE``: run a model on the tensors of a file and print its outputs.

The file holds the inputs: ``.npy`` (the model's only input), ``.npz`` (one array per input name) or
``.json`` (``{"INPUT": nested list}``, or a KServe v2 inference request body). Each array is
cast to the datatype the model's metadata gives its input (refused when that would change its
values' kind, e.g. floats to integers), and gets a batch dimension when it lacks one the model has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from gateway.client import DEFAULT_SERVER, InferResult, OutputTensor
from gateway.commands.common import (
    JsonOption,
    ModelArgument,
    ServerOption,
    VersionOption,
    fail,
    gateway_client,
    print_json,
)
from gateway.datatypes import BYTES, numpy_dtype

#: Elements of an output printed before numpy summarizes it with "...".
PRINTED_ELEMENTS = 64


class InputFileError(ValueError):
    """The input file cannot be read or does not fit the model's inputs; the message says why."""


def predict(
    model: ModelArgument,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            metavar="FILE",
            help="The inputs: .npy (the model's only input), .npz (one array per input name), or .json: "
            '{"INPUT": nested list} or a KServe v2 inference request body.',
            show_default=False,
        ),
    ],
    version: VersionOption = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            metavar="K",
            min=1,
            help="Also show the K best classes of each row of a classifier's output (a 2-D float output).",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    json_output: JsonOption = False,
) -> None:
    """Run a model on the inputs in a file and print its outputs (shape, datatype, values).

    The arrays are cast to the model's input datatypes (from its metadata); a missing batch
    dimension is added. Values are sent with Triton's binary tensor data extension.
    """
    with gateway_client(server) as client:
        metadata = client.model_metadata(model, version)
        try:
            inputs = read_inputs(input_file, metadata["inputs"])
        except InputFileError as error:
            fail(f"{input_file}: {error}")
        result = client.infer(model, inputs, version)
    best = {}
    if top is not None:
        best = {output.name: top_classes(output.array, top) for output in result.outputs if is_classifier(output)}
        if not best:
            fail(f"--top needs a classifier's output (2-D float); model '{model}' has {_described(result)}")
    if json_output:
        print_json(_as_json(result, best))
        return
    _print(result, best)


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


def _described(result: InferResult) -> str:
    return ", ".join(f"{o.name} ({o.datatype} {list(o.array.shape)})" for o in result.outputs)


def _as_json(result: InferResult, best: dict[str, list[list[tuple[int, float]]]]) -> dict[str, Any]:
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


def _print(result: InferResult, best: dict[str, list[list[tuple[int, float]]]]) -> None:
    typer.echo(f"model {result.model_name} version {result.model_version}")
    width = shutil.get_terminal_size().columns
    for tensor in result.outputs:
        typer.echo(f"{tensor.name}  {tensor.datatype}  {list(tensor.array.shape)}")
        with np.printoptions(threshold=PRINTED_ELEMENTS, edgeitems=3, precision=4, linewidth=width):
            typer.echo(str(tensor.array))
        for row_number, row in enumerate(best.get(tensor.name, [])):
            classes = ", ".join(f"{index} ({score:.4g})" for index, score in row)
            typer.echo(f"  row {row_number}: best classes {classes}")
