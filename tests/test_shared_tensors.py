"""The shared-memory hand-off's parts: tensors in an arena, messages on a socket, in one process."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.datatypes import V2_TO_NUMPY
from gateway.runtime.shared_tensors import (
    ALIGNMENT,
    SHARED_MEMORY_DIR,
    Arena,
    FrameWriter,
    frame,
    layout_size,
    read_message,
    read_tensors,
    tensor_bytes,
    write_tensors,
)

NUMERIC = [dtype for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"]


@pytest.fixture
def arena() -> Iterator[Arena]:
    created = Arena.create(1 << 20)
    yield created
    created.unlink()
    created.close()


@given(
    arrays=st.lists(
        st.sampled_from(NUMERIC).flatmap(
            lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
        ),
        min_size=1,
        max_size=4,
    ),
    start=st.integers(0, 8).map(lambda slots: slots * ALIGNMENT),  # slots and layouts start aligned
)
def test_numeric_tensors_come_back_bit_for_bit_and_aligned(arrays: list[np.ndarray], start: int) -> None:
    arena = Arena.create(1 << 16)
    try:
        tensors = {f"t{index}": array for index, array in enumerate(arrays)}
        raw = {name: tensor_bytes(array) for name, array in tensors.items()}
        descriptors = write_tensors(arena.buffer, start, tensors, raw)
        assert all(offset % ALIGNMENT == 0 for _, _, _, offset, _ in descriptors)
        assert descriptors[-1][3] + descriptors[-1][4] <= start + layout_size(tensors, raw)
        back = read_tensors(arena.buffer, descriptors, copy=True)
        for name, array in tensors.items():
            assert back[name].dtype == array.dtype and back[name].shape == array.shape
            assert back[name].tobytes() == array.tobytes()  # NaN and -0.0 too
    finally:
        arena.unlink()
        arena.close()


def test_bytes_tensors_and_views(arena: Arena) -> None:
    words = np.array([[b"", "héllo".encode(), b"x" * 5000]], dtype=object)
    numbers = np.arange(6, dtype=np.float32).reshape(2, 3)
    descriptors = write_tensors(arena.buffer, 0, {"words": words, "numbers": numbers})
    back = read_tensors(arena.buffer, descriptors)
    assert back["words"].tolist() == words.tolist()
    np.testing.assert_array_equal(back["numbers"], numbers)
    numbers_view = back["numbers"]
    arena.buffer[descriptors[1][3] : descriptors[1][3] + 4] = np.float32(42).tobytes()
    assert numbers_view[0, 0] == 42  # a view of the shared memory, not a copy


def test_descriptors_outside_the_arena_are_refused(arena: Arena) -> None:
    with pytest.raises(ValueError, match="outside the shared memory"):
        read_tensors(arena.buffer, [["x", "FP32", [4], arena.size - 8, 16]])
    with pytest.raises(ValueError, match="outside the shared memory"):
        read_tensors(arena.buffer, [["x", "FP32", [4], -64, 16]])


def test_another_process_arena_is_attached_by_name_and_only_ours(arena: Arena) -> None:
    arena.buffer[:5] = b"hello"
    other = Arena.attach(arena.name)
    assert other.buffer[:5] == b"hello" and other.size == arena.size
    other.close()
    for name in ("../etc/passwd", "not-ours", "gateway-1/../../x"):
        with pytest.raises(FileNotFoundError):
            Arena.attach(name)
    arena.unlink()
    assert not (SHARED_MEMORY_DIR / arena.name).exists()
    arena.buffer[:5] = b"still"  # the mapping outlives the name


def test_reserved_arenas_fail_cleanly_when_shared_memory_is_short() -> None:
    free = os.statvfs(SHARED_MEMORY_DIR)
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    before = set(os.listdir(SHARED_MEMORY_DIR))
    with pytest.raises(OSError):
        Arena.create(too_big, reserve=True)
    assert set(os.listdir(SHARED_MEMORY_DIR)) == before  # nothing left behind


def test_messages_of_one_turn_travel_in_one_write() -> None:
    asyncio.run(_messages_of_one_turn())


async def _messages_of_one_turn() -> None:
    left, right = socket.socketpair()
    reader, left_writer = await asyncio.open_connection(sock=left)
    right_reader, writer = await asyncio.open_connection(sock=right)
    sender = FrameWriter(writer)
    sender.send({"op": "run", "id": 1})
    sender.send({"op": "withdraw", "id": 1})
    with pytest.raises(BlockingIOError):  # nothing written before the turn ends
        left.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    await asyncio.sleep(0)  # the turn ends: both go out, in one write
    assert await read_message(reader) == {"op": "run", "id": 1}
    assert await read_message(reader) == {"op": "withdraw", "id": 1}
    reader.feed_data(frame([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON object"):
        await read_message(reader)
    sender.close()
    left_writer.close()
    assert not right_reader.at_eof()
