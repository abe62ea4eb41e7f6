"""A model runner process: one version's instances, its one dynamic batcher, served to every front end.

The supervisor (:mod:`gateway.process.runner_pool`) spawns :func:`run_runner` for each version the
front ends serve. The runner loads the version's instances with the in-process loader
(:class:`~gateway.repository.version_loader.InProcessHost`: instances, warmup, the resident-bytes
measure), starts listening on its Unix socket (:class:`~gateway.runtime.runner_server.RunnerServer`),
and only then tells the supervisor :class:`~gateway.process.messages.RunnerLoaded`; a load that fails
is told as :class:`~gateway.process.messages.RunnerFailed`, and the process exits with
:data:`~gateway.process.messages.RUNNER_LOAD_FAILED`. It owns the CPU threads of its backend
instances (:func:`runner_cpu_cores`: the machine's cores less one per front end, divided among the
version's instances).

Its resident bytes, told in ``RunnerLoaded`` and published as ``gateway_model_resident_bytes``, are
what the process holds of its own once loaded (:func:`~gateway.runtime.memory_budget.private_bytes`:
the version, the runtime's allocations, the interpreter's pages it changed), never less than the
version's measured growth; that is what the supervisor's memory budget accounts for, and what
stopping the runner gives back.

SIGTERM (the supervisor sends it once no front end needs the runner, or once the front ends have
stopped; SIGINT is ignored): stop listening, let the requests queued or running finish (up to the exit timeout), exit 0.
The runner exits too when the supervisor goes away (its pipe closes). The supervisor's one message
to a runner, :class:`~gateway.process.messages.RunnerEvicted`, is counted in ``gateway_model_evictions_total``
(once per machine, whatever the number of front ends).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from prometheus_client import Counter

from backends import ModelLoadError
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.process.loops import event_loop_factory
from gateway.process.messages import RUNNER_LOAD_FAILED, RunnerEvicted, RunnerFailed, RunnerLoaded, RunnerSpec
from gateway.repository.config import ModelConfigError
from gateway.repository.version_loader import HostedVersion, InProcessHost
from gateway.runtime.memory_budget import MemoryBudgetError, private_bytes
from gateway.runtime.runner_server import RunnerActivity, RunnerServer
from gateway.runtime.scheduler import Scheduler
from gateway.runtime.warmup import WarmupError
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


def run_runner(
    settings: GatewaySettings, spec: RunnerSpec, socket_path: str, connection: Connection, activity: RunnerActivity
) -> None:
    """A model runner process's entry point: load ``spec``'s version, serve it on ``socket_path`` until SIGTERM.

    Args:
        settings: the server settings (default max batch size, exit timeout, logging).
        spec: the version to load.
        socket_path: the Unix socket to listen on.
        connection: this runner's pipe to the supervisor.
        activity: where its requests queued or running are counted, for the supervisor's memory budget.
    """
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the supervisor stops the runners last
    metrics = Metrics()
    host = InProcessHost(
        settings.default_max_batch_size,
        metrics,
        cpu_cores=runner_cpu_cores(settings),
        gpu_budget_limit_bytes=settings.gpu_memory_budget_bytes,
    )
    path = Path(spec.path)
    try:
        if spec.check_only:
            host.check(path, spec.config)
            connection.send(RunnerLoaded())
            return
        hosted = host.load(
            spec.model, spec.version, path, spec.config, spec.model_bytes, metrics.for_version(spec.model, spec.version)
        )
    except (ModelLoadError, ModelConfigError, WarmupError, MemoryBudgetError) as error:
        connection.send(RunnerFailed(type(error).__name__, str(error)))
        sys.exit(RUNNER_LOAD_FAILED)
    except Exception as error:  # a runtime's unexpected failure: told like any other
        logger.exception("unexpected error loading %s version %s", spec.model, spec.version)
        connection.send(RunnerFailed("ModelLoadError", f"unexpected error: {error!r}"))
        sys.exit(RUNNER_LOAD_FAILED)
    own_bytes = private_bytes()
    if own_bytes > hosted.resident_bytes:  # the process's own pages beyond the version's growth count too
        extra = own_bytes - hosted.resident_bytes
        hosted = dataclasses.replace(hosted, resident_bytes=own_bytes, peak_bytes=hosted.peak_bytes + extra)
    metrics.resident_bytes.labels(spec.model, str(spec.version)).set(hosted.resident_bytes)  # gone when it exits
    for device, bytes_ in hosted.gpu_bytes.items():
        metrics.gpu_bytes.labels(spec.model, str(spec.version), str(device)).set(bytes_)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(settings, spec, hosted, Path(socket_path), connection, activity, metrics))


def runner_cpu_cores(settings: GatewaySettings) -> int:
    """The CPU cores a runner's instances share: the machine's less one per front end, at least one.

    The front ends' protocol work needs cores of its own: measured on 2 cores with one front end, the
    large MLP of ``bench/runners.py`` served 7,200 req/s with one intra-op thread and 4,900 with two
    (a multi-threaded operator waits for its slowest thread, whose core a front end may hold).
    """
    return max(1, len(os.sched_getaffinity(0)) - settings.workers)


async def _serve(
    settings: GatewaySettings,
    spec: RunnerSpec,
    hosted: HostedVersion,
    socket_path: Path,
    connection: Connection,
    activity: RunnerActivity,
    metrics: Metrics,
) -> None:
    scheduler = hosted.scheduler
    assert isinstance(scheduler, Scheduler)  # the in-process loader's
    server = RunnerServer(scheduler, socket_path, activity)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    evictions = metrics.evictions.labels(spec.model, str(spec.version))
    loop.add_reader(connection.fileno(), _on_supervisor_message, connection, stop, evictions)
    connection.send(
        RunnerLoaded(
            hosted.platform,
            hosted.config,
            hosted.backend_parameters,
            hosted.resident_bytes,
            hosted.peak_bytes,
            hosted.gpu_bytes,
        )
    )
    await stop.wait()
    if not await server.stop(settings.exit_timeout_seconds):
        logger.warning("requests still running after %.1f s; stopping", settings.exit_timeout_seconds)
    scheduler.close()


def _on_supervisor_message(connection: Connection, stop: asyncio.Event, evictions: Counter) -> None:
    """The supervisor's :class:`RunnerEvicted` (counted; the front ends release the runner, then SIGTERM
    stops it), or the pipe's end: the supervisor is gone, and so goes the runner."""
    try:
        message = connection.recv()
    except (EOFError, OSError):
        asyncio.get_running_loop().remove_reader(connection.fileno())
        stop.set()
        return
    if isinstance(message, RunnerEvicted):
        evictions.inc()
