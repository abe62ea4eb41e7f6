"""Configured warmup requests (``warmup:`` as a list in config.yaml, Triton's ``model_warmup``) made into
the warmup requests a version runs before it is ready (:mod:`gateway.runtime.warmup`).

Each configured request (:class:`gateway.repository.config.WarmupRequestConfig`) gives per input its
datatype, the dims of one item and its data: zeros, seeded random values, or a file in the model
folder's ``warmup/`` folder holding one item's raw bytes (row-major, little-endian; BYTES as 4-byte
little-endian lengths each followed by the element's bytes), as Triton's model configuration docs
("Model Warmup") describe. The item is repeated ``batch_size`` times along a new first dimension
(``batch_size`` 0: the item is the request, for a model without a batch dimension), and the request
runs ``count`` times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gateway.datatypes import BYTES, array_from_raw, numpy_dtype
from gateway.errors import GatewayError
from gateway.repository.config import WarmupInput, WarmupRequestConfig
from gateway.runtime.warmup import WarmupError, WarmupRequest, checked_sample, zeros

#: The folder of a model (beside its version folders) holding the files of its configured warmup inputs.
WARMUP_DATA_FOLDER = "warmup"


def configured_requests(
    configured: Sequence[WarmupRequestConfig], model_path: Path, inputs: Mapping[str, tuple[str, Sequence[int]]]
) -> list[WarmupRequest]:
    """The warmup requests of a version's configured ones, each repeated ``count`` times, in order.

    Args:
        configured: the config's ``warmup`` list.
        model_path: the model's folder (its ``warmup/`` folder holds the input data files).
        inputs: per model input name, its v2 datatype and full shape (-1: variable), to check each request.

    Raises:
        WarmupError: a data file is missing, unreadable or of the wrong size, or a request does not
            fit the model's inputs; the message names the request (and the input).
    """
    requests = []
    for number, request in enumerate(configured):
        label = f"warmup request '{request.name}'"
        arrays = {
            name: _batched(_item(label, name, data, model_path, seed=number), request.batch_size)
            for name, data in request.inputs.items()
        }
        checked = checked_sample(label, arrays, inputs)
        requests += [WarmupRequest(label, checked)] * request.count
    return requests


def _item(label: str, name: str, data: WarmupInput, model_path: Path, seed: int) -> np.ndarray:
    """One item of input ``name``: zeros, seeded random values, or the data file's contents."""
    if data.input_data_file is not None:
        path = model_path / WARMUP_DATA_FOLDER / data.input_data_file
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise WarmupError(
                f"{label}: input {name}: {WARMUP_DATA_FOLDER}/{data.input_data_file}: {error.strerror}"
            ) from None
        try:
            return array_from_raw(raw, data.datatype, data.dims, name)
        except GatewayError as error:
            raise WarmupError(f"{label}: {WARMUP_DATA_FOLDER}/{data.input_data_file}: {error}") from None
    if data.zero_data or data.datatype == BYTES:  # BYTES: empty strings (random text means nothing to a model)
        return zeros(data.datatype, data.dims)
    dtype = numpy_dtype(data.datatype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.random(data.dims).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, data.dims).astype(bool)
    return rng.integers(0, 100, data.dims).astype(dtype)  # small values fit every integer type


def _batched(item: np.ndarray, batch_size: int) -> np.ndarray:
    """``item`` repeated ``batch_size`` times along a new first dimension (0: the item itself)."""
    if batch_size == 0:
        return item
    return np.repeat(item[np.newaxis, ...], batch_size, axis=0)
