"""How the supervisor starts its children (front-end workers and model runners): forked from a fork server.

The children are started by multiprocessing's fork server, which has imported the modules of a
worker and of a runner once (``set_forkserver_preload``): each child is a fork of it, so the pages
of those imports (the interpreter's code objects, numpy, gRPC, FastAPI, pydantic...: about 50 MB)
are shared among all children until one writes to them, instead of each child importing its own
copy as a freshly spawned interpreter would. The fork server itself has started no thread and
opened no connection when it forks (forking a process with threads is unsafe).

The supervisor hands its children :func:`worker_entry` and :func:`runner_entry`, which import the
server and the runner where they run (in a child, where the fork server has imported them already),
so that the supervisor's own process never holds those modules (12 MB of its PSS, measured).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import TYPE_CHECKING

from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.process.messages import RunnerSpec
    from gateway.runtime.runner_server import RunnerActivity

#: The modules the fork server imports before it forks any child.
PRELOADED_MODULES = ["gateway.process.server", "gateway.process.runner"]


def children_context() -> ForkServerContext:
    """The multiprocessing context the supervisor starts workers and model runners with."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)
    return context


def worker_entry(settings: GatewaySettings, connection: Connection) -> None:
    """A worker process's entry point: :func:`gateway.process.server.run_worker`, imported in the worker."""
    from gateway.process.server import run_worker

    run_worker(settings, connection)


def runner_entry(
    settings: GatewaySettings, spec: RunnerSpec, socket_path: str, connection: Connection, activity: RunnerActivity
) -> None:
    """A model runner process's entry point: :func:`gateway.process.runner.run_runner`, imported in the runner."""
    from gateway.process.runner import run_runner

    run_runner(settings, spec, socket_path, connection, activity)
