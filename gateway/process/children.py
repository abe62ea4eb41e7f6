"""How the supervisor starts its children (front-end workers and model runners): forked from a fork server.

The children are started by multiprocessing's fork server, which has imported the modules of a
worker and of a runner once (``set_forkserver_preload``): each child is a fork of it, so the pages
of those imports (the interpreter's code objects, numpy, gRPC, FastAPI, pydantic...: about 50 MB)
are shared among all children until one writes to them, instead of each child importing its own
copy as a freshly spawned interpreter would. The fork server itself has started no thread and
opened no connection when it forks (forking a process with threads is unsafe).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext

#: The modules the fork server imports before it forks any child.
PRELOADED_MODULES = ["gateway.process.server", "gateway.process.runner"]


def children_context() -> ForkServerContext:
    """The multiprocessing context the supervisor starts workers and model runners with."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)
    return context
