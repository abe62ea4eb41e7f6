"""Triton's system shared memory extension: tensors read from and written to regions of POSIX shared memory.

A client on the same machine creates a POSIX shared memory object (``shm_open``; on Linux the file
``/dev/shm/<key>``), as ``tritonclient.utils.shared_memory.create_shared_memory_region`` does, and
registers a region of it under a name: the object's key, the region's offset in it and its size in
bytes. An inference request then names a region in an input's parameters instead of sending the
data (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset`` from the
region's start, default 0), and the input is read from there; an output whose requested parameters
name a region is written there, and the answer carries those parameters instead of the data.

:class:`SharedMemoryRegistry` holds the regions of one server process: the transports call it to
register, list and unregister regions (REST ``/v2/systemsharedmemory/...``, gRPC
``SystemSharedMemory*``) and to read inputs while decoding; the data plane writes the outputs. Every
access is checked against the region's bounds; data is copied in and out, so a region can be
unregistered at any time. CUDA shared memory is not supported.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gateway.datatypes import DEFAULT_LIMITS, array_from_raw, array_to_raw
from gateway.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, NotSupportedError

#: Where Linux keeps POSIX shared memory objects (``shm_open("/key")`` is ``/dev/shm/key``).
POSIX_SHM_ROOT = Path("/dev/shm")

#: The parameters of an input or requested output that place it in a region (Triton's names).
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """A registered region: its name, the key of its shared memory object, its offset there and its size (bytes)."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class _Region:
    status: RegionStatus
    mapping: mmap.mmap
    start: int  # the region's first byte in the mapping (mappings start at a page boundary)


def refuse_cuda_shared_memory() -> NoReturn:
    """Answer a CUDA shared memory request (Triton's CUDA shared memory extension is not supported).

    Raises:
        NotSupportedError: always (400 / UNIMPLEMENTED), with what to use instead.
    """
    raise NotSupportedError(
        "CUDA shared memory is not supported: the gateway passes tensors through host memory; use system "
        "shared memory (tritonclient.utils.shared_memory) or send the data in the request"
    )


def uses_shared_memory(parameters: Mapping[str, Any]) -> bool:
    """Whether a tensor's parameters place it in a shared memory region."""
    return REGION in parameters


class SharedMemoryRegistry:
    """The system shared memory regions registered with this server process.

    Args:
        root: the folder holding the POSIX shared memory objects (``/dev/shm`` on Linux).
        enabled: False in a worker process of ``--workers N``: a region registered with one
            worker would be unknown to the others, so registering is refused there.
    """

    def __init__(self, root: Path = POSIX_SHM_ROOT, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the shared memory object ``key`` as region ``name``.

        Args:
            name: the region's name, as requests will give it.
            key: the object's key as given to ``shm_open`` (``/input0``; the leading slash is optional).
            offset, byte_size: where the region lies in the object, in bytes.

        Raises:
            InvalidArgumentError: an empty name, a key that is not a plain name, a negative offset,
                a size below 1, no such object, or a region past the object's end.
            AlreadyExistsError: a region of that name is registered (409 / ALREADY_EXISTS).
            NotSupportedError: a worker process of ``--workers N`` (see the class).
        """
        if not self.enabled:
            raise NotSupportedError(
                "system shared memory needs a single gateway process: with --workers N a region registered "
                "with one worker is unknown to the others; serve without --workers to use it"
            )
        if not name:
            raise InvalidArgumentError("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExistsError(f"shared memory region '{name}' is registered already; unregister it first")
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgumentError(f"shared memory region '{name}': {what} must be a non-negative integer")
        if byte_size < 1:
            raise InvalidArgumentError(f"shared memory region '{name}': byte_size must be at least 1")
        object_name = key.removeprefix("/")
        if not object_name or "/" in object_name or object_name in (".", "..") or "\0" in object_name:
            raise InvalidArgumentError(f"shared memory key {key!r} is not a POSIX shared memory object name (/name)")
        try:
            descriptor = os.open(self.root / object_name, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as error:
            raise InvalidArgumentError(
                f"cannot open the shared memory object '{key}' of region '{name}': {error.strerror}"
            ) from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgumentError(f"the shared memory object '{key}' is not a regular object")
            if offset + byte_size > info.st_size:
                raise InvalidArgumentError(
                    f"shared memory region '{name}' ({byte_size} bytes at offset {offset}) runs past the end of "
                    f"the object '{key}' ({info.st_size} bytes)"
                )
            aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapping = mmap.mmap(descriptor, offset - aligned + byte_size, offset=aligned)
        finally:
            os.close(descriptor)
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping, offset - aligned)

    def unregister(self, name: str | None = None) -> None:
        """Unregister region ``name``, or every region when ``name`` is None or empty (Triton's meaning).

        A name that is not registered is not an error, as in Triton.
        """
        names = list(self._regions) if not name else [name]
        for region_name in names:
            region = self._regions.pop(region_name, None)
            if region is not None:
                region.mapping.close()

    def status(self, name: str | None = None) -> list[RegionStatus]:
        """The registered regions, or the one named.

        Raises:
            NotFoundError: no region ``name`` is registered.
        """
        if not name:
            return [region.status for region in self._regions.values()]
        return [self._region(name).status]

    def read_input(
        self,
        tensor_name: str,
        datatype: str,
        shape: Sequence[int],
        parameters: Mapping[str, Any],
        max_elements: int = DEFAULT_LIMITS.max_tensor_elements,
    ) -> np.ndarray:
        """The input tensor a request places in a region (a copy of its bytes, as :func:`array_from_raw` reads them).

        Raises:
            InvalidArgumentError: bad or missing parameters, an unknown region, a range past the
                region's end, or bytes that do not match the datatype and shape.
            PayloadTooLargeError: the shape declares more than ``max_elements`` elements.
        """
        region, offset, byte_size = self._location("input", tensor_name, parameters)
        start = region.start + offset
        return array_from_raw(region.mapping[start : start + byte_size], datatype, shape, tensor_name, max_elements)

    def write_output(self, tensor_name: str, data: np.ndarray, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Write an output into the region its requested parameters name.

        Returns:
            The output's parameters for the answer: the region, the bytes written and the offset.

        Raises:
            InvalidArgumentError: bad or missing parameters, an unknown region, a range past the
                region's end, or an output larger than the requested byte size.
        """
        region, offset, byte_size = self._location("output", tensor_name, parameters)
        raw = array_to_raw(data)
        if len(raw) > byte_size:
            raise InvalidArgumentError(
                f"output '{tensor_name}' is {len(raw)} bytes; the {byte_size} bytes of shared memory region "
                f"'{region.status.name}' asked for it cannot hold it"
            )
        start = region.start + offset
        region.mapping[start : start + len(raw)] = raw
        answer: dict[str, Any] = {REGION: region.status.name, BYTE_SIZE: len(raw)}
        if offset:
            answer[OFFSET] = offset
        return answer

    def close(self) -> None:
        """Unregister every region (the server is stopping)."""
        self.unregister()

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            registered = ", ".join(self._regions) or "none"
            raise NotFoundError(f"no shared memory region '{name}' is registered (registered: {registered})")
        return region

    def _location(self, kind: str, tensor_name: str, parameters: Mapping[str, Any]) -> tuple[_Region, int, int]:
        """The region, offset and byte size a tensor's parameters name, checked against the region's bounds."""
        name = parameters.get(REGION)
        if not isinstance(name, str):
            raise InvalidArgumentError(f"{kind} '{tensor_name}': {REGION} must be a region name")
        values: dict[str, int] = {}
        for key, default in ((BYTE_SIZE, None), (OFFSET, 0)):
            value = parameters.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgumentError(f"{kind} '{tensor_name}': {key} must be a non-negative integer")
            values[key] = value
        region = self._region(name)
        offset, byte_size = values[OFFSET], values[BYTE_SIZE]
        if offset + byte_size > region.status.byte_size:
            raise InvalidArgumentError(
                f"{kind} '{tensor_name}': {byte_size} bytes at offset {offset} run past the end of shared memory "
                f"region '{name}' ({region.status.byte_size} bytes)"
            )
        return region, offset, byte_size
