"""Warmup: requests a version runs on every instance before it is ready, so its first clients wait for no
lazy initialisation (ONNX Runtime's arena growth, torch's first-call compilation, TensorFlow's graph tracing).

As Triton's ``model_warmup`` and TF Serving's warmup requests: a version that has not run its warmup
requests is not ready and gets no traffic (the repository runs :func:`run_warmup` before the version
enters routing, so on a reload the old version keeps serving until the new one is warm), and a warmup
request that fails fails the load.

The requests are, in this order of preference:

- the samples shipped with the version: ``warmup/*.npz`` in the version folder, one request per file
  in file-name order, each holding one array per model input (keys: the input names; full shapes with
  the batch dimension; numeric arrays of the input's datatype, BYTES as numpy ``bytes`` or ``object``
  arrays), as :func:`read_warmup_samples` reads them;
- else requests generated from the version's signature (:func:`generated_requests`): every input at
  batch 1 and at ``max_batch_size`` (one request when the model has no batch dimension), variable
  dimensions at 1, zeros of the declared datatype (BYTES: empty strings).
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends import Backend
from gateway.datatypes import BYTES, numpy_dtype

#: The folder of a version that holds its warmup samples (``warmup/*.npz``).
WARMUP_FOLDER = "warmup"


class WarmupError(Exception):
    """A warmup sample cannot be read or does not fit the model, or a warmup request failed; the message says which."""


@dataclass(frozen=True, slots=True)
class WarmupRequest:
    """One warmup request: where it comes from (for messages) and one array per model input.

    Attributes:
        name: e.g. ``generated, batch 8`` or ``warmup/first.npz``.
        inputs: per input name, an array of its full shape (batch dimension included) and dtype.
    """

    name: str
    inputs: dict[str, np.ndarray]


def zeros(datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An array of ``shape`` of zeros of v2 ``datatype`` (BYTES: an ``object`` array of empty ``bytes``)."""
    if datatype == BYTES:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(datatype))


def generated_requests(inputs: Mapping[str, tuple[str, Sequence[int]]], max_batch_size: int) -> list[WarmupRequest]:
    """Warmup requests generated from a signature: zeros at batch 1 and at ``max_batch_size``.

    Args:
        inputs: per input name, its v2 datatype and full shape as clients see it (``-1``: a variable
            size; the first dim is the batch when ``max_batch_size > 0``).
        max_batch_size: the version's max_batch_size (0: no batch dimension: one request).

    Returns:
        One request per batch size (1, then ``max_batch_size`` when larger), variable dims at 1,
        arrays of zeros of each input's dtype (BYTES: ``object`` arrays of ``b""``).
    """
    batch_sizes = sorted({1, max_batch_size}) if max_batch_size > 0 else [0]
    requests = []
    for batch in batch_sizes:
        arrays = {}
        for name, (datatype, shape) in inputs.items():
            dims = [1 if dim < 0 else dim for dim in shape]
            if batch:
                dims[0] = batch
            arrays[name] = zeros(datatype, dims)
        requests.append(WarmupRequest(f"generated, batch {batch}" if batch else "generated", arrays))
    return requests


def read_warmup_samples(version_path: Path, inputs: Mapping[str, tuple[str, Sequence[int]]]) -> list[WarmupRequest]:
    """The warmup samples shipped in ``<version_path>/warmup/*.npz``, in file-name order (empty if none).

    Each file is one request: ``numpy.savez(path, **{input_name: array})``, arrays of full shape. The
    files are read without pickle (``allow_pickle=False``): a BYTES input is stored as a numpy bytes
    array (``np.array([b"a", b"bc"])``, dtype ``S``) and handed to the model as an ``object`` array.

    Args:
        version_path: the version folder.
        inputs: per model input name, its v2 datatype and full shape (-1: variable), to check each sample.

    Raises:
        WarmupError: a file cannot be read, or its arrays do not match the inputs (missing or
            unknown names, another dtype, rank or fixed size); the message names the file.
    """
    folder = version_path / WARMUP_FOLDER
    if not folder.is_dir():
        return []
    requests = []
    for path in sorted(folder.glob("*.npz")):
        label = f"{WARMUP_FOLDER}/{path.name}"
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise WarmupError(f"warmup sample {label} cannot be read: {error}") from None
        requests.append(WarmupRequest(label, checked_sample(label, arrays, inputs)))
    return requests


def checked_sample(
    label: str, arrays: Mapping[str, np.ndarray], inputs: Mapping[str, tuple[str, Sequence[int]]]
) -> dict[str, np.ndarray]:
    """The arrays of one warmup request, checked against the model's inputs.

    Args:
        label: where the request comes from, for messages (e.g. ``warmup/a.npz``).
        arrays: per input name, its array; a BYTES input as a numpy bytes array (dtype ``S``) or an
            ``object`` array of ``bytes``.
        inputs: per model input name, its v2 datatype and full shape (-1: variable).

    Returns:
        The arrays, BYTES ones as ``object`` arrays of ``bytes``.

    Raises:
        WarmupError: missing or unknown input names, another dtype, rank or fixed size; the message
            names ``label`` and the input.
    """
    missing, unknown = sorted(set(inputs) - set(arrays)), sorted(set(arrays) - set(inputs))
    if missing or unknown:
        raise WarmupError(
            f"warmup sample {label}: "
            + "; ".join(
                part
                for part in (
                    f"missing input(s) {', '.join(missing)}" if missing else "",
                    f"unknown input(s) {', '.join(unknown)}" if unknown else "",
                )
                if part
            )
            + f" (the model's inputs: {', '.join(inputs)})"
        )
    checked = {}
    for name, (datatype, shape) in inputs.items():
        array = arrays[name]
        if datatype == BYTES:
            if array.dtype.kind not in "SO":
                raise WarmupError(f"warmup sample {label}: input {name} is BYTES; store it as a numpy bytes array")
            array = array.astype(object)
        elif array.dtype != numpy_dtype(datatype):
            raise WarmupError(
                f"warmup sample {label}: input {name} has dtype {array.dtype}, the model takes {datatype} "
                f"({numpy_dtype(datatype)})"
            )
        if len(array.shape) != len(shape) or any(
            want >= 0 and have != want for have, want in zip(array.shape, shape, strict=True)
        ):
            raise WarmupError(
                f"warmup sample {label}: input {name} has shape {list(array.shape)}, the model takes "
                f"{list(shape)} (-1: any size)"
            )
        checked[name] = array
    return checked


def run_warmup(instances: Sequence[Backend], requests: Sequence[WarmupRequest], output_names: Sequence[str]) -> float:
    """Blocking: run every warmup request on every instance, in order.

    Args:
        instances: the version's backend instances (each is warmed up: each has its own session).
        requests: the warmup requests (:func:`read_warmup_samples`, else :func:`generated_requests`).
        output_names: the outputs to compute (the version's served outputs).

    Returns:
        The wall-clock seconds the warmup took.

    Raises:
        WarmupError: a request failed on an instance; the message names the request and the error.
    """
    started = time.perf_counter()
    for index, instance in enumerate(instances):
        for request in requests:
            try:
                instance.run(request.inputs, output_names)
            except Exception as error:  # any failure of the runtime is the load's failure, with its reason
                where = f" on instance {index}" if len(instances) > 1 else ""
                raise WarmupError(f"warmup request ({request.name}) failed{where}: {error}") from None
    return time.perf_counter() - started
