"""The hand-off between a front end and a model runner: tensors in shared memory, small messages on a socket.

A front end and a model runner talk over one Unix stream socket. Each message is a 4-byte
little-endian length and a JSON object; no message carries tensor bytes or anything pickled. The
tensors travel through shared memory: files under ``/dev/shm`` mapped by both processes (an
:class:`Arena`), written by one side into place and read by the other as numpy views.

- The front end creates one arena per connection, cut into slots (:class:`SlotArena`). A request
  takes a slot, its inputs are written at the slot's start, and the runner writes the outputs into
  the rest of the slot when they fit. A request whose inputs do not fit a slot (or that finds no
  slot free) gets a one-off arena of its own; outputs that do not fit the space left get a one-off
  arena made by the runner. The side that maps the other's one-off arena removes its name at once,
  so that nothing is left under ``/dev/shm`` by a process that dies; the slot arena's name is
  removed as soon as the runner has mapped it.
- A tensor is described by ``[name, datatype, shape, offset, nbytes]`` (v2 datatype names). Numeric
  tensors are laid out as numpy's C order, little-endian; BYTES tensors as the v2 binary layout
  (each element a 4-byte length and its bytes, :func:`gateway.datatypes.array_to_raw`).
- Times (deadlines, the time a request began to wait) are ``time.perf_counter()`` seconds: Linux's
  monotonic clock, the same in every process of the machine.

The messages (``op`` field, front end -> runner): ``hello`` (the slot arena's name), ``run`` (a
request: id, input descriptors, output names, batch size, deadline, queued since, where its outputs
may go, or the one-off arena of its inputs) and ``withdraw`` (a request's caller went away). Runner ->
front end: an answer per ``run`` (output descriptors, and the one-off arena holding them if any) or
an error (the error's class name and message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.datatypes import array_from_raw, array_to_raw, numpy_dtype, v2_datatype

#: Where the shared-memory files live (tmpfs; Python's ``multiprocessing.shared_memory`` uses it too).
SHARED_MEMORY_DIR = Path("/dev/shm")
#: Byte alignment of every tensor in an arena (a cache line; what SIMD loads like).
ALIGNMENT = 64
#: Bytes of one slot of a front end's arena: a request's inputs and outputs together.
SLOT_BYTES = 1 << 20
#: Slots in a front end's arena per runner connection. Pages are taken as they are first written, and
#: slots are reused last-freed first, so a connection holds only the pages its busiest moment used.
SLOT_COUNT = 64

_LENGTH = struct.Struct("<I")

#: A tensor's description in a message: name, v2 datatype, shape, byte offset in its arena, byte count.
Descriptor = list[Any]


def aligned(offset: int) -> int:
    """``offset`` rounded up to :data:`ALIGNMENT` bytes."""
    return -(-offset // ALIGNMENT) * ALIGNMENT


class Arena:
    """A shared-memory file mapped into this process.

    Use :meth:`create` or :meth:`attach`; :meth:`unlink` removes the name (the mappings stay valid),
    :meth:`close` unmaps once no view of it is left.

    Raises:
        OSError: the file cannot be made, opened or mapped (e.g. ``/dev/shm`` is full).
    """

    def __init__(self, name: str, size: int | None, reserve: bool = False) -> None:
        path = SHARED_MEMORY_DIR / name
        created = size is not None
        descriptor = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if created else 0), 0o600)
        try:
            if size is None:
                size = os.fstat(descriptor).st_size
            elif reserve:  # taken now: a full /dev/shm is an error here, not a SIGBUS at the first write
                os.posix_fallocate(descriptor, 0, size)
            else:
                os.ftruncate(descriptor, size)
            self.buffer = mmap.mmap(descriptor, size)
        except OSError:
            if created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        finally:
            os.close(descriptor)
        self.name = name
        self.size = size

    @classmethod
    def create(cls, size: int, reserve: bool = False) -> Arena:
        """A new arena of ``size`` bytes (at least 1), under a fresh name.

        ``reserve``: take all its pages now (a one-off arena about to be filled), so that a full
        ``/dev/shm`` raises ``OSError`` here; otherwise pages are taken as they are first written.
        """
        return cls(f"gateway-{os.getpid()}-{secrets.token_hex(8)}", max(size, 1), reserve)

    @classmethod
    def attach(cls, name: str) -> Arena:
        """The arena another process created under ``name``.

        Raises:
            OSError: there is none (``FileNotFoundError``), or it cannot be mapped.
        """
        if "/" in name or not name.startswith("gateway-"):
            raise FileNotFoundError(f"not a gateway shared-memory name: {name!r}")
        return cls(name, None)

    def unlink(self) -> None:
        """Remove the arena's name; mappings stay valid until closed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHARED_MEMORY_DIR / self.name)

    def close(self) -> None:
        """Unmap the arena; where views of it are still alive, they keep it mapped until they go."""
        with contextlib.suppress(BufferError):
            self.buffer.close()


def tensor_bytes(array: np.ndarray) -> bytes | None:
    """The bytes a BYTES tensor takes in an arena (the v2 binary layout); None for a numeric tensor."""
    return array_to_raw(array) if array.dtype.kind in "SUO" else None


def layout_size(tensors: Mapping[str, np.ndarray], raw: Mapping[str, bytes | None]) -> int:
    """Bytes ``tensors`` take when written one after the other, each aligned (``raw``: :func:`tensor_bytes` of each)."""
    total = 0
    for name, array in tensors.items():
        data = raw[name]
        total = aligned(total) + (len(data) if data is not None else array.nbytes)
    return aligned(total)


def write_tensors(
    buffer: mmap.mmap,
    offset: int,
    tensors: Mapping[str, np.ndarray],
    raw: Mapping[str, bytes | None] | None = None,
) -> list[Descriptor]:
    """Write ``tensors`` into ``buffer`` from ``offset`` on, each aligned; their descriptors.

    The caller has checked that :func:`layout_size` bytes fit from ``offset``.
    """
    descriptors: list[Descriptor] = []
    position = offset
    for name, array in tensors.items():
        position = aligned(position)
        data = raw[name] if raw is not None else tensor_bytes(array)
        if data is not None:
            buffer[position : position + len(data)] = data
            descriptors.append([name, "BYTES", list(array.shape), position, len(data)])
            position += len(data)
            continue
        target: np.ndarray = np.ndarray(array.shape, array.dtype.newbyteorder("<"), buffer=buffer, offset=position)
        target[...] = array
        descriptors.append([name, v2_datatype(array.dtype), list(array.shape), position, array.nbytes])
        position += array.nbytes
    return descriptors


def read_tensors(buffer: mmap.mmap, descriptors: Sequence[Descriptor], copy: bool = False) -> dict[str, np.ndarray]:
    """The tensors ``descriptors`` name in ``buffer``: views of it, or copies when ``copy`` is set.

    Raises:
        ValueError: a descriptor points outside the buffer or names an unknown datatype.
    """
    tensors: dict[str, np.ndarray] = {}
    view = memoryview(buffer)
    try:
        for name, datatype, shape, offset, nbytes in descriptors:
            if offset < 0 or offset + nbytes > len(buffer):
                raise ValueError(f"tensor {name!r} lies outside the shared memory ({offset}+{nbytes} > {len(buffer)})")
            if datatype == "BYTES":
                tensors[name] = array_from_raw(view[offset : offset + nbytes], "BYTES", shape, name)
                continue
            array: np.ndarray = np.ndarray(shape, numpy_dtype(datatype), buffer=buffer, offset=offset)
            tensors[name] = array.copy() if copy else array
    finally:
        view.release()
    return tensors


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next message from ``reader``.

    Raises:
        asyncio.IncompleteReadError: the other side closed the connection.
        ValueError: the message is not a JSON object.
    """
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    message = json.loads(await reader.readexactly(length))
    if not isinstance(message, dict):
        raise ValueError("a runner message must be a JSON object")
    return message


def frame(message: Mapping[str, Any]) -> bytes:
    """``message`` as sent on the socket: its length, then its JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


class FrameWriter:
    """Sends messages on one socket, the messages of one event-loop turn together (one system call per burst).

    A runner answering a batch, or a front end that read many requests in one turn, sends one write
    instead of one per message; a lone message waits only for the end of the current turn.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []

    def send(self, message: Mapping[str, Any]) -> None:
        """Queue ``message``; it is written at the end of this event-loop turn (dropped if the socket closed)."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame(message))

    def is_closing(self) -> bool:
        """Whether the socket is closed or closing (nothing sent any more)."""
        return self._writer.is_closing()

    def close(self) -> None:
        """Close the socket; queued messages are dropped."""
        self._pending.clear()
        self._writer.close()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        if data and not self._writer.is_closing():
            self._writer.write(data)


class SlotArena:
    """A front end's arena for one runner connection, cut into :data:`SLOT_COUNT` slots of :data:`SLOT_BYTES`.

    Raises:
        OSError: the arena cannot be made.
    """

    def __init__(self, slot_bytes: int = SLOT_BYTES, slot_count: int = SLOT_COUNT) -> None:
        self.arena = Arena.create(slot_bytes * slot_count)
        self.slot_bytes = slot_bytes
        # Free slots, the last freed on top: the pages of the slots in use stay few and warm.
        self._free = list(range(slot_count - 1, -1, -1))

    def take(self) -> int | None:
        """A free slot's number, or None when all are in use."""
        return self._free.pop() if self._free else None

    def give_back(self, slot: int) -> None:
        """Free ``slot``: nothing reads or writes it any more."""
        self._free.append(slot)
