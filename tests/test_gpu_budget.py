"""The GPU memory budget's choices, and how GPU memory is read, on a machine without a GPU (as CI is).

No GPU is needed to check which versions a GPU budget evicts: the budget decides from each version's
measured GPU bytes (device number -> bytes), set here as a GPU machine would measure them. The
in-process budget (:class:`MemoryBudget`) is driven with its real eviction callback; the model
runners' pool (:class:`RunnerPool`) with real runner processes standing in (sleeping processes, which
its evictions stop with SIGTERM). What NVML reports on a GPU machine is measured by ``bench/gpu.py``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from gateway.process.messages import (
    RunnerAnswer,
    RunnerEvicted,
    RunnerFailed,
    RunnerLoaded,
    RunnerSpec,
    SupervisorMessage,
)
from gateway.process.runner_pool import RunnerPool, _Runner
from gateway.repository.config import ModelConfig
from gateway.runtime.gpu_memory import GpuMemoryReading, read_gpu_memory, version_gpu_bytes, visible_device_indexes
from gateway.runtime.memory_budget import (
    LargerThanBudgetError,
    MemoryBudget,
    NoRoomError,
    VersionUsage,
    gpu_devices_over,
)
from gateway.runtime.runner_server import RunnerActivity
from gateway.settings import GatewaySettings

GIB = 1024**3


def usage(model: str, resident: int, gpu: dict[int, int], used_at: float) -> VersionUsage:
    version = VersionUsage(model, 1, resident, gpu_bytes=gpu)
    version.last_used = used_at
    return version


def make_room(
    budget: MemoryBudget, needed_bytes: int, needed_gpu: dict[int, int], wait_seconds: float = 0.2
) -> list[str]:
    """Make room for a load of model 'new'; the models evicted, in order (each released at once)."""
    evicted: list[str] = []

    async def evict(version: VersionUsage) -> None:
        evicted.append(version.model)
        budget.remove(version)

    async def main() -> None:
        await budget.make_room("new", needed_bytes, evict, time.perf_counter() + wait_seconds, needed_gpu)

    asyncio.run(main())
    return evicted


def test_a_gpu_budget_evicts_only_versions_on_the_device_short_of_room() -> None:
    """The least recently used idle version holding bytes on the device goes, not an older one elsewhere."""
    budget = MemoryBudget(None, gpu_limit_bytes=4 * GIB)
    for version in (
        usage("cpu_only", GIB, {}, used_at=1.0),
        usage("on_1", GIB, {1: 3 * GIB}, used_at=2.0),
        usage("on_0_old", GIB, {0: GIB}, used_at=3.0),
        usage("on_0_new", GIB, {0: 2 * GIB}, used_at=4.0),
    ):
        budget.add(version)
    assert make_room(budget, GIB, {0: GIB}) == []  # 3 + 1 GiB fit device 0
    assert make_room(budget, GIB, {0: 2 * GIB}) == ["on_0_old"]
    assert make_room(budget, GIB, {0: 3 * GIB}) == ["on_0_new"]
    assert make_room(budget, GIB, {1: 2 * GIB}) == ["on_1"]
    assert budget.used_bytes() == GIB  # the CPU-only version stays: no device needed its room


def test_the_memory_budget_and_the_gpu_budget_each_make_room() -> None:
    """Memory short: any idle version may go (LRU); GPU short: only those on the device."""
    budget = MemoryBudget(3 * GIB, gpu_limit_bytes=4 * GIB)
    for version in (
        usage("cpu_only", GIB, {}, used_at=1.0),
        usage("on_0", GIB, {0: 3 * GIB}, used_at=2.0),
    ):
        budget.add(version)
    assert make_room(budget, 2 * GIB, {}) == ["cpu_only"]
    assert make_room(budget, 0, {0: 2 * GIB}) == ["on_0"]


def test_a_busy_version_on_the_device_is_never_evicted() -> None:
    budget = MemoryBudget(None, gpu_limit_bytes=4 * GIB)
    busy = usage("busy", GIB, {0: 3 * GIB}, used_at=1.0)
    budget.add(busy)
    budget.add(usage("idle_elsewhere", GIB, {1: 3 * GIB}, used_at=0.5))
    MemoryBudget.enter(busy)
    with pytest.raises(NoRoomError, match=r"on GPU 0; .*held by versions that stayed busy \(busy version 1\)"):
        make_room(budget, 0, {0: 2 * GIB})
    assert busy.serving


def test_a_gpu_budget_that_cannot_be_kept_here_says_so(caplog: pytest.LogCaptureFixture) -> None:
    if read_gpu_memory().device:
        pytest.skip("NVML reads GPU memory on this machine")
    with caplog.at_level(logging.WARNING, logger="gateway.runtime.gpu_memory"):
        MemoryBudget(None)
        assert not caplog.records
        MemoryBudget(None, gpu_limit_bytes=GIB)
    assert "NVML cannot read GPU memory here" in caplog.text


def test_a_version_larger_than_the_gpu_budget_is_a_clear_error() -> None:
    budget = MemoryBudget(None, gpu_limit_bytes=GIB)
    with pytest.raises(LargerThanBudgetError, match="on GPU 1, more than the GPU memory budget of 1073741824 bytes"):
        make_room(budget, 0, {1: 2 * GIB})


def test_devices_over_a_gpu_budget() -> None:
    held = [{0: 3, 1: 1}, {0: 1}, {}]
    assert gpu_devices_over(None, held, {0: 100}) == []
    assert gpu_devices_over(4, held, {}) == []
    assert gpu_devices_over(4, held, {0: 1, 2: 5}) == [0, 2]


def test_gpu_memory_read_through_nvml() -> None:
    """Without a GPU (no NVML driver) nothing is held; the CUDA numbering follows CUDA_VISIBLE_DEVICES."""
    reading = read_gpu_memory()
    assert all(bytes_ > 0 for bytes_ in reading.process.values())
    if not os.path.exists("/dev/nvidiactl"):
        assert reading == GpuMemoryReading({}, {})
    assert visible_device_indexes(None, 3) == [0, 1, 2]
    assert visible_device_indexes("2,0", 3) == [2, 0]
    assert visible_device_indexes("1, GPU-8a1b,7,0", 3) == [1, "GPU-8a1b"]  # cut at a device that is not there
    assert visible_device_indexes("", 3) == []


def test_a_version_counts_what_its_process_grew_on_each_device() -> None:
    """This process's growth where NVML lists it; the devices' growth where it cannot (a container's PIDs), for a
    version on a GPU only."""
    before = GpuMemoryReading({0: 5}, {0: 50, 1: 70})
    listed = GpuMemoryReading({0: 9, 2: 1}, {0: 60, 1: 90, 2: 1})
    assert version_gpu_bytes(before, listed, runs_on_gpu=True) == {0: 4, 2: 1}
    hidden = GpuMemoryReading({}, {0: 60, 1: 70})
    assert version_gpu_bytes(GpuMemoryReading({}, {0: 50, 1: 70}), hidden, runs_on_gpu=True) == {0: 10}
    assert version_gpu_bytes(GpuMemoryReading({}, {0: 50, 1: 70}), hidden, runs_on_gpu=False) == {}


def test_several_whole_gateways_share_the_gpu_budget_evenly() -> None:
    settings = GatewaySettings(workers=2, model_runners=False, gpu_memory_budget_bytes=8 * GIB)
    assert settings.worker_gpu_memory_budget_bytes == 4 * GIB
    assert GatewaySettings(workers=2, gpu_memory_budget_bytes=8 * GIB).worker_gpu_memory_budget_bytes is None


# ----------------------------------------------------------------------------- model runners


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[RunnerPool, list[tuple[int, SupervisorMessage]]]]:
    """A runner pool under a GPU budget of 4 GiB per device, and what it sent to the workers."""
    sent: list[tuple[int, SupervisorMessage]] = []
    settings = GatewaySettings(model_repository=tmp_path, gpu_memory_budget_bytes=4 * GIB)
    runner_pool = RunnerPool(settings, lambda *args: None, lambda worker, message: sent.append((worker, message)))
    yield runner_pool, sent
    for runner in [*runner_pool.runners.values(), *runner_pool.stopping]:
        if runner.process is not None:
            runner.process.kill()
            runner.process.join()
    runner_pool.remove_sockets()


def standing_in(pool: RunnerPool, model: str, gpu: dict[int, int], used_at: float) -> _Runner:
    """A loaded, idle runner of ``model`` holding ``gpu``: a sleeping process in its place."""
    spec = RunnerSpec(model, model, 1, str(Path("/nowhere") / model), ModelConfig(), 0)
    process: BaseProcess = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    runner = _Runner(spec, f"{pool.socket_dir}/{model}.sock", process=process, loaded=RunnerLoaded())
    runner.users[0] = 1
    runner.held_gpu = gpu
    runner.activity = RunnerActivity(multiprocessing.RawArray("d", [0.0, used_at]))
    pool.runners[spec.key] = runner
    return runner


def test_the_runner_pool_evicts_only_runners_on_the_device_short_of_room(
    pool: tuple[RunnerPool, list[tuple[int, SupervisorMessage]]],
) -> None:
    runner_pool, sent = pool
    on_1 = standing_in(runner_pool, "on_1", {1: 3 * GIB}, used_at=1.0)
    on_0_old = standing_in(runner_pool, "on_0_old", {0: GIB}, used_at=2.0)
    standing_in(runner_pool, "on_0_new", {0: 2 * GIB}, used_at=3.0)
    assert runner_pool._make_room("new", 0, {0: GIB})
    assert not runner_pool._make_room("new", 0, {0: 2 * GIB})  # room once the evicted runner has exited
    assert [message.socket_path for _, message in sent if isinstance(message, RunnerEvicted)] == [on_0_old.socket_path]
    assert runner_pool.stopping == [on_0_old] and on_1.spec.key in runner_pool.runners
    assert on_0_old.process is not None
    runner_pool.unwanted(0, on_0_old.socket_path)  # its front end has released the version: it is stopped
    on_0_old.process.join(10)
    assert on_0_old.process.exitcode == -15  # stopped with SIGTERM


def test_the_runner_pool_never_evicts_a_busy_runner_and_says_what_is_short(
    pool: tuple[RunnerPool, list[tuple[int, SupervisorMessage]]],
) -> None:
    runner_pool, sent = pool
    busy = standing_in(runner_pool, "busy", {0: 3 * GIB}, used_at=1.0)
    assert busy.activity is not None
    busy.activity.enter()
    spec = RunnerSpec("new", "new", 1, "/nowhere/new", ModelConfig(), 0)
    new = _Runner(spec, f"{runner_pool.socket_dir}/new.sock", held_gpu={0: 2 * GIB}, waiting=[(0, 7)])
    assert not runner_pool._make_room("new", 0, new.held_gpu)
    assert busy.spec.key in runner_pool.runners and not runner_pool.stopping
    runner_pool._no_room(new)
    [(worker, answer)] = sent
    assert worker == 0 and isinstance(answer, RunnerAnswer) and answer.request_id == 7
    assert isinstance(answer.outcome, RunnerFailed) and answer.outcome.error == "NoRoomError"
    assert answer.outcome.message == (
        "model 'new' needs about 2147483648 bytes on GPU 0; the GPU memory budget's 4294967296 bytes there are held "
        "by model runners that stayed busy (model busy version 1); retry later"
    )
