"""Unit tests of gateway.datatypes: the v2 <-> numpy table and the value and raw codecs."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.datatypes import (
    NUMPY_TO_V2,
    V2_TO_NUMPY,
    array_from_raw,
    array_from_values,
    array_to_raw,
    extend_repeated,
    numpy_dtype,
    repeated_values,
    v2_datatype,
)
from gateway.errors import InvalidArgumentError

ALL_DATATYPES = [
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
NUMERIC_DATATYPES = [name for name in ALL_DATATYPES if name != "BYTES"]

# A small 2x3 sample per numeric datatype, with each type's extremes where they matter.
SAMPLES: dict[str, list[list[object]]] = {
    "BOOL": [[True, False, True], [False, False, True]],
    "INT8": [[-128, 0, 127], [1, -1, 5]],
    "INT16": [[-(2**15), 0, 2**15 - 1], [1, -1, 5]],
    "INT32": [[-(2**31), 0, 2**31 - 1], [1, -1, 5]],
    "INT64": [[-(2**63), 0, 2**63 - 1], [1, -1, 5]],
    "UINT8": [[0, 1, 255], [2, 3, 4]],
    "UINT16": [[0, 1, 2**16 - 1], [2, 3, 4]],
    "UINT32": [[0, 1, 2**32 - 1], [2, 3, 4]],
    "UINT64": [[0, 1, 2**64 - 1], [2, 3, 4]],
    "FP16": [[0.5, -1.0, 65504.0], [0.0, 2.25, -0.125]],
    "FP32": [[0.5, -1.0, 3.0e38], [0.0, 2.25, -0.125]],
    "FP64": [[0.5, -1.0, 1.0e300], [0.0, 2.25, -0.125]],
}


def raises_naming_input(name: str = "x") -> pytest.RaisesExc[InvalidArgumentError]:
    """pytest.raises for an InvalidArgumentError whose message names input ``name``."""
    return pytest.raises(InvalidArgumentError, match=f"input '{name}'")


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


# --- the datatype table ------------------------------------------------------------------------


def test_table_covers_the_13_v2_datatypes() -> None:
    assert sorted(V2_TO_NUMPY) == sorted(ALL_DATATYPES)


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_table_round_trips(datatype: str) -> None:
    assert NUMPY_TO_V2[V2_TO_NUMPY[datatype]] == datatype
    assert v2_datatype(numpy_dtype(datatype)) == datatype


@pytest.mark.parametrize("dtype", [np.dtype("<U5"), np.dtype("S3"), np.dtype(object)])
def test_v2_datatype_maps_str_bytes_and_object_to_bytes(dtype: np.dtype) -> None:
    assert v2_datatype(dtype) == "BYTES"


@pytest.mark.parametrize(("dtype", "expected"), [(">i4", "INT32"), (">f8", "FP64"), (">u2", "UINT16")])
def test_v2_datatype_names_big_endian_dtypes(dtype: str, expected: str) -> None:
    assert v2_datatype(np.dtype(dtype)) == expected


@pytest.mark.parametrize("dtype", ["complex64", "datetime64[s]"])
def test_v2_datatype_rejects_dtypes_without_v2_name(dtype: str) -> None:
    with pytest.raises(ValueError, match="no KServe v2 datatype"):
        v2_datatype(np.dtype(dtype))


def test_numpy_dtype_of_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(InvalidArgumentError, match="FLOAT") as info:
        numpy_dtype("FLOAT")
    for name in ALL_DATATYPES:
        assert name in info.value.message


# --- array_from_values -------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_values_nested_and_flat_give_the_same_array(datatype: str) -> None:
    nested = SAMPLES[datatype]
    flat = [value for row in nested for value in row]
    from_nested = array_from_values(nested, datatype, [2, 3], "x")
    from_flat = array_from_values(flat, datatype, [2, 3], "x")
    assert from_nested.dtype == V2_TO_NUMPY[datatype]
    assert from_nested.shape == (2, 3)
    np.testing.assert_array_equal(from_nested, from_flat, strict=True)
    np.testing.assert_array_equal(from_flat, np.array(nested, dtype=V2_TO_NUMPY[datatype]), strict=True)


def test_values_bool_from_json_bools() -> None:
    array = array_from_values([True, False, True], "BOOL", [3], "x")
    assert array.dtype == np.bool_
    assert array.tolist() == [True, False, True]


def test_values_uint64_max_is_exact() -> None:
    array = array_from_values([2**64 - 1], "UINT64", [1], "x")
    assert int(array[0]) == 2**64 - 1


def test_values_uint64_max_mixed_with_small_ints_is_exact() -> None:
    array = array_from_values([0, 2**64 - 1, 7], "UINT64", [3], "x")
    assert array.dtype == np.uint64
    assert [int(value) for value in array] == [0, 2**64 - 1, 7]


def test_values_int64_min_mixed_with_small_ints_is_exact() -> None:
    array = array_from_values([-(2**63), 5, 2**63 - 1], "INT64", [3], "x")
    assert array.dtype == np.int64
    assert [int(value) for value in array] == [-(2**63), 5, 2**63 - 1]


def test_values_spanning_int64_and_uint64_do_not_fit_int64() -> None:
    with raises_naming_input():
        array_from_values([-1, 2**64 - 1], "INT64", [2], "x")


def test_values_ragged_nesting_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*ragged"):
        array_from_values([[1, 2], [3]], "INT32", [3], "x")


def test_values_ragged_bytes_nesting_is_rejected() -> None:
    with raises_naming_input():
        array_from_values([["a", "b"], ["c"]], "BYTES", [3], "x")


@pytest.mark.parametrize(("datatype", "values"), [("INT32", [1, 2, 3]), ("BYTES", ["a", "b", "c"])])
def test_values_wrong_count_is_rejected(datatype: str, values: list[object]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*needs 4 elements, data holds 3"):
        array_from_values(values, datatype, [2, 2], "x")


@pytest.mark.parametrize("datatype", ["INT32", "UINT64", "INT8"])
def test_values_floats_for_integers_are_rejected(datatype: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*floating-point"):
        array_from_values([1.5, 2.0], datatype, [2], "x")


def test_values_integral_floats_for_int32_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*floating-point"):
        array_from_values([1.0, 2.0], "INT32", [2], "x")


@pytest.mark.parametrize("datatype", ["FP32", "INT32"])
def test_values_strings_for_numbers_are_rejected(datatype: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*string"):
        array_from_values(["1.5", "2"], datatype, [2], "x")


@pytest.mark.parametrize("datatype", ["INT32", "UINT8", "FP32", "FP64"])
def test_values_booleans_for_numbers_are_rejected(datatype: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*boolean"):
        array_from_values([True, False], datatype, [2], "x")


@pytest.mark.parametrize(("datatype", "values"), [("INT32", [True, 2]), ("FP32", [True, 2.5])])
def test_values_booleans_mixed_with_numbers_read_as_one_and_zero(datatype: str, values: list[object]) -> None:
    assert array_from_values(values, datatype, [2], "x").tolist() == [1, values[1]]


@pytest.mark.parametrize("values", [[0, 1], [1.0, 0.0]])
def test_values_numbers_for_bool_are_rejected(values: list[object]) -> None:
    with raises_naming_input():
        array_from_values(values, "BOOL", [2], "x")


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("INT8", [300]), ("INT8", [-129]), ("UINT8", [-1]), ("UINT8", [256]), ("UINT64", [2**64]), ("INT32", [2**31])],
)
def test_values_out_of_range_integers_are_rejected(datatype: str, values: list[int]) -> None:
    with raises_naming_input():
        array_from_values(values, datatype, [1], "x")


def test_values_out_of_range_message_gives_the_range() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*300.*INT8 \[-128, 127\]"):
        array_from_values([1, 300], "INT8", [2], "x")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_values_too_large_for_fp16_round_to_infinity() -> None:
    assert array_from_values([1.0e6, -1.0e6], "FP16", [2], "x").tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("shape", [[-1, 2], [2, -3], [1.0, 2], [True], ["2"]])
def test_values_negative_or_non_integer_dims_are_rejected(shape: list[object]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*non-negative integers"):
        array_from_values([1, 2], "INT32", shape, "x")


def test_values_error_names_the_given_input() -> None:
    with raises_naming_input("pixel_values"):
        array_from_values([1.5], "INT32", [1], "pixel_values")


def test_values_bytes_from_str_are_utf8_encoded() -> None:
    array = array_from_values(["héllo", "", "日本"], "BYTES", [3], "x")
    assert array.dtype == np.object_
    assert array.tolist() == ["héllo".encode(), b"", "日本".encode()]


def test_values_bytes_from_bytes_are_kept() -> None:
    array = array_from_values([[b"\xff\x00", b"ab"]], "BYTES", [1, 2], "x")
    assert array.shape == (1, 2)
    assert array.tolist() == [[b"\xff\x00", b"ab"]]


def test_values_bytes_from_numbers_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*BYTES data must hold strings"):
        array_from_values([1, 2], "BYTES", [2], "x")


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_values_empty_tensor(datatype: str) -> None:
    array = array_from_values([], datatype, [0, 3], "x")
    assert array.shape == (0, 3)
    assert array.dtype == V2_TO_NUMPY[datatype]


# --- array_from_raw / array_to_raw -------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_raw_round_trip_numeric(datatype: str) -> None:
    array = np.array(SAMPLES[datatype], dtype=V2_TO_NUMPY[datatype])
    raw = array_to_raw(array)
    assert len(raw) == array.size * array.itemsize
    np.testing.assert_array_equal(array_from_raw(raw, datatype, [2, 3], "x"), array, strict=True)


def test_raw_numeric_is_little_endian() -> None:
    assert array_to_raw(np.array([1, 2], dtype=np.int32)) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    np.testing.assert_array_equal(array_from_raw(b"\x01\x00\x00\x00", "INT32", [1], "x"), [1])


def test_raw_round_trip_bytes_with_empty_and_non_utf8_elements() -> None:
    array = np.array([[b"abc", b""], [b"\xff\xfe\x00", "日本".encode()]], dtype=np.object_)
    raw = array_to_raw(array)
    assert raw == length_prefixed(b"abc", b"", b"\xff\xfe\x00", "日本".encode())
    decoded = array_from_raw(raw, "BYTES", [2, 2], "x")
    assert decoded.dtype == np.object_
    assert decoded.tolist() == array.tolist()


def test_raw_bytes_from_numpy_str_array_is_utf8() -> None:
    assert array_to_raw(np.array(["é", "ab"])) == length_prefixed("é".encode(), b"ab")


def test_raw_fortran_order_encodes_as_c_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    assert not array.flags.c_contiguous
    assert array_to_raw(array) == np.arange(6, dtype="<i2").tobytes()


def test_raw_bytes_fortran_order_encodes_as_c_order() -> None:
    array = np.asfortranarray(np.array([[b"a", b"b"], [b"c", b"d"]], dtype=np.object_))
    assert array_to_raw(array) == length_prefixed(b"a", b"b", b"c", b"d")


@pytest.mark.parametrize("dtype", [">i4", ">f8", ">u8", ">f2"])
def test_raw_big_endian_encodes_as_little_endian(dtype: str) -> None:
    values = [[1, 2, 3], [4, 5, 250]]
    big = np.array(values, dtype=dtype)
    little = np.array(values, dtype=np.dtype(dtype).newbyteorder("<"))
    assert array_to_raw(big) == little.tobytes()


@pytest.mark.parametrize(
    "buffer",
    [
        b"\x03\x00",  # length prefix cut short
        struct.pack("<I", 5) + b"abc",  # element shorter than its length
        length_prefixed(b"ab"),  # one element of the two the shape needs
    ],
)
def test_raw_truncated_bytes_are_rejected(buffer: bytes) -> None:
    with raises_naming_input():
        array_from_raw(buffer, "BYTES", [2], "x")


def test_raw_bytes_past_the_last_element_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*past"):
        array_from_raw(length_prefixed(b"ab", b"c") + b"\x00", "BYTES", [2], "x")


@pytest.mark.parametrize(
    ("datatype", "shape", "length"),
    [("FP32", [2], 7), ("FP32", [2], 9), ("INT64", [1], 0), ("UINT8", [2, 4], 3), ("FP16", [4], 16)],
)
def test_raw_wrong_byte_length_is_rejected(datatype: str, shape: list[int], length: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*needs 8 bytes"):
        array_from_raw(b"\x00" * length, datatype, shape, "x")


def test_raw_wrong_byte_length_message() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"input 'x': shape \[3\] of FP32 needs 12 bytes, raw contents hold 8"
    ):
        array_from_raw(b"\x00" * 8, "FP32", [3], "x")


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_raw_empty_tensor(datatype: str) -> None:
    array = array_from_raw(b"", datatype, [0, 3], "x")
    assert array.shape == (0, 3)
    assert array.dtype == V2_TO_NUMPY[datatype]


def test_raw_negative_dim_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input 'x'.*non-negative integers"):
        array_from_raw(b"", "FP32", [-1], "x")


@settings(database=None, deadline=None, max_examples=60)
@given(data=st.data())
@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_raw_round_trip_property(datatype: str, data: st.DataObject) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), label="shape")
    array = data.draw(hnp.arrays(V2_TO_NUMPY[datatype], shape), label="array")
    decoded = array_from_raw(array_to_raw(array), datatype, array.shape, "x")
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype
    # Byte-exact, so NaN payloads and -0.0 count too.
    assert decoded.tobytes() == array.tobytes()


# -- typed gRPC contents read from and written as packed bytes -------------------------------------------------

FLOAT_FIELDS = [  # (message class, field, dtype): the KServe v2 and TF Serving typed float fields
    ("protos.inference", "InferTensorContents", "fp32_contents", np.float32),
    ("protos.inference", "InferTensorContents", "fp64_contents", np.float64),
    ("protos.tfserving", "TensorProto", "float_val", np.float32),
    ("protos.tfserving", "TensorProto", "double_val", np.float64),
]


def _message_class(module: str, name: str) -> Any:
    import importlib

    from protos.messages import message_class

    importlib.import_module(module)  # builds the pool's messages
    full_name = {"InferTensorContents": "inference.InferTensorContents", "TensorProto": "tensorflow.TensorProto"}
    return message_class(full_name[name])


@pytest.mark.parametrize(("module", "name", "field", "dtype"), FLOAT_FIELDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_float_contents_read_from_their_packed_bytes_equal_protobufs_own_values(
    module: str, name: str, field: str, dtype: type, data: st.DataObject
) -> None:
    # Fewer than 64 values go through a list, 64 and more are read from the packed bytes: both sides.
    values = data.draw(hnp.arrays(dtype, st.integers(0, 150), elements=hnp.from_dtype(np.dtype(dtype))))
    cls = _message_class(module, name)
    message = cls.FromString(_with_neighbours(cls, field, values))
    read = repeated_values(message, field)
    assert isinstance(read, np.ndarray) == (len(values) >= 64)
    assert np.asarray(read, dtype=dtype).tobytes() == np.array(list(getattr(message, field)), dtype=dtype).tobytes()
    written = cls()
    extend_repeated(written, field, values)
    assert np.array(list(getattr(written, field)), dtype=dtype).tobytes() == values.tobytes()


def _with_neighbours(cls: Any, field: str, values: np.ndarray) -> bytes:
    """A message holding ``values`` in ``field`` and values in fields around it, so that the reader must skip them."""
    message = cls()
    getattr(message, field).extend(values.tolist())
    if cls.DESCRIPTOR.name == "InferTensorContents":
        message.int_contents.extend([1, -2, 300])
        message.bytes_contents.append(b"xy")
    else:
        message.dtype = 1
        message.tensor_shape.dim.add(size=len(values))
        message.int64_val.extend([5, -6])
        message.string_val.append(b"z")
    return bytes(message.SerializeToString())


def test_float_values_serialized_unpacked_are_read_through_the_list() -> None:
    cls = _message_class("protos.inference", "InferTensorContents")
    number = cls.DESCRIPTOR.fields_by_name["fp32_contents"].number
    values = [float(value) for value in range(70)]
    # One record per value (wire type 5), as protobuf writes a field declared [packed = false].
    wire = b"".join(bytes([number << 3 | 5]) + struct.pack("<f", value) for value in values)
    message = cls.FromString(wire)

    class Serialized:  # the message, serialized as given
        DESCRIPTOR = cls.DESCRIPTOR
        fp32_contents = message.fp32_contents
        serialized = wire

        def SerializeToString(self) -> bytes:
            return self.serialized

    assert repeated_values(Serialized(), "fp32_contents") == values
    assert repeated_values(message, "fp32_contents").tolist() == values  # protobuf serializes it packed
    assert repeated_values(cls(int_contents=list(range(70))), "int_contents") == list(range(70))
    # Fields of every wire type before the packed field are skipped: varint, fixed64, fixed32, bytes.
    neighbours = bytes([9 << 3 | 0, 0x96, 0x01, 10 << 3 | 1]) + b"\x01\x02\x03\x04\xff\xff\xff\x7f"
    neighbours += bytes([11 << 3 | 5]) + bytes(4) + bytes([12 << 3 | 2, 2]) + b"ab"
    packed = struct.pack(f"<{len(values)}f", *values)
    fake = Serialized()
    fake.serialized = neighbours + bytes([number << 3 | 2, 0x80 | len(packed) & 0x7F, len(packed) >> 7]) + packed
    assert repeated_values(fake, "fp32_contents").tolist() == values
