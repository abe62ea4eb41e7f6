"""TensorFlow's ``TensorProto`` read into numpy: for TF Serving's gRPC requests and its warmup files.

A TensorProto (tensorflow/core/framework/tensor.proto) carries a ``dtype`` (``DataType``), a
``tensor_shape`` (``TensorShapeProto``: one ``dim`` per dimension) and its values either as
``tensor_content`` (the row-major little-endian bytes of a numeric tensor) or in the typed field of its
dtype: ``float_val`` (DT_FLOAT), ``double_val`` (DT_DOUBLE), ``int_val`` (DT_INT8, DT_INT16, DT_INT32,
DT_UINT8, DT_UINT16), ``int64_val``, ``uint32_val``, ``uint64_val``, ``bool_val``, ``half_val``
(DT_HALF, the float16 bit patterns in int32s) and ``string_val`` (DT_STRING, bytes). As in TensorFlow's
``Tensor::FromProto``, typed values fewer than the elements are padded with the last one (one value
fills the tensor).

It lives in the repository layer because TF Serving's warmup file (a SavedModel's
``assets.extra/tf_serving_warmup_requests``, :mod:`gateway.repository.tfserving_warmup`) holds requests
of these tensors; the gRPC transport (``transports/grpc/tfserving_codec.py``) decodes requests with it too.
"""

from __future__ import annotations

import numpy as np

from gateway.datatypes import (
    BYTES,
    DEFAULT_LIMITS,
    V2_TO_TF_DTYPE,
    RequestLimits,
    array_from_raw,
    array_from_values,
    element_count,
    repeated_values,
)
from gateway.errors import InvalidArgumentError
from protos import tfserving as pb
from protos.messages import ProtoMessage

#: TensorFlow ``DataType`` number -> v2 datatype (the dtypes the gateway serves).
TF_DTYPE_TO_V2: dict[int, str] = {
    pb.DataType.values_by_name[tf_name].number: v2 for v2, tf_name in V2_TO_TF_DTYPE.items()
}
#: v2 datatype -> the TensorProto field holding its typed values.
VALUES_FIELD: dict[str, str] = {
    "BOOL": "bool_val",
    "INT8": "int_val",
    "INT16": "int_val",
    "INT32": "int_val",
    "INT64": "int64_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "FP16": "half_val",
    "FP32": "float_val",
    "FP64": "double_val",
    BYTES: "string_val",
}


def tensor_array(
    name: str, tensor: ProtoMessage, limits: RequestLimits = DEFAULT_LIMITS
) -> tuple[str, list[int], np.ndarray]:
    """The v2 datatype, shape and values of ``tensor`` (the TensorProto of input ``name``).

    Returns:
        ``(datatype, shape, array)``: the array has ``shape`` and the numpy dtype of ``datatype``
        (BYTES: an ``object`` array of ``bytes``).

    Raises:
        InvalidArgumentError: a dtype the gateway does not serve; an unknown rank or a negative dim;
            ``tensor_content`` whose length does not fit the shape, or on a DT_STRING tensor; more typed
            values than elements, none for a non-empty tensor, or values out of the dtype's range.
        PayloadTooLargeError: the shape declares more than ``limits.max_tensor_elements`` elements.
    """
    datatype = TF_DTYPE_TO_V2.get(tensor.dtype)
    if datatype is None:
        known = pb.DataType.values_by_number.get(tensor.dtype)
        shown = known.name if known is not None else f"number {tensor.dtype}"
        raise InvalidArgumentError(
            f"input '{name}': dtype {shown} is not served (served: {', '.join(sorted(V2_TO_TF_DTYPE.values()))})"
        )
    if tensor.tensor_shape.unknown_rank:
        raise InvalidArgumentError(f"input '{name}': tensor_shape has an unknown rank; give every dim")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    count = element_count(shape, name, limits.max_tensor_elements)  # raises for negative dims and too many elements
    if tensor.tensor_content:
        if datatype == BYTES:
            raise InvalidArgumentError(f"input '{name}': a DT_STRING tensor carries its values in string_val")
        return datatype, shape, array_from_raw(tensor.tensor_content, datatype, shape, name, limits.max_tensor_elements)
    given = len(getattr(tensor, VALUES_FIELD[datatype]))
    if given > count:
        raise InvalidArgumentError(f"input '{name}': {given} values for shape {shape} ({count} elements)")
    if not given and count:
        raise InvalidArgumentError(
            f"input '{name}': no values for shape {shape}; give them in tensor_content or {VALUES_FIELD[datatype]}"
        )
    stored = "UINT16" if datatype == "FP16" else datatype  # half_val holds float16 bit patterns
    values = repeated_values(tensor, VALUES_FIELD[datatype])
    flat = array_from_values(values, stored, [given], name, limits.max_tensor_elements)
    if flat.size < count:  # TensorFlow's Tensor::FromProto: the last value fills the rest
        flat = np.concatenate([flat, np.full(count - flat.size, flat[-1], dtype=flat.dtype)])
    data = flat.reshape(shape)
    return datatype, shape, data.view(np.float16) if datatype == "FP16" else data
