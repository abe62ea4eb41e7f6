"""What the verbs share: the ``--server``, ``--token`` and ``--json`` options, output and failures.

A verb prints tables with rich on stdout, or with ``--json`` machine-readable JSON only; any failure
is one line on stderr (``error: what failed; what to do next``) and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gateway.client import ADMIN_TOKEN_VARIABLE, DEFAULT_SERVER, SERVER_VARIABLE, ClientError, GatewayClient

if TYPE_CHECKING:
    from rich.table import Table

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar=SERVER_VARIABLE,
        metavar="URL",
        help=f"Base URL of the gateway's REST API (default: {DEFAULT_SERVER}, the local gateway).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help=f"Admin token of the gateway. Default: {ADMIN_TOKEN_VARIABLE}, else the token file a gateway on "
        "this machine wrote (`gateway token` says where).",
        show_default=False,
    ),
]
ModelArgument = Annotated[str, typer.Argument(help="The model name.", show_default=False)]
VersionOption = Annotated[
    str | None,
    typer.Option("--version", help="The model version (default: the highest ready one).", show_default=False),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.", show_default=False),
]


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def gateway_client(server: str, token: str | None = None) -> Iterator[GatewayClient]:
    """A client of the gateway at ``server``; a :class:`ClientError` inside becomes :func:`fail`."""
    try:
        with GatewayClient(server, token) as client:
            yield client
    except ClientError as error:
        fail(str(error))


def print_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout (NaN and infinities as null: strict JSON)."""
    typer.echo(json.dumps(_strict(value), indent=2))


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value


def table(*columns: str, title: str | None = None) -> Table:
    """A borderless table with these column headers (none shown when every header is empty)."""
    from rich.table import Table

    return Table(
        *columns,
        title=title,
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
        show_header=any(columns),
    )


def print_table(rows: Table) -> None:
    """Print a table on stdout with rich (plain text when stdout is not a terminal), no trailing blanks."""
    from rich.console import Console

    output = Console(highlight=False)
    with output.capture() as captured:
        output.print(rows)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def human_bytes(size: int | None) -> str:
    """``1234567`` -> ``1.2 MB`` (powers of 1000); None -> ``-``."""
    if size is None:
        return "-"
    if size < 1000:
        return f"{size} B"
    value, unit = size / 1000, "kB"
    for larger in ("MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{value:.1f} {unit}"


def parity_summary(parity: dict[str, Any] | None, short: bool = False) -> str:
    """A model's ``parameters.parity`` in a few words: ``ok (max abs error 2.4e-06)``, ``FAILED``, or ``none``.

    ``short``: ``ok 2.4e-06`` (for a table column).
    """
    if not parity:
        return "none"
    errors = [output.get("max_abs_error") for output in parity.get("outputs", [])]
    worst = max((error for error in errors if isinstance(error, int | float)), default=None)
    verdict = "ok" if parity.get("passed") else "FAILED"
    if worst is None:
        return verdict
    return f"{verdict} {worst:.1e}" if short else f"{verdict} (max abs error {worst:.1e})"
