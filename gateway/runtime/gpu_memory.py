"""GPU memory held by this process, per CUDA device, read from NVIDIA's management library (NVML).

A version that runs on a GPU holds device memory besides its host memory: ONNX Runtime's CUDA arena
(its weights and the buffers of its calls), torch's caching allocator, and the CUDA context of the
process (about 300-500 MB, paid by the first version a process puts on a device). None of them tells
it all through a Python API, so the gateway reads what the driver reports (:func:`read_gpu_memory`)
before and after a load; the difference is the version's GPU bytes (:func:`version_gpu_bytes`): the
growth of what the driver lists for this process (``nvmlDeviceGetComputeRunningProcesses``), so that
processes loading on the same device at once do not count each other's bytes.

NVML comes with the driver; its Python binding is ``nvidia-ml-py`` (the ``gpu`` extra). Without
either, or without a GPU, :func:`read_gpu_memory` reads nothing and versions hold no GPU bytes.
Devices are numbered as CUDA numbers them in this process, ``CUDA_VISIBLE_DEVICES`` applied (NVML's
own order is the machine's). In a container that does not share the host's PID namespace, NVML lists
the host's PIDs and this process never finds its own: then a version that runs on a GPU counts the
growth of its devices' used memory instead (right for a container given its GPUs to itself, as a
Kubernetes pod is; another process loading on the same device at once would be counted too).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuMemoryReading:
    """GPU memory at one moment, by CUDA device number (bytes).

    Attributes:
        process: what this process holds on each device where NVML lists it (devices where it holds
            nothing are left out; empty also where NVML cannot see this process's PID).
        device: each device's used memory, every process's.
    """

    process: dict[int, int]
    device: dict[int, int]


def read_gpu_memory() -> GpuMemoryReading:
    """What this process and each CUDA device it sees hold now; empty readings without NVML or a GPU.

    Never raises: an NVML error is logged once and read as empty.
    """
    devices = _devices()
    if not devices:
        return GpuMemoryReading({}, {})
    import pynvml

    try:
        device = {number: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) for number, handle in enumerate(devices)}
        process = processes_gpu_bytes({os.getpid()})
    except pynvml.NVMLError as error:
        _warn_once(f"NVML cannot tell the GPU memory in use ({error}): versions count no GPU bytes")
        return GpuMemoryReading({}, {})
    return GpuMemoryReading(process, device)


def processes_gpu_bytes(pids: Collection[int]) -> dict[int, int]:
    """The bytes the processes ``pids`` hold together on each CUDA device this process sees, as NVML lists
    them (devices where they hold nothing are left out; ``{}`` without NVML or a GPU).

    Raises:
        pynvml.NVMLError: NVML failed to list a device's processes.
    """
    import pynvml

    held: dict[int, int] = {}
    for number, handle in enumerate(_devices()):
        used = sum(
            entry.usedGpuMemory or 0
            for entry in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            if entry.pid in pids
        )
        if used:
            held[number] = used
    return held


def on_gpus(gpu_bytes: Mapping[int, int]) -> str:
    """How a message or a log line adds GPU bytes after host bytes: ``", N on GPU d"`` per device, in order."""
    return "".join(f", {bytes_} on GPU {device}" for device, bytes_ in sorted(gpu_bytes.items()))


def warn_if_unreadable(gpu_budget_bytes: int | None) -> None:
    """Log a warning when a GPU budget is set but NVML cannot read GPU memory here (no ``nvidia-ml-py``, no
    driver, or no GPU): versions then count no GPU bytes, and the budget never evicts."""
    if gpu_budget_bytes is not None and not _devices():
        logger.warning(
            "gpu-memory-budget-bytes is set, but NVML cannot read GPU memory here (it needs nvidia-ml-py, the gpu "
            "extra, an NVIDIA driver and a GPU): versions count no GPU bytes and the GPU budget evicts nothing"
        )


def version_gpu_bytes(before: GpuMemoryReading, after: GpuMemoryReading, runs_on_gpu: bool) -> dict[int, int]:
    """The GPU bytes a load added, by device: the growth of what NVML lists for this process; where it lists
    nothing for it after the load (a container's PID namespace hides it), the growth of the devices' used
    memory for a version that runs on a GPU, and nothing for one that does not."""
    if after.process:
        return held_since(before.process, after.process)
    return held_since(before.device, after.device) if runs_on_gpu else {}


def held_since(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, int]:
    """What a load added on each device: ``after`` less ``before``, the devices that grew only (bytes)."""
    return {device: grown for device, bytes_ in after.items() if (grown := bytes_ - before.get(device, 0)) > 0}


def visible_device_indexes(visible: str | None, device_count: int) -> list[int | str]:
    """NVML's names of the devices CUDA numbers 0, 1, ... in this process: NVML indexes, or UUIDs.

    ``visible`` is ``CUDA_VISIBLE_DEVICES`` (None: unset, every device in NVML's order). As CUDA reads
    it, a comma-separated list of indexes or ``GPU-``/``MIG-`` UUIDs, cut at the first entry that is
    neither or that names no device.

    Args:
        visible: the variable's value, or None.
        device_count: the devices NVML sees (``nvmlDeviceGetCount``).
    """
    if visible is None:
        return list(range(device_count))
    devices: list[int | str] = []
    for entry in (part.strip() for part in visible.split(",")):
        if entry.isdigit() and int(entry) < device_count:
            devices.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            devices.append(entry)
        else:
            break
    return devices


@functools.cache
def _devices() -> tuple[Any, ...]:
    """NVML's handles of the devices this process sees, in CUDA's numbering; () without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
        names = visible_device_indexes(os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml.nvmlDeviceGetCount())
        return tuple(
            pynvml.nvmlDeviceGetHandleByIndex(name) if isinstance(name, int) else pynvml.nvmlDeviceGetHandleByUUID(name)
            for name in names
        )
    except pynvml.NVMLError as error:  # no driver, or no GPU: nothing to count
        logger.debug("NVML is not available (%s): versions count no GPU bytes", error)
        return ()


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)
