"""The codec of TF Serving's gRPC API: ``tensorflow.TensorProto`` to and from the core's tensors.

Requests are read by :func:`gateway.repository.tf_tensors.tensor_array` (``tensor_content`` or the typed
``*_val`` field of the dtype; one value fills the tensor, as TensorFlow's ``Tensor::FromProto``).
Tensors are answered with typed values, as TF Serving does, so that clients reading
``response.outputs[name].float_val`` work; ``tf.make_ndarray`` reads both.
"""

from __future__ import annotations

import numpy as np

from gateway.core.types import InferTensor
from gateway.datatypes import BYTES, DEFAULT_LIMITS, V2_TO_TF_DTYPE, RequestLimits, extend_repeated
from gateway.repository.tf_tensors import VALUES_FIELD, tensor_array
from protos import tfserving as pb
from protos.messages import ProtoMessage


def tf_dtype_number(datatype: str) -> int:
    """The ``tensorflow.DataType`` number of v2 ``datatype`` (e.g. 1, DT_FLOAT, for FP32)."""
    return int(pb.DataType.values_by_name[V2_TO_TF_DTYPE[datatype]].number)


def tensor_shape(shape: list[int]) -> ProtoMessage:
    """A ``TensorShapeProto`` of ``shape`` (-1: a size unknown until run time)."""
    message = pb.TensorShapeProto()
    for size in shape:
        message.dim.add(size=size)
    return message


def decode_tensor(name: str, tensor: ProtoMessage, limits: RequestLimits = DEFAULT_LIMITS) -> InferTensor:
    """The core's tensor for input ``name`` of a request.

    Raises:
        InvalidArgumentError: the tensor cannot be read (:func:`gateway.repository.tf_tensors.tensor_array`).
        PayloadTooLargeError: the shape declares more than ``limits.max_tensor_elements`` elements.
    """
    return InferTensor(name, *tensor_array(name, tensor, limits))


def encode_tensor(tensor: InferTensor) -> ProtoMessage:
    """A ``TensorProto`` of an output: dtype, shape, and its values in the typed field of its dtype."""
    message = pb.TensorProto(dtype=tf_dtype_number(tensor.datatype), tensor_shape=tensor_shape(list(tensor.shape)))
    field = VALUES_FIELD[tensor.datatype]
    data = tensor.data
    if tensor.datatype == "FP16":
        extend_repeated(message, field, data.astype(np.float16).view(np.uint16))
    elif tensor.datatype == BYTES:
        getattr(message, field).extend(item if isinstance(item, bytes) else str(item).encode() for item in data.ravel())
    else:
        extend_repeated(message, field, data)
    return message
