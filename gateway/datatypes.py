"""Tensor datatypes of the KServe v2 protocol and the codecs both transports share.

One table maps the v2 datatype names (KServe v2 protocol, "Tensor Data Types") to numpy dtypes and
back. The functions here turn wire values into numpy arrays and back, checking counts and ranges;
REST (JSON ``data`` lists) and gRPC (typed ``contents`` and ``raw_*_contents``) call the same ones.

BYTES tensors are numpy ``object`` arrays whose elements are ``bytes``. Their raw form is the
Triton/KServe length-prefixed layout: for each element, a 4-byte little-endian unsigned length
followed by that many bytes.

The request limits both transports enforce live here too, in one place (:class:`RequestLimits`):
the body size (REST bodies are read, and gzip or deflate bodies decompressed, by
:mod:`gateway.transports.rest.body`; gRPC messages are limited by grpc itself), the JSON nesting
depth, the number of input and output tensors, and the element count of each tensor's declared
shape, checked before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidArgumentError, PayloadTooLargeError
from gateway.settings import (
    DEFAULT_MAX_INPUTS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TENSOR_ELEMENTS,
    GatewaySettings,
)

BYTES = "BYTES"

#: Triton's binary tensor data extension (REST): the header giving the length in bytes of the JSON part
#: of a body, before the raw tensor data. The server's codec and the CLI's client both use it.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatype name -> numpy dtype. BYTES maps to ``object`` (elements are ``bytes``).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    BYTES: np.dtype(np.object_),
}

#: numpy dtype -> v2 datatype name; numpy's str and bytes dtypes are BYTES too.
NUMPY_TO_V2: dict[np.dtype[Any], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

#: v2 datatype name -> TensorFlow's ``DataType`` enum name (TF Serving's metadata and tensors).
V2_TO_TF_DTYPE: dict[str, str] = {
    "BOOL": "DT_BOOL",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    BYTES: "DT_STRING",
}

_BYTES_LENGTH = struct.Struct("<I")

# Which numpy kinds (as inferred from wire values) each dtype kind accepts without losing meaning.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a v2 datatype name, e.g. ``"FP32"`` -> ``float32``.

    Raises:
        InvalidArgumentError: the name is not a v2 datatype.
    """
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidArgumentError(f"unknown datatype '{datatype}'; expected one of {', '.join(V2_TO_NUMPY)}") from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name for a numpy dtype, e.g. ``int64`` -> ``"INT64"``; str and bytes -> BYTES.

    Raises:
        ValueError: numpy dtype with no v2 equivalent (complex, datetime, ...).
    """
    if dtype.kind in "SUO":
        return BYTES
    try:
        return NUMPY_TO_V2[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None


#: Largest int64: v2 shapes are int64 (gRPC ``repeated int64 shape``), and so are numpy's sizes.
INT64_MAX = 2**63 - 1

#: Up to this length, a JSON body's brackets are counted at once (cheaper than a few finds, see check_json_depth).
_SHORT_JSON_BYTES = 1024
# JSON depth scan: braces become brackets, every byte but brackets and quotes is dropped.
_DEPTH_TABLE = bytes.maketrans(b"{}", b"[]")
_DEPTH_DELETE = bytes(byte for byte in range(256) if byte not in b'[]{}"')


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The limits every inference request is held to, whatever its transport (the ``--max-*`` settings).

    Attributes:
        max_request_bytes: largest body in bytes, after decompression (REST), or gRPC message.
        max_tensor_elements: most elements one input tensor's shape may declare.
        max_json_depth: deepest nesting of JSON arrays and objects in a REST body.
        max_inputs: most input tensors, and most requested outputs, in one request.
    """

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_inputs: int = DEFAULT_MAX_INPUTS

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RequestLimits:
        """The limits the server's settings give."""
        return cls(
            max_request_bytes=settings.max_request_bytes,
            max_tensor_elements=settings.max_tensor_elements,
            max_json_depth=settings.max_json_depth,
            max_inputs=settings.max_inputs,
        )

    def check_tensor_counts(self, inputs: int, outputs: int) -> None:
        """Check the number of input tensors and of requested outputs of a request.

        Raises:
            PayloadTooLargeError: more than ``max_inputs`` of either (413 / RESOURCE_EXHAUSTED).
        """
        if inputs > self.max_inputs or outputs > self.max_inputs:
            which, count = ("inputs", inputs) if inputs > self.max_inputs else ("requested outputs", outputs)
            raise PayloadTooLargeError(f"the request has {count} {which}; the server accepts at most {self.max_inputs}")

    def check_json_depth(self, raw: bytes) -> None:
        """Check that a JSON text nests arrays and objects at most ``max_json_depth`` deep, without parsing it.

        A body with at most ``max_json_depth`` opening brackets cannot nest deeper: a short body's
        are counted with ``bytes.count``, a longer one's with ``bytes.find`` (memchr), stopping at one
        past the limit, so that a flat body costs a few finds whatever its size. Only a body with
        more opening brackets (e.g. nested lists of rows) is measured exactly, in one C-speed pass
        (strings, and escaped quotes in them, are skipped). Malformed JSON is left to the parser,
        unless its brackets do not balance.

        Raises:
            InvalidArgumentError: nested deeper than the limit, or brackets that do not balance (400).
        """
        limit = self.max_json_depth
        if len(raw) <= _SHORT_JSON_BYTES:
            if raw.count(b"[") + raw.count(b"{") > limit:
                _check_depth_exactly(raw, limit)
            return
        find = raw.find
        opens = 0
        for bracket in b"[{":
            at = find(bracket)
            while at >= 0:
                opens += 1
                if opens > limit:
                    _check_depth_exactly(raw, limit)
                    return
                at = find(bracket, at + 1)


#: The limits of a server started with default settings.
DEFAULT_LIMITS = RequestLimits()


def _check_depth_exactly(raw: bytes, max_depth: int) -> None:
    """Measure the nesting of ``raw`` (JSON) against ``max_depth``; see :meth:`RequestLimits.check_json_depth`."""
    if b"\\" in raw:
        # Escape sequences: drop escaped backslashes first, then escaped quotes; the quotes left delimit strings.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = raw.translate(_DEPTH_TABLE, _DEPTH_DELETE)
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])  # outside strings only
    # Each pass removes the innermost pairs, one level: a body of depth d is empty after d passes.
    for _ in range(max_depth):
        if not brackets:
            return
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            raise InvalidArgumentError("malformed JSON: its brackets do not balance")
        brackets = shorter
    if not brackets:
        return
    if brackets.count(b"[") != brackets.count(b"]"):
        raise InvalidArgumentError("malformed JSON: its brackets do not balance")
    raise InvalidArgumentError(f"the JSON body nests arrays and objects deeper than {max_depth} levels")


def element_count(shape: Sequence[int], tensor_name: str, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> int:
    """Number of elements of a tensor of ``shape``, checked before anything of that size is allocated.

    Every dim must be a non-negative integer whose product fits in an int64 (KServe v2 shapes are
    int64); the count must be at most ``max_elements``. For a tensor with a zero dim, the product of
    its other dims is held to the same bounds (numpy refuses such shapes past its address space).

    Raises:
        InvalidArgumentError: a dim is negative or not an integer, or the dims overflow int64 (400).
        PayloadTooLargeError: more than ``max_elements`` elements (413 / RESOURCE_EXHAUSTED).
    """
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise InvalidArgumentError(f"input '{tensor_name}': shape {list(shape)} must hold non-negative integers")
    count = math.prod(shape)
    if 0 < count <= max_elements:
        return count
    extent = count or math.prod(dim for dim in shape if dim)
    if extent > INT64_MAX:
        raise InvalidArgumentError(f"input '{tensor_name}': shape {list(shape)} overflows int64")
    if extent > max_elements:
        raise PayloadTooLargeError(
            f"input '{tensor_name}': shape {list(shape)} declares {extent} elements; the server accepts at most "
            f"{max_elements} per tensor (--max-tensor-elements)"
        )
    return count


def array_from_values(
    values: Any,
    datatype: str,
    shape: Sequence[int],
    tensor_name: str,
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> np.ndarray:
    """Build a tensor from wire values (JSON ``data``, flat or nested, or gRPC typed contents).

    Args:
        values: a flat or nested sequence of numbers, bools, or (for BYTES) str/bytes.
        datatype: the v2 datatype the client declared.
        shape: the shape the client declared; the values must hold exactly prod(shape) elements.
        tensor_name: used in error messages.
        max_elements: most elements the shape may declare (``--max-tensor-elements``).

    Returns:
        An array of ``shape`` and the dtype of ``datatype`` (BYTES: object array of bytes).

    Booleans mixed with numbers are read as 1 and 0, as numpy reads them; floats too large for
    FP16/FP32 become +-inf (IEEE rounding).

    Raises:
        InvalidArgumentError: wrong count, ragged nesting, values of the wrong kind (e.g. a float
            for INT32, a string for FP32, a number for BOOL) or integers out of the datatype's range;
            a bad shape (see :func:`element_count`).
        PayloadTooLargeError: the shape declares more than ``max_elements`` elements.
    """
    dtype = numpy_dtype(datatype)
    count = element_count(shape, tensor_name, max_elements)
    if datatype == BYTES:
        array = _bytes_array(values, tensor_name)
    else:
        array = _numeric_array(values, dtype, datatype, tensor_name)
    check_value_count(count, array.size, datatype, shape, tensor_name)
    return array.reshape(shape)


def check_value_count(count: int, given: int, datatype: str, shape: Sequence[int], tensor_name: str) -> None:
    """Check that a tensor's data holds the ``count`` elements its shape declares.

    Raises:
        InvalidArgumentError: ``given`` differs from ``count``.
    """
    if given != count:
        raise InvalidArgumentError(
            f"input '{tensor_name}': shape {list(shape)} of {datatype} needs {count} elements, data holds {given}"
        )


def array_from_raw(
    buffer: bytes | memoryview,
    datatype: str,
    shape: Sequence[int],
    tensor_name: str,
    max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> np.ndarray:
    """Build a tensor from its raw little-endian bytes (gRPC ``raw_input_contents``).

    The array shares memory with ``buffer`` (read-only) where the datatype allows; BYTES is parsed
    from the length-prefixed layout.

    Raises:
        InvalidArgumentError: the byte length does not match ``shape`` and ``datatype``, or the
            BYTES layout is truncated; a bad shape (see :func:`element_count`).
        PayloadTooLargeError: the shape declares more than ``max_elements`` elements.
    """
    dtype = numpy_dtype(datatype)
    count = element_count(shape, tensor_name, max_elements)
    if datatype == BYTES:
        array = _parse_length_prefixed(memoryview(buffer), count, tensor_name)
        return array.reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgumentError(
            f"input '{tensor_name}': shape {list(shape)} of {datatype} needs {expected} bytes, "
            f"raw contents hold {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


#: Protobuf scalar field types (descriptor.proto's FieldDescriptorProto.Type) stored as fixed-width
#: little-endian values, as numpy reads them: TYPE_DOUBLE (1) and TYPE_FLOAT (2).
_FIXED_WIDTH_FIELD_TYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f8"), 2: np.dtype("<f4")}
#: Fewer values than this go through a list: finding the packed bytes costs a few microseconds of
#: Python, more than a list of a few dozen floats (bench/grpc_contents.py).
_PACKED_FROM_VALUES = 64


def repeated_values(message: Any, field_name: str) -> Any:
    """The values of repeated scalar field ``field_name`` of protobuf ``message`` (gRPC typed contents).

    A ``float`` or ``double`` field (``fp32_contents``, ``fp64_contents``, TensorFlow's ``float_val``,
    ``double_val``) is read as a read-only numpy array (``<f4`` / ``<f8``) straight from its packed bytes
    in the serialized message: one copy, where a list makes a Python float per value (about 1 us
    against 40 us for 1,024 values, ``bench/grpc_contents.py``). Other fields, a field that is not
    packed, and fewer than 64 values come back as a list.
    """
    field = message.DESCRIPTOR.fields_by_name[field_name]
    dtype = _FIXED_WIDTH_FIELD_TYPES.get(field.type)
    if dtype is not None and len(getattr(message, field_name)) >= _PACKED_FROM_VALUES:
        packed = _packed_field(message.SerializeToString(), field.number)
        if packed is not None:
            return np.frombuffer(packed, dtype=dtype)
    return list(getattr(message, field_name))


def extend_repeated(message: Any, field_name: str, array: np.ndarray) -> None:
    """Append ``array``'s values (flattened) to repeated scalar field ``field_name`` of protobuf ``message``.

    A ``float`` or ``double`` field takes 64 values or more as packed bytes merged into the message
    (no Python float per value); other fields, and fewer values, go through a list.
    """
    field = message.DESCRIPTOR.fields_by_name[field_name]
    dtype = _FIXED_WIDTH_FIELD_TYPES.get(field.type)
    if dtype is None or array.size < _PACKED_FROM_VALUES:
        getattr(message, field_name).extend(array.ravel().tolist())
        return
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    message.MergeFromString(_varint((field.number << 3) | 2) + _varint(len(data)) + data)


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of ``value`` (>= 0)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` of ``data`` and the position after it."""
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _packed_field(serialized: bytes, number: int) -> bytes | None:
    """The packed bytes of repeated field ``number`` in a serialized message: ``b""`` when absent; None
    when it is stored unpacked (one record per value), which protobuf writes only for a field declared
    ``[packed = false]``."""
    position, found = 0, b""
    while position < len(serialized):
        key, position = _read_varint(serialized, position)
        wire_type = key & 7
        if wire_type == 2:  # length-delimited: packed values, strings, bytes, messages
            length, position = _read_varint(serialized, position)
            if key >> 3 == number:
                found += serialized[position : position + length]
            position += length
        elif key >> 3 == number:
            return None
        elif wire_type == 0:
            position = _read_varint(serialized, position)[1]
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:  # groups (3, 4) appear in no message the gateway reads
            return None
    return found


def array_to_raw(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor in C order (BYTES: length-prefixed elements)."""
    if array.dtype.kind in "SUO":
        parts: list[bytes] = []
        for item in array.ravel():
            data = _as_bytes(item)
            parts.append(_BYTES_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, np.bytes_ | np.str_):
        return _as_bytes(item.item())
    return str(item).encode("utf-8")


def _bytes_array(values: Any, tensor_name: str) -> np.ndarray:
    try:
        items = np.asarray(values, dtype=np.object_)
    except ValueError:
        raise InvalidArgumentError(f"input '{tensor_name}': data is ragged (nested lists of unequal length)") from None
    array = np.empty(items.size, dtype=np.object_)
    for index, item in enumerate(items.flat):
        if isinstance(item, str):
            array[index] = item.encode("utf-8")
        elif isinstance(item, bytes):
            array[index] = item
        else:
            raise InvalidArgumentError(
                f"input '{tensor_name}': BYTES data must hold strings, got {type(item).__name__}"
            )
    return array


def _parse_length_prefixed(buffer: memoryview, count: int, tensor_name: str) -> np.ndarray:
    array = np.empty(count, dtype=np.object_)
    offset = 0
    for index in range(count):
        if offset + 4 > len(buffer):
            raise InvalidArgumentError(
                f"input '{tensor_name}': BYTES raw contents end after {index} of {count} elements"
            )
        (length,) = _BYTES_LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise InvalidArgumentError(
                f"input '{tensor_name}': BYTES element {index} claims {length} bytes, "
                f"only {len(buffer) - offset} remain"
            )
        array[index] = bytes(buffer[offset : offset + length])
        offset += length
    if offset != len(buffer):
        raise InvalidArgumentError(
            f"input '{tensor_name}': BYTES raw contents hold {len(buffer) - offset} bytes past "
            f"the {count} elements of the shape"
        )
    return array


def _numeric_array(values: Any, dtype: np.dtype[Any], datatype: str, tensor_name: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidArgumentError(f"input '{tensor_name}': data is ragged (nested lists of unequal length)") from None
    if dtype.kind in "iu" and array.dtype.kind == "f":
        # numpy infers float64 for ints that span the int64 and uint64 ranges; keep them exact.
        exact = np.asarray(values, dtype=np.object_)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in exact.flat):
            array = exact
    elif array.size and array.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidArgumentError(
            f"input '{tensor_name}': data holds {_kind_name(array.dtype)} values, which do not fit datatype {datatype}"
        )
    if dtype.kind in "iu" and array.size:
        if array.dtype.kind == "f":
            raise InvalidArgumentError(
                f"input '{tensor_name}': data holds floating-point values, which do not fit datatype {datatype}"
            )
        _check_integer_range(array, dtype, datatype, tensor_name)
    return array.astype(dtype, copy=False)


def _check_integer_range(array: np.ndarray, dtype: np.dtype[Any], datatype: str, tensor_name: str) -> None:
    info = np.iinfo(dtype)
    low, high = int(array.min()), int(array.max())
    if low < info.min or high > info.max:
        raise InvalidArgumentError(
            f"input '{tensor_name}': values from {low} to {high} do not fit datatype {datatype} "
            f"[{info.min}, {info.max}]"
        )


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string"}.get(
        dtype.kind, str(dtype)
    )
