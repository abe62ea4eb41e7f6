"""Row and columnar JSON of the TF Serving and TorchServe REST dialects, to and from tensors.

Values are read as the model's datatypes (from its metadata); nesting gives the shapes. In the row
format, a list holds one item per instance, stacked along dim 0: a plain value per instance when the
model has one input, else an object ``{input: value}``. BYTES values are strings or
``{"b64": "..."}``; ``NaN`` and ``Infinity`` are valid numbers, as in TF Serving.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from gateway.core.types import InferResponse, InferTensor, TensorMetadata
from gateway.datatypes import BYTES, RequestLimits, array_from_values
from gateway.errors import InvalidArgumentError


def parse_json(raw: bytes, limits: RequestLimits) -> Any:
    """The JSON value of a body (``NaN``, ``Infinity`` accepted), its nesting checked before it is parsed.

    Raises:
        InvalidArgumentError: the body is not UTF-8 JSON, or nests deeper than ``limits.max_json_depth``.
    """
    limits.check_json_depth(raw)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"malformed JSON: {error}") from None


def is_b64(value: Any) -> bool:
    """Whether a JSON value is a TF Serving binary value, ``{"b64": "<base64>"}``."""
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_b64(values: Any, name: str) -> Any:
    """``values`` with every ``{"b64": "..."}`` replaced by the bytes it encodes.

    Raises:
        InvalidArgumentError: a ``b64`` value that is not base64.
    """
    if is_b64(values):
        try:
            return base64.b64decode(values["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidArgumentError(f"input '{name}': a 'b64' value is not base64") from None
    if isinstance(values, list):
        return [_decode_b64(value, name) for value in values]
    return values


def _nested_shape(values: Any) -> list[int]:
    """The shape nested JSON lists spell (following first elements; ragged lists fail when converted)."""
    shape: list[int] = []
    while isinstance(values, list):
        shape.append(len(values))
        if not values:
            break
        values = values[0]
    return shape


def tensor_from_values(name: str, values: Any, datatypes: dict[str, str], limits: RequestLimits) -> InferTensor:
    """An input tensor from nested JSON values, read as the model's datatype for ``name``.

    Raises:
        InvalidArgumentError: an input the model does not take, values that do not fit the
            datatype, ragged lists, or bad base64.
        PayloadTooLargeError: more elements than ``limits.max_tensor_elements``.
    """
    if name not in datatypes:
        raise InvalidArgumentError(f"unknown input '{name}'; the model takes {', '.join(datatypes)}")
    datatype = datatypes[name]
    if datatype == BYTES:
        values = _decode_b64(values, name)
    shape = _nested_shape(values)
    data = array_from_values(values, datatype, shape, name, limits.max_tensor_elements)
    return InferTensor(name, datatype, shape, data)


def row_tensors(rows: Any, inputs: list[TensorMetadata], field: str, limits: RequestLimits) -> list[InferTensor]:
    """Input tensors from row-format instances: one item per instance, stacked along dim 0.

    Raises:
        InvalidArgumentError: not a non-empty list, objects with differing keys, plain values for a
            model with several inputs, or values that do not fit.
        PayloadTooLargeError: more inputs than ``limits.max_inputs``, or a tensor over ``max_tensor_elements``.
    """
    if not isinstance(rows, list) or not rows:
        raise InvalidArgumentError(f"'{field}' must be a non-empty list with one item per instance")
    datatypes = {tensor.name: tensor.datatype for tensor in inputs}
    if all(isinstance(row, dict) and not is_b64(row) for row in rows):
        names = list(rows[0])
        limits.check_tensor_counts(len(names), 0)
        for index, row in enumerate(rows):
            if set(row) != set(names):
                raise InvalidArgumentError(
                    f"'{field}' item {index} names inputs {sorted(row)}, item 0 names {sorted(names)}"
                )
        return [tensor_from_values(name, [row[name] for row in rows], datatypes, limits) for name in names]
    if len(inputs) != 1:
        raise InvalidArgumentError(
            f"the model takes several inputs ({', '.join(datatypes)}): give each item of '{field}' as an "
            "object {input name: value}"
        )
    return [tensor_from_values(inputs[0].name, rows, datatypes, limits)]


def output_values(tensor: InferTensor) -> Any:
    """An output as nested JSON values; BYTES as text, or ``{"b64": ...}`` when its name ends in ``_bytes``."""
    if tensor.datatype != BYTES:
        return tensor.data.tolist()
    if tensor.name.endswith("_bytes"):
        encoded = np.vectorize(lambda item: {"b64": base64.b64encode(item).decode("ascii")}, otypes=[object])
    else:
        encoded = np.vectorize(lambda item: item.decode("utf-8", "replace"), otypes=[object])
    return encoded(tensor.data).tolist()


def row_predictions(response: InferResponse) -> list[Any]:
    """Row-format predictions: the output's items along dim 0, or an object per item for several outputs.

    Raises:
        InvalidArgumentError: an output without a dim 0, or outputs whose dim 0 differ.
    """
    sizes = {tensor.shape[0] if tensor.shape else None for tensor in response.outputs}
    if None in sizes or len(sizes) != 1:
        raise InvalidArgumentError(
            f"the outputs of model '{response.model_name}' do not share a first dim "
            f"({', '.join(f'{t.name} {t.shape}' for t in response.outputs)}); ask in the columnar format ('inputs')"
        )
    columns = {tensor.name: output_values(tensor) for tensor in response.outputs}
    if len(columns) == 1:
        (values,) = columns.values()
        return list(values)
    return [{name: values[index] for name, values in columns.items()} for index in range(sizes.pop() or 0)]
