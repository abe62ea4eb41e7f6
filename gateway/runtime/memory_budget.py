"""The memory budget: the resident bytes of the loaded model versions, their LRU order, and evictions.

Each loaded version has a :class:`VersionUsage`: its resident bytes, measured when it loaded (the
process's resident set size before and after the load, warmup included: :func:`resident_bytes`,
never less than its files' bytes), the peak its load reached above the start
(:func:`peak_resident_bytes`: a runtime holds the parsed file and the built weights at once while it
builds a session, about twice the file for ONNX Runtime), how many requests it is running or
holding in its queue, and when it was last asked to run one. A :class:`MemoryBudget` accounts for
every version from its load until its instances are released, and, when it has a limit, makes room
for a load (:meth:`MemoryBudget.make_room`) by evicting the least recently used idle versions of
other models: room for the load's peak, not only for what it keeps, so that the process's resident
set stays within the budget during loads too. A version with requests queued or running is never
evicted: the load waits for such versions to go idle, up to its deadline.

The budget counts the versions only by default. A budget that counts the process too
(``--memory-budget-scope gateway``: the whole gateway within a container's memory limit) leaves the
versions the limit less what the process holds of its own, measured at each room decision: its
resident set less the versions' bytes (the interpreter, the libraries, the servers, requests' buffers).

A GPU budget (``--gpu-memory-budget-bytes``) bounds what the versions hold on each CUDA device, the
same figure for every device: a version's GPU bytes are measured at its load too
(:mod:`gateway.runtime.gpu_memory`), and a load makes room on a device by evicting the least recently
used idle versions of other models that hold bytes there. A load is expected to need on each device
what the same version measured at its last load (nothing before its first: a first load that puts
the device over the budget evicts right after it, :meth:`MemoryBudget.make_room` with nothing needed).

Busy is counted by :meth:`MemoryBudget.enter` and :meth:`MemoryBudget.leave` around each run of a
version (:func:`gateway.core.pipeline.run_version`); a request takes its version from the repository
and enters it with no ``await`` between the two, so an eviction (which runs on the same event loop)
can never take a version a request has just been given.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gateway.metrics import Metrics
from gateway.runtime.gpu_memory import on_gpus, warn_if_unreadable

logger = logging.getLogger(__name__)

#: Seconds a load waits for busy versions to go idle when it has no deadline of its own.
DEFAULT_ROOM_WAIT_SECONDS = 30.0
#: Bytes from which glibc's malloc gives each block a mapping of its own, while a budget is set.
MMAP_THRESHOLD_BYTES = 1024 * 1024
#: glibc's ``mallopt`` parameter number of the mmap threshold (``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3


class MemoryBudgetError(Exception):
    """A model version cannot be loaded within the memory budget (the message says why, with the sizes)."""


class LargerThanBudgetError(MemoryBudgetError):
    """The version alone needs more bytes than the whole budget: no eviction can make room for it."""


class NoRoomError(MemoryBudgetError):
    """Only versions that stayed busy (or were finishing) could have made room in time: a later try may fit."""


@dataclass(eq=False, slots=True)  # compared and hashed by identity: one per loaded version
class VersionUsage:
    """What one loaded version holds of the budget and how it is used.

    Attributes:
        model, version: the version.
        resident_bytes: bytes it holds, measured at load (0 for a pipeline, which holds no instances).
        load_peak_bytes: the most bytes its load held at once above the start (0 when unknown).
        gpu_bytes: bytes it holds on each CUDA device (device number -> bytes), measured at load; empty on the CPU.
        inflight: its requests queued or running now.
        last_used: when a request last began to run on it (``time.monotonic()`` seconds; its load's end
            before that).
        serving: whether the repository routes requests to it (False once it is evicted or retired).
    """

    model: str
    version: int
    resident_bytes: int
    load_peak_bytes: int = 0
    gpu_bytes: dict[int, int] = field(default_factory=dict)
    inflight: int = 0
    last_used: float = 0.0
    serving: bool = True

    def __post_init__(self) -> None:
        self.last_used = time.monotonic()


class MemoryBudget:
    """The resident bytes of the loaded versions, and the choice of versions to evict for a load.

    With a limit, the C heap's mmap threshold is fixed at :data:`MMAP_THRESHOLD_BYTES` for the whole
    process (glibc's ``mallopt``). glibc otherwise raises the threshold after a large block is freed
    (up to 32 MiB), so that later large blocks, such as a model's weights, come from the heap, where
    a block freed next to live ones can stay resident: then an evicted version's bytes do not all go
    back, and a load's measure may count a neighbour's (measured: one load in ten counted twice its
    bytes). With the threshold fixed, every block from 1 MiB has its own mapping, returned when freed.

    Args:
        limit_bytes: bytes the versions may hold together; None: no limit (versions are still
            accounted, so that their resident bytes are shown).
        metrics: where ``gateway_model_resident_bytes`` is published (None: nowhere).
        counts_process: whether ``limit_bytes`` bounds the process's whole resident set: then the
            versions may hold the limit less what the process holds of its own (:meth:`models_limit_bytes`).
        gpu_limit_bytes: bytes the versions may hold together on each CUDA device (None: no limit).
    """

    def __init__(
        self,
        limit_bytes: int | None,
        metrics: Metrics | None = None,
        counts_process: bool = False,
        gpu_limit_bytes: int | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.counts_process = counts_process
        self.gpu_limit_bytes = gpu_limit_bytes
        warn_if_unreadable(gpu_limit_bytes)
        if limit_bytes is not None:
            mallopt = _libc_function("mallopt")
            if mallopt is not None:
                mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        self._metrics = metrics
        # Loads add versions from their worker thread; everything else runs on the event loop.
        self._lock = threading.Lock()
        self._usages: list[VersionUsage] = []
        self._changed = asyncio.Event()

    @property
    def has_limit(self) -> bool:
        """Whether the budget limits anything: a memory limit, a GPU limit, or both."""
        return self.limit_bytes is not None or self.gpu_limit_bytes is not None

    def used_bytes(self) -> int:
        """Bytes the accounted versions hold together (those serving, and those retired but not yet released)."""
        with self._lock:
            return sum(usage.resident_bytes for usage in self._usages)

    def own_bytes(self) -> int:
        """The bytes the process holds of its own: its resident set less the accounted versions' bytes (at least 0)."""
        return max(resident_bytes() - self.used_bytes(), 0)

    def models_limit_bytes(self) -> int | None:
        """The bytes the versions may hold together now: the limit, less :meth:`own_bytes` when the budget counts
        the process (at least 0); None without a limit."""
        if self.limit_bytes is None or not self.counts_process:
            return self.limit_bytes
        return max(self.limit_bytes - self.own_bytes(), 0)

    def add(self, usage: VersionUsage) -> None:
        """Account for a version that has just loaded (may be called from a loading thread)."""
        with self._lock:
            self._usages.append(usage)
        self._publish(usage)

    def remove(self, usage: VersionUsage) -> None:
        """Stop accounting for a version whose instances were released; loads waiting for room look again."""
        usage.serving = False
        with self._lock:
            if usage not in self._usages:
                return
            self._usages.remove(usage)
        self._publish(usage)
        self._notify()

    @staticmethod
    def enter(usage: VersionUsage) -> None:
        """A request begins to run on the version (queued or running): it is busy, and the most recently used."""
        usage.inflight += 1
        usage.last_used = time.monotonic()

    def leave(self, usage: VersionUsage) -> None:
        """A request of the version has finished; once none is left, loads waiting for room look again."""
        usage.inflight -= 1
        if usage.inflight == 0:
            self._notify()

    async def make_room(
        self,
        model: str,
        needed_bytes: int,
        evict: Callable[[VersionUsage], Awaitable[None]],
        deadline: float | None,
        needed_gpu_bytes: Mapping[int, int] | None = None,
    ) -> None:
        """Evict least recently used idle versions of other models until ``needed_bytes`` more fit the budget,
        and ``needed_gpu_bytes`` more fit the GPU budget of each device.

        Versions of ``model`` itself are left alone (the load replaces or keeps them). A version with
        requests queued or running is never evicted: while only such versions (or versions retired
        and still finishing their requests) could free enough, this waits for them, up to ``deadline``.
        Only a device over its GPU budget makes versions holding nothing there candidates: none is
        evicted for a device it holds no bytes on. Without limits this returns at once.

        Args:
            model: the model being loaded.
            needed_bytes: the bytes the load is expected to add (its files' bytes before a first load).
            evict: takes a version out of service and returns once its instances are released (and it
                was :meth:`remove`\\ d); called on the event loop.
            deadline: until when to wait for busy versions, in ``time.perf_counter()`` seconds (None:
                :data:`DEFAULT_ROOM_WAIT_SECONDS` from now).
            needed_gpu_bytes: the bytes the load is expected to add on each CUDA device (None: none).

        When the budget counts the process, the versions' share (:meth:`models_limit_bytes`) is taken
        again after each eviction.

        Raises:
            LargerThanBudgetError: ``needed_bytes`` exceeds the whole budget (less what the process holds
                of its own, when the budget counts it), or the bytes needed on a device its GPU budget.
            NoRoomError: the deadline passed with too few bytes free, or only ``model``'s own versions
                hold the rest of the budget.
        """
        budget, limit, gpu_limit = self.limit_bytes, self.models_limit_bytes(), self.gpu_limit_bytes
        needed_gpu = dict(needed_gpu_bytes or {})
        if limit is None and gpu_limit is None:
            return
        if budget is not None and limit is not None and needed_bytes > limit:
            raise LargerThanBudgetError(
                f"model '{model}' needs about {needed_bytes} bytes, {more_than_share(limit, budget)}"
            )
        larger_on = gpu_devices_over(gpu_limit, [], needed_gpu)  # a device alone cannot hold it
        if larger_on:
            assert gpu_limit is not None
            device = larger_on[0]
            raise LargerThanBudgetError(
                f"model '{model}' needs about {needed_gpu[device]} bytes on GPU {device}, "
                f"{more_than_gpu_budget(gpu_limit)}"
            )
        if self.counts_process and needed_bytes > 0:
            logger.info(
                "memory budget: the gateway holds %d bytes of its own; the models may hold %d of the %d-byte budget",
                self.own_bytes(),
                limit,
                budget,
            )
        if deadline is None:
            deadline = time.perf_counter() + DEFAULT_ROOM_WAIT_SECONDS
        while True:
            with self._lock:
                usages = list(self._usages)
            used = sum(usage.resident_bytes for usage in usages)
            memory_over = limit is not None and used + needed_bytes > limit
            devices_over = gpu_devices_over(gpu_limit, [usage.gpu_bytes for usage in usages], needed_gpu)
            if not memory_over and not devices_over:
                return
            others = [
                usage
                for usage in usages
                if usage.model != model and (memory_over or any(usage.gpu_bytes.get(d) for d in devices_over))
            ]
            if memory_over:
                assert budget is not None and limit is not None
                needs, held = f"about {needed_bytes} bytes", f"{used} of {budget_share(limit, budget)}"
            else:
                assert gpu_limit is not None
                device = devices_over[0]
                used_there = sum(usage.gpu_bytes.get(device, 0) for usage in usages)
                needs = f"about {needed_gpu.get(device, 0)} bytes on GPU {device}"
                held = f"{used_there} of the GPU memory budget's {gpu_limit} bytes there"
            idle = [usage for usage in others if usage.serving and usage.inflight == 0]
            if idle:
                await evict(min(idle, key=lambda usage: usage.last_used))
            elif not others:
                raise NoRoomError(f"model '{model}' needs {needs} and {held} are held by its own versions")
            elif not await self._wait_for_change(deadline):
                busy = ", ".join(sorted({f"{usage.model} version {usage.version}" for usage in others}))
                raise NoRoomError(
                    f"model '{model}' needs {needs}; {held} are held by versions that stayed busy ({busy}); retry later"
                )
            if self.counts_process:  # what the process holds of its own changes as versions go
                limit = self.models_limit_bytes()

    async def _wait_for_change(self, deadline: float) -> bool:
        """Wait until a version goes idle or is released, or until ``deadline``; whether one did."""
        changed = self._changed
        timeout = deadline - time.perf_counter()
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _publish(self, usage: VersionUsage) -> None:
        """Set ``gateway_model_resident_bytes`` of the version's labels to what its accounted copies hold."""
        if self._metrics is None:
            return
        with self._lock:
            total = sum(
                other.resident_bytes
                for other in self._usages
                if (other.model, other.version) == (usage.model, usage.version)
            )
        self._metrics.resident_bytes.labels(usage.model, str(usage.version)).set(total)
        for device in usage.gpu_bytes:
            with self._lock:
                on_device = sum(
                    other.gpu_bytes.get(device, 0)
                    for other in self._usages
                    if (other.model, other.version) == (usage.model, usage.version)
                )
            self._metrics.gpu_bytes.labels(usage.model, str(usage.version), str(device)).set(on_device)


def budget_share(share_bytes: int, budget_bytes: int) -> str:
    """How a message names the bytes the models may hold: the whole budget, or what the gateway leaves of it
    (``share_bytes`` less than ``budget_bytes``, with ``--memory-budget-scope gateway``)."""
    if share_bytes >= budget_bytes:
        return f"the memory budget's {budget_bytes} bytes"
    return f"the {share_bytes} bytes the memory budget of {budget_bytes} bytes leaves to the models"


def more_than_share(share_bytes: int, budget_bytes: int) -> str:
    """The end of a :class:`LargerThanBudgetError`'s message: more than the models may hold (:func:`budget_share`)."""
    if share_bytes >= budget_bytes:
        return f"more than the whole memory budget of {budget_bytes} bytes"
    return f"more than {budget_share(share_bytes, budget_bytes)} (the gateway's own processes hold the rest)"


def eviction_told(
    limit_bytes: int | None, gpu_limit_bytes: int | None, held_bytes: int, gpu_bytes: Mapping[int, int], idle: float
) -> str:
    """How an eviction is logged, after what was evicted: "evicted to make room within the memory budget of N bytes:
    it held M bytes and was last used S s ago", the GPU budget and the GPU bytes held named where there are any.

    Args:
        limit_bytes, gpu_limit_bytes: the memory budget and the GPU budget per device (None: none).
        held_bytes, gpu_bytes: what the evicted version (or runner) held: bytes, and bytes by CUDA device.
        idle: seconds since it last began a request.
    """
    budgets = [f"the memory budget of {limit_bytes} bytes"] if limit_bytes is not None else []
    if gpu_limit_bytes is not None:
        budgets.append(f"the GPU memory budget of {gpu_limit_bytes} bytes per device")
    return (
        f"evicted to make room within {' and '.join(budgets)}: it held {held_bytes} bytes{on_gpus(gpu_bytes)} and "
        f"was last used {idle:.1f} s ago"
    )


def more_than_gpu_budget(gpu_limit_bytes: int) -> str:
    """The end of the error of a version larger than the GPU budget: "more than the GPU memory budget of N bytes..."."""
    return f"more than the GPU memory budget of {gpu_limit_bytes} bytes per device"


def gpu_devices_over(
    gpu_limit_bytes: int | None, held: Iterable[Mapping[int, int]], needed: Mapping[int, int]
) -> list[int]:
    """The CUDA devices where the bytes ``held`` (one mapping device -> bytes per version or runner) and the bytes
    ``needed`` do not fit ``gpu_limit_bytes`` together, in order; [] without a limit."""
    if gpu_limit_bytes is None:
        return []
    totals = dict(needed)
    for holding in held:
        for device, bytes_ in holding.items():
            totals[device] = totals.get(device, 0) + bytes_
    return sorted(device for device, total in totals.items() if total > gpu_limit_bytes)


def resident_bytes() -> int:
    """This process's resident set size now, in bytes (``/proc/self/statm``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def private_bytes() -> int:
    """The bytes this process holds of its own: the pages it wrote that no other process maps, resident or
    in swap (``Private_Dirty`` and ``Swap`` of ``/proc/self/smaps_rollup``; 0 where it cannot be read).

    Pages shared with the fork server (the preloaded modules) count once the process writes to them.
    Clean file pages (a library's code) do not count: the page cache holds them once for every process
    that maps them, and the kernel may drop them."""
    total = 0
    try:
        with open("/proc/self/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith((b"Private_Dirty:", b"Swap:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def proportional_set_bytes(pid: int) -> int:
    """The proportional set size of process ``pid`` in bytes: its resident pages, each divided by the number of
    processes mapping it, so that the figures of several processes add up (``Pss`` of
    ``/proc/<pid>/smaps_rollup``; 0 where it cannot be read, e.g. the process has exited)."""
    return _kilobytes_field(f"/proc/{pid}/smaps_rollup", b"Pss:")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (children, their children...), from ``/proc/<pid>/task/*/children``;
    a process that exits meanwhile is left out with what is under it."""
    found = [pid]
    for parent in found:  # grows as children are found
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as children:
                    found += [int(child) for child in children.read().split()]
            except (OSError, ValueError):
                continue
    return found


def reset_peak_resident() -> None:
    """Start a new peak for :func:`peak_resident_bytes` (``/proc/self/clear_refs``; a no-op where not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size
    except OSError:
        pass


def peak_resident_bytes() -> int:
    """This process's peak resident set size since start or :func:`reset_peak_resident`, in bytes
    (``VmHWM`` in ``/proc/self/status``; 0 where it cannot be read)."""
    return _kilobytes_field("/proc/self/status", b"VmHWM:")


def _kilobytes_field(path: str, field: bytes) -> int:
    """The ``field`` line (e.g. ``b"VmHWM:"``, a figure in kB) of the /proc file ``path``, in bytes; 0 where the
    file or the field cannot be read."""
    try:
        with open(path, "rb") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def release_freed_memory() -> None:
    """Collect garbage, then hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Without the trim, the pages a released ONNX Runtime session or torch module freed stay in the
    process (glibc keeps them for later allocations), so the resident set does not come down after
    an eviction. Elsewhere than glibc only the garbage is collected.
    """
    gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name`` (glibc's ``malloc_trim``, ``mallopt``), or None where it has none."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    return function
