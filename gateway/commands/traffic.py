"""The traffic verbs: ``gateway traffic MODEL`` (show or change the policy), ``promote`` and ``rollback``.

A model's traffic policy binds version labels (``stable``, ``canary``...) to versions, splits the
requests that name no version between labels (``--weight stable=90 --weight canary=10``), optionally
sticky by a header or a v2 parameter, and may copy requests to a shadow label. ``promote`` moves
``stable`` to a version (default: the ``canary`` label's) and ``rollback`` moves it back; the
changes need the admin token. See :mod:`gateway.core.traffic_control`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.client import DEFAULT_SERVER
from gateway.commands.common import (
    JsonOption,
    ModelArgument,
    ServerOption,
    TokenOption,
    fail,
    gateway_client,
    print_json,
)

_LabelOption = Annotated[
    list[str] | None,
    typer.Option("--label", help="Bind a version label: NAME=VERSION (repeatable), e.g. canary=2.", show_default=False),
]
_WeightOption = Annotated[
    list[str] | None,
    typer.Option(
        "--weight",
        help="Share of the requests naming no version for a label: LABEL=WEIGHT (repeatable); "
        "the weights given replace the split.",
        show_default=False,
    ),
]


def traffic(
    model: ModelArgument,
    label: _LabelOption = None,
    weight: _WeightOption = None,
    sticky_header: Annotated[
        str | None,
        typer.Option("--sticky-header", help="Keep a client on one label by this header's value.", show_default=False),
    ] = None,
    sticky_parameter: Annotated[
        str | None,
        typer.Option("--sticky-parameter", help="Keep a client on one label by this v2 parameter.", show_default=False),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option("--shadow", help="Copy requests to this label (the candidate); 'none' stops.", show_default=False),
    ] = None,
    shadow_fraction: Annotated[
        float | None,
        typer.Option("--shadow-fraction", help="Share of the requests copied, 0 to 1 (default 1).", show_default=False),
    ] = None,
    no_routing: Annotated[
        bool,
        typer.Option("--no-routing", help="Drop the split: requests naming no version get the highest version."),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a model's traffic policy, or change it: labels, the weighted split, stickiness, the shadow.

    Without options it shows the policy. With options it changes what they name and keeps the
    rest; the change is atomic, persisted, and followed by every worker.
    """
    with gateway_client(server, token) as client:
        policy = client.traffic(model)
        changes = (label, weight, sticky_header, sticky_parameter, shadow, shadow_fraction)
        if any(change is not None for change in changes) or no_routing:
            policy = client.set_traffic(
                model,
                _changed(policy, label, weight, sticky_header, sticky_parameter, shadow, shadow_fraction, no_routing),
            )
    if json_output:
        print_json({"name": model, **policy})
    else:
        _print_policy(model, policy)


def promote(
    model: ModelArgument,
    to: Annotated[
        str | None,
        typer.Option("--to", help="A version number or label (default: canary).", show_default=False),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Move the model's `stable` label to a version (default: the one the `canary` label names).

    Requests that name no version and were routed to `stable` go to the new version from now on;
    the answer comes once the old version's queued and running requests have finished. Its files
    stay: `gateway rollback` moves `stable` back.
    """
    with gateway_client(server, token) as client:
        answer = client.promote(model, to)
    _print_promotion("promoted", answer, json_output)


def rollback(
    model: ModelArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Move the model's `stable` label back to the version the last promote moved it from."""
    with gateway_client(server, token) as client:
        answer = client.rollback(model)
    _print_promotion("rolled back", answer, json_output)


def _changed(
    policy: dict[str, Any],
    labels: list[str] | None,
    weights: list[str] | None,
    sticky_header: str | None,
    sticky_parameter: str | None,
    shadow: str | None,
    shadow_fraction: float | None,
    no_routing: bool,
) -> dict[str, Any]:
    """The policy with the command line's changes (the server checks the outcome)."""
    changed = dict(policy)
    changed["version_labels"] = {**policy.get("version_labels", {}), **_pairs(labels, "--label", int)}
    routing = dict(policy.get("routing") or {})
    if weights:
        routing["weights"] = _pairs(weights, "--weight", float)
    if sticky_header is not None:
        routing["sticky_header"] = sticky_header
    if sticky_parameter is not None:
        routing["sticky_parameter"] = sticky_parameter
    if no_routing:
        changed.pop("routing", None)
    elif routing:
        changed["routing"] = routing
    if shadow == "none":
        changed.pop("shadow", None)
    elif shadow is not None or shadow_fraction is not None:
        changed["shadow"] = dict(policy.get("shadow") or {})
        if shadow is not None:
            changed["shadow"]["label"] = shadow
        if shadow_fraction is not None:
            changed["shadow"]["fraction"] = shadow_fraction
    return changed


def _pairs(values: list[str] | None, option: str, kind: type[int] | type[float]) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for value in values or []:
        name, _, number = value.partition("=")
        try:
            pairs[name] = kind(number)
        except ValueError:
            fail(f"{option} {value!r} is not NAME={'VERSION' if kind is int else 'WEIGHT'}")
        if not name:
            fail(f"{option} {value!r} has no name before '='")
    return pairs


def _print_policy(model: str, policy: dict[str, Any]) -> None:
    labels = policy.get("version_labels", {})
    lines = [f"traffic policy of model {model}"]
    lines.append("  labels: " + (", ".join(f"{label} -> version {v}" for label, v in sorted(labels.items())) or "none"))
    routing = policy.get("routing")
    if routing:
        total = sum(routing["weights"].values())
        split = ", ".join(f"{label} {weight / total:.0%}" for label, weight in routing["weights"].items())
        sticky = routing.get("sticky_parameter") or routing.get("sticky_header")
        lines.append(f"  split: {split}" + (f" (sticky by {sticky})" if sticky else ""))
    else:
        lines.append("  split: none (requests naming no version get the highest ready version)")
    shadow = policy.get("shadow")
    if shadow:
        lines.append(f"  shadow: {shadow['fraction']:.0%} of the routed requests copied to {shadow['label']}")
    if policy.get("previous_stable") is not None:
        lines.append(f"  rollback: stable goes back to version {policy['previous_stable']}")
    typer.echo("\n".join(lines))


def _print_promotion(done: str, answer: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(answer)
        return
    previous = answer.get("previous_stable")
    line = f"model {answer['name']}: {done}, stable is version {answer['stable']}"
    if done == "promoted" and previous is not None:
        line += f" (was {previous}; `gateway rollback {answer['name']}` moves it back)"
    if not answer.get("drained", True):
        line += "; the old version still had requests running when the wait ended"
    typer.echo(line)
