"""The management verbs: ``gateway load``, ``unload``, ``delete MODEL[:VERSION]`` and ``token``.

Load and unload are Triton's (explicit model control mode only); delete is our extension, allowed in
every mode. Each needs the admin token; ``gateway token`` says where it is and how to pass it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.client import (
    ADMIN_TOKEN_VARIABLE,
    DEFAULT_SERVER,
    ClientError,
    GatewayClient,
    base_url,
    local_token_file,
    resolve_token,
)
from gateway.commands.common import (
    JsonOption,
    ModelArgument,
    ServerOption,
    TokenOption,
    fail,
    gateway_client,
    print_json,
)


def load(
    model: ModelArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Load or reload a model (the server must run with --model-control-mode explicit).

    Answers once the versions its version policy selects are loaded, and shows their states.
    """
    with gateway_client(server, token) as client:
        client.load(model)
        versions = client.model_versions(model)
    _report(f"model {model} loaded", versions, json_output, {"name": model, "loaded": True, "versions": versions})


def unload(
    model: ModelArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Unload a model (the server must run with --model-control-mode explicit).

    New requests get 404 at once; requests in flight finish first. The files stay in the
    repository: `gateway load` serves them again, `gateway delete` removes them.
    """
    with gateway_client(server, token) as client:
        client.unload(model)
    _report(f"model {model} unloaded", [], json_output, {"name": model, "loaded": False})


def delete(
    target: Annotated[
        str, typer.Argument(metavar="MODEL[:VERSION]", help="The model, or one version of it.", show_default=False)
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.", show_default=False)] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete a model, or one version of it, from the gateway's repository: it stops serving, its files go.

    Allowed in every model control mode. After a deleted version, the model's version policy
    chooses among the versions left (with `latest`, the previous one serves again).
    """
    model, _, version = target.partition(":")
    if not model or (version and not (version.isascii() and version.isdigit())):
        fail(f"'{target}' is not MODEL or MODEL:VERSION (e.g. digits:2)")
    what = f"version {version} of model {model}" if version else f"model {model} and every version of it"
    if not yes and not _confirmed(f"Delete {what} from {base_url(server)}? Its files go for good."):
        fail(f"nothing deleted: answer y, or add --yes to delete {what} without a question")
    with gateway_client(server, token) as client:
        deleted = client.delete(model, version or None)
    _report(
        f"deleted {what} (version folders: {', '.join(deleted) or 'none'})",
        [],
        json_output,
        {"name": model, "deleted_versions": deleted},
    )


def token(
    server: ServerOption = DEFAULT_SERVER,
    http_port: Annotated[
        int | None,
        typer.Option("--http-port", help="The server's HTTP port, when not the one in --server.", show_default=False),
    ] = None,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Say where the admin token of a gateway is, whether the gateway accepts it, and how to pass it.

    A gateway started without --admin-token writes a generated token to a file readable by its
    user (mode 0600) while it runs; the verbs that need the token read it there when the gateway
    is on this machine. Exit status 1 when no token is found or the gateway refuses it.
    """
    base = base_url(server)
    path = local_token_file(base, http_port)
    report: dict[str, Any] = {
        "server": base,
        "token_file": str(path) if path is not None else None,
        "token_file_exists": path.exists() if path is not None else None,
        "token_from": None,
        "accepted": None,
        "how_to_pass": {
            "gateway commands": f"--token TOKEN, or {ADMIN_TOKEN_VARIABLE}=TOKEN in the environment",
            "HTTP": "Authorization: Bearer TOKEN",
            "gRPC": "metadata authorization: Bearer TOKEN",
        },
    }
    problem = None
    try:
        source = resolve_token(base, token, http_port)
        report["token_from"] = source.origin
        with GatewayClient(base, source) as client:
            client.check_token()
        report["accepted"] = True
    except ClientError as error:
        problem = str(error)
        report["accepted"] = False if error.status == 401 else None
    if json_output:
        print_json(report)
    else:
        _print_token_report(report)
    if problem is not None:
        fail(problem)


def _print_token_report(report: dict[str, Any]) -> None:
    path = report["token_file"]
    lines = [f"admin token of the gateway at {report['server']}"]
    if path is None:
        lines.append("  token file: none (a gateway on another machine: ask for its --admin-token)")
    else:
        exists = "exists" if report["token_file_exists"] else "does not exist: no gateway, or one given --admin-token"
        lines.append(f"  token file: {path} ({exists})")
    if report["token_from"] is not None:
        verdict = {True: "accepted", False: "refused", None: "not checked"}[report["accepted"]]
        lines.append(f"  token used: from {report['token_from']}, {verdict} by the gateway")
    lines.append("  how to pass it:")
    lines += [f"    {where}: {how}" for where, how in report["how_to_pass"].items()]
    if path is not None:
        lines.append(f'    e.g. curl -H "Authorization: Bearer $(cat {path})" {report["server"]}/v2/repository/token')
    typer.echo("\n".join(lines))


def _confirmed(question: str) -> bool:
    """Ask ``question`` on stderr; no answer (no terminal, end of input) is no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:
        return False


def _report(line: str, versions: list[dict[str, str]], json_output: bool, answer: dict[str, Any]) -> None:
    if json_output:
        print_json(answer)
        return
    typer.echo(line)
    for entry in versions:
        reason = f": {entry['reason']}" if entry["reason"] else ""
        typer.echo(f"  version {entry['version'] or '-'} {entry['state']}{reason}")
