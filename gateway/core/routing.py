"""Routing: which version label answers a request that names no version (a weighted split, maybe sticky).

The model's traffic policy (:class:`gateway.repository.traffic.TrafficPolicy`) says how requests
that name neither a version nor a label are split between labels, e.g. ``{stable: 90, canary: 10}``.
A request naming a version or a label is never routed: it gets exactly that one.

A sticky request carries a key (the policy's ``sticky_parameter`` in the v2 request ``parameters``,
else its ``sticky_header``, a REST header or gRPC metadata key): the key is hashed to a point in
[0, 1) and the point falls in one label's share, so the same key gets the same label as long as the
weights stay the same. A request without a key gets a random point.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from gateway.core.types import Parameters
from gateway.repository.config import RoutingConfig


def choose_label(routing: RoutingConfig, parameters: Parameters, headers: Mapping[str, str] | None) -> str:
    """The label a request goes to under ``routing``.

    Args:
        routing: the policy's split (labels and their weights, the sticky key's place).
        parameters: the request's v2 parameters.
        headers: the request's headers (REST) or metadata (gRPC), lower-case keys; None when unknown.
    """
    key = sticky_key(routing, parameters, headers)
    point = _hash_point(key) if key is not None else random.random()
    labels = sorted(routing.weights)  # a fixed order: a sticky point stays in the same label's share
    total = sum(routing.weights.values())
    cumulative = 0.0
    for label in labels:
        cumulative += routing.weights[label] / total
        if point < cumulative:
            return label
    return next(label for label in reversed(labels) if routing.weights[label] > 0)


def sticky_key(routing: RoutingConfig, parameters: Parameters, headers: Mapping[str, str] | None) -> str | None:
    """The request's sticky key: its ``sticky_parameter`` value, else its ``sticky_header`` value, else None."""
    if routing.sticky_parameter is not None:
        value = parameters.get(routing.sticky_parameter)
        if value is not None:
            return str(value)
    if routing.sticky_header is not None and headers is not None:
        return headers.get(routing.sticky_header)
    return None


def _hash_point(key: str) -> float:
    """A point in [0, 1) fixed by ``key`` (BLAKE2b, the same in every process and release)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
