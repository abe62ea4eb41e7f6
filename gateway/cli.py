"""The ``gateway`` command: one verb per job, each in :mod:`gateway.commands`.

``serve`` runs the server; ``push`` converts and uploads a model; ``models``, ``status``,
``predict``, ``load``, ``unload``, ``delete``, ``token``, ``traffic``, ``promote`` and ``rollback``
talk to a running gateway over its REST API
(:mod:`gateway.client`). Help is written as Markdown paragraphs, so that it wraps between words at
any terminal width.
"""

from __future__ import annotations

import typer

from gateway.commands.control import delete, load, token, unload
from gateway.commands.models import models, status
from gateway.commands.predict import predict
from gateway.commands.push import push
from gateway.commands.serve import serve, serve_epilog
from gateway.commands.traffic import promote, rollback, traffic

app = typer.Typer(
    help="Serve PyTorch, TensorFlow/Keras, JAX and ONNX models over KServe v2 REST and gRPC, "
    "and manage them from the command line.",
    epilog="The verbs that talk to a gateway take --server URL (or GATEWAY_SERVER; default "
    "http://127.0.0.1:8000, the local gateway) and --json for machine-readable output.",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)

app.command(epilog=serve_epilog())(serve)
for verb in (push, models, status, predict, load, unload, delete, token, traffic, promote, rollback):
    app.command()(verb)
