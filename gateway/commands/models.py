"""``gateway models`` and ``gateway status MODEL``: what the gateway serves, and why a version does not serve."""

from __future__ import annotations

from typing import Any

import typer

from gateway.client import DEFAULT_SERVER, ClientError, GatewayClient
from gateway.commands.common import (
    JsonOption,
    ModelArgument,
    ServerOption,
    VersionOption,
    gateway_client,
    human_bytes,
    parity_summary,
    print_json,
    print_table,
    table,
)

#: The state of a model as a whole: the best of its versions'.
_STATE_ORDER = ("READY", "LOADING", "UNAVAILABLE")


def models(server: ServerOption = DEFAULT_SERVER, json_output: JsonOption = False) -> None:
    """List the gateway's models: versions, state, backend, parity, bytes on disk and in memory.

    One row per model of the repository index, with every version folder on disk; the backend,
    parity, size and memory (resident bytes measured at load) are those of the version served by
    default (the highest ready one).
    `gateway status MODEL` says why a version is unavailable.
    """
    with gateway_client(server) as client:
        summaries = [_summary(client, name) for name in dict.fromkeys(entry["name"] for entry in client.index())]
    if json_output:
        print_json(summaries)
        return
    if not summaries:
        typer.echo(f"no models in the repository of {client.server}")
        return
    rows = table("model", "versions", "state", "backend", "parity (max abs error)", "bytes", "memory")
    for summary in summaries:
        versions = ", ".join(
            entry["version"] + ("" if entry["state"] == "READY" else f" ({entry['state'].lower()})")
            for entry in summary["versions"]
            if entry["version"]
        )
        rows.add_row(
            summary["name"],
            versions or "-",
            summary["state"],
            summary["backend"] or "-",
            parity_summary(summary["parity"], short=True) if summary["state"] == "READY" else "-",
            human_bytes(summary["model_bytes"]),
            human_bytes(summary["resident_bytes"]),
        )
    print_table(rows)
    unavailable = [summary["name"] for summary in summaries if summary["state"] != "READY"]
    if unavailable:
        typer.echo(f"why a model is not ready: gateway status {unavailable[0]}")


def status(
    model: ModelArgument,
    version: VersionOption = None,
    server: ServerOption = DEFAULT_SERVER,
    json_output: JsonOption = False,
) -> None:
    """Show a model: every version with its state (and why it is unavailable), metadata and config.

    The versions are every version folder on disk and every version loaded or failed; the metadata
    (inputs, outputs, how the backend runs it, parity, bytes) and the configuration (Triton's
    ModelConfig) are those of the version served.
    """
    with gateway_client(server) as client:
        versions = client.model_versions(model)
        serving = version is not None or any(entry["state"] == "READY" for entry in versions)
        metadata = client.model_metadata(model, version) if serving else None
        config = client.model_config(model, version) if serving else None
    if json_output:
        print_json({"name": model, "versions": versions, "metadata": metadata, "config": config})
        return
    typer.echo(f"model {model}: {_model_state(versions)}")
    rows = table("version", "state", "memory", "reason")
    for entry in versions:
        rows.add_row(entry["version"] or "-", entry["state"], _memory(entry), entry["reason"])
    print_table(rows)
    if metadata is None or config is None:
        typer.echo("no version is serving: the reasons above say why")
        return
    typer.echo()
    described = version or max(metadata["versions"], key=int)
    tensors = table("", "name", "datatype", "shape", title=f"version {described}")
    for kind in ("inputs", "outputs"):
        for tensor in metadata[kind]:
            tensors.add_row(kind[:-1], tensor["name"], tensor["datatype"], str(tensor["shape"]))
    print_table(tensors)
    typer.echo()
    details = table("", "")
    for key, value in _details(metadata, config):
        details.add_row(key, value)
    print_table(details)


def _memory(entry: dict[str, Any]) -> str:
    """An index entry's memory: its resident bytes, then its bytes on each GPU (e.g. ``16.8 MB, GPU 0 301.0 MB``)."""
    gpu = entry.get("gpu_bytes") or {}
    return ", ".join([human_bytes(entry.get("resident_bytes"))] + [f"GPU {d} {human_bytes(b)}" for d, b in gpu.items()])


def _model_state(entries: list[dict[str, str]]) -> str:
    """READY when a version is ready, else LOADING when one loads, else UNAVAILABLE."""
    states = {entry["state"] for entry in entries}
    return next((state for state in _STATE_ORDER if state in states), "UNAVAILABLE")


def _summary(client: GatewayClient, name: str) -> dict[str, Any]:
    """One model's row: its versions and state, and the served version's backend, parity and bytes."""
    try:
        entries = client.model_versions(name)
    except ClientError as error:
        if error.status != 404:  # deleted since the index was read
            raise
        entries = []
    summary: dict[str, Any] = {
        "name": name,
        "versions": entries,
        "state": _model_state(entries),
        "backend": None,
        "platform": None,
        "parity": None,
        "model_bytes": None,
        "resident_bytes": None,
    }
    if summary["state"] != "READY":
        return summary
    try:
        metadata = client.model_metadata(name)
        config = client.model_config(name)
    except ClientError as error:
        if error.status in (404, 503):  # unloaded or replaced since the index was read
            return summary
        raise
    parameters = metadata.get("parameters", {})
    served = max((entry for entry in entries if entry["state"] == "READY"), key=lambda entry: int(entry["version"]))
    summary.update(
        resident_bytes=served.get("resident_bytes"),
        backend=config.get("backend"),
        platform=metadata.get("platform"),
        parity=parameters.get("parity"),
        model_bytes=parameters.get("model_bytes"),
    )
    return summary


def _details(metadata: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str]]:
    """The served version's configuration and runtime, as (label, value) rows."""
    parameters = dict(metadata.get("parameters", {}))
    parity = parameters.pop("parity", None)
    model_bytes = parameters.pop("model_bytes", None)
    batching = config.get("dynamic_batching")
    groups = ", ".join(f"{group['count']} x {group['kind']}" for group in config.get("instance_group", []))
    rows = [
        ("platform", f"{metadata['platform']} (backend {config['backend']})"),
        ("versions served", ", ".join(metadata["versions"])),
        ("version policy", _policy(config["version_policy"])),
        ("max_batch_size", str(config["max_batch_size"])),
        (
            "dynamic batching",
            "off"
            if not batching
            else f"preferred batch sizes {batching['preferred_batch_size'] or '-'}, "
            f"max queue delay {batching['max_queue_delay_microseconds']} us",
        ),
        ("instance group", groups or "-"),
        ("bytes on disk", human_bytes(model_bytes)),
        ("parity", parity_summary(parity)),
    ]
    rows += [
        (key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
        for key, value in parameters.items()
    ]
    return rows


def _policy(policy: dict[str, Any]) -> str:
    """Triton's version policy in words: ``latest 1``, ``all``, ``specific 1, 3``."""
    if "all" in policy:
        return "all"
    if "specific" in policy:
        return "specific " + ", ".join(str(version) for version in policy["specific"].get("versions", []))
    return f"latest {policy.get('latest', {}).get('num_versions', 1)}"
