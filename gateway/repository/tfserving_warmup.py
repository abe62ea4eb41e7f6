"""TF Serving's warmup file: a SavedModel's ``assets.extra/tf_serving_warmup_requests``.

TF Serving runs the requests in this file before a SavedModel version serves
(tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc, and "SavedModel Warmup" in its
docs). The file is a TFRecord file (tensorflow/core/lib/io/record_writer.cc: per record, its length as a
little-endian uint64, the masked CRC-32C of those 8 bytes as a uint32, the record's bytes, their masked
CRC-32C) of ``tensorflow.serving.PredictionLog`` messages (tensorflow_serving/apis/prediction_log.proto),
as ``tf.io.TFRecordWriter`` writes them. The gateway runs each record's ``predict_log.request`` inputs
once, as a warmup request (:mod:`gateway.runtime.warmup`); a record of another log type (classify,
regress, multi-inference, session run) is refused with its number, as is a damaged file. At most
:data:`MAX_RECORDS` records, TF Serving's limit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from google.protobuf.message import DecodeError

from gateway.errors import GatewayError
from gateway.repository.tf_tensors import tensor_array
from gateway.runtime.warmup import WarmupError, WarmupRequest, checked_sample
from protos import tfserving as pb

#: Where a SavedModel keeps its warmup requests (relative to the SavedModel's folder).
TF_SERVING_WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
#: The most records TF Serving reads from the file (kMaxNumRecords in saved_model_warmup_util.cc).
MAX_RECORDS = 1000

_HEADER = struct.Struct("<QI")  # record length, masked CRC-32C of the length's 8 bytes
_FOOTER = struct.Struct("<I")  # masked CRC-32C of the record's bytes


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of ``data``: ``((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(data: bytes, label: str) -> Iterator[bytes]:
    """The records of a TFRecord file's bytes, their framing and checksums checked.

    Raises:
        WarmupError: a record is cut short, or a checksum does not match (the message gives its number).
    """
    offset, number = 0, 0
    while offset < len(data):
        number += 1
        if number > MAX_RECORDS:
            raise WarmupError(f"{label}: more than {MAX_RECORDS} records (TF Serving's limit)")
        if offset + _HEADER.size > len(data):
            raise WarmupError(f"{label}: record {number} is cut short (not a TFRecord file?)")
        length, length_crc = _HEADER.unpack_from(data, offset)
        if masked_crc32c(data[offset : offset + 8]) != length_crc:
            raise WarmupError(f"{label}: record {number}: its length's checksum does not match (not a TFRecord file?)")
        start = offset + _HEADER.size
        end = start + length
        if end + _FOOTER.size > len(data):
            raise WarmupError(f"{label}: record {number} is cut short ({length} bytes announced)")
        record = data[start:end]
        if masked_crc32c(record) != _FOOTER.unpack_from(data, end)[0]:
            raise WarmupError(f"{label}: record {number}: its checksum does not match (the file is damaged)")
        yield record
        offset = end + _FOOTER.size


def read_tf_serving_warmup(saved_model: Path, inputs: Mapping[str, tuple[str, Sequence[int]]]) -> list[WarmupRequest]:
    """The warmup requests of TF Serving's warmup file in SavedModel folder ``saved_model`` (empty if none).

    Args:
        saved_model: the SavedModel's folder (the one holding ``saved_model.pb``).
        inputs: per model input name (the signature's input keys), its v2 datatype and full shape.

    Returns:
        One request per record, in file order, named ``assets.extra/tf_serving_warmup_requests record <n>``.

    Raises:
        WarmupError: the file cannot be read or is damaged, a record is not a PredictLog, or its
            tensors cannot be read or do not fit the inputs; the message gives the record's number.
    """
    path = saved_model / TF_SERVING_WARMUP_FILE
    if not path.is_file():
        return []
    label = TF_SERVING_WARMUP_FILE.as_posix()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WarmupError(f"{label} cannot be read: {error}") from None
    requests = []
    for number, record in enumerate(_records(data, label), start=1):
        where = f"{label} record {number}"
        log = pb.PredictionLog()
        try:
            log.ParseFromString(record)
        except DecodeError as error:
            raise WarmupError(f"{where} is not a PredictionLog: {error}") from None
        if not log.HasField("predict_log"):
            raise WarmupError(
                f"{where} holds no predict_log: only PredictLog records are run as warmup (not classify, regress, "
                "multi-inference or session run logs)"
            )
        arrays = {}
        for name, tensor in log.predict_log.request.inputs.items():
            try:
                arrays[name] = tensor_array(name, tensor)[2]
            except GatewayError as error:
                raise WarmupError(f"{where}: {error}") from None
        requests.append(WarmupRequest(where, checked_sample(where, arrays, inputs)))
    return requests
