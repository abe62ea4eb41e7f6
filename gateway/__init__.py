"""The gateway: the server (REST and gRPC over one core and one model repository), the CLI and the push client.

The subpackages are layers, each importing only those below it (docs/architecture.md): ``cli``;
``commands`` (its verbs); ``push_client`` and ``process``; ``client`` (the REST client of the verbs);
``transports``; ``core``; ``repository``; ``runtime``; and the modules every layer shares
(``errors``, ``datatypes``, ``settings``, ``logs``, ``metrics``, ``admin_token``).

``gateway.push(model, example_inputs, name=..., server=...)`` pushes an in-memory model from a
notebook (see :func:`gateway.push_client.push`); it is imported on first use, so ``import gateway``
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.push_client import PushResult

__all__ = ["push"]


def push(model: Any, example_inputs: Any, **options: Any) -> PushResult:
    """Convert, check and upload an in-memory model; the arguments are those of :func:`gateway.push_client.push`."""
    from gateway.push_client import push as push_model

    return push_model(model, example_inputs, **options)
