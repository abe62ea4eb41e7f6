"""The management API's bearer token: checking it, and the file a generated one is kept in.

A server started without ``--admin-token`` makes a random token and writes it to
``<admin-token-dir>/admin-token-<http port>`` (folder mode 0700, file mode 0600), so that
``gateway push`` run by the same user on the same machine finds it; the file is removed when the
server stops.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import UnauthenticatedError

__all__ = [
    "AdminToken",
    "generate_token",
    "read_token_file",
    "remove_token_file",
    "server_token",
    "token_file",
    "write_token_file",
]

logger = logging.getLogger(__name__)


class AdminToken:
    """Checks ``Authorization: Bearer <token>`` values against the server's token, in constant time.

    Args:
        token: the expected token (non-empty).
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._expected = token.encode()

    def check(self, authorization: str | None) -> None:
        """Accept ``Bearer <token>`` with the right token (RFC 6750).

        Raises:
            UnauthenticatedError: no ``Authorization`` value, another scheme, or a wrong token.
        """
        if not authorization:
            raise UnauthenticatedError("the management API needs an 'Authorization: Bearer <admin token>' header")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._expected):
            raise UnauthenticatedError("invalid admin token")


def generate_token() -> str:
    """A new random token (32 bytes of entropy, URL-safe text)."""
    return secrets.token_urlsafe(32)


def token_file(directory: Path, http_port: int) -> Path:
    """Where the generated token of the server on ``http_port`` is kept."""
    return directory / f"admin-token-{http_port}"


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` readable by this user only (folder 0700, file 0600), replacing any old one.

    Raises:
        OSError: the folder or file cannot be written.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    os.replace(temporary, path)


def read_token_file(path: Path) -> str | None:
    """The token in ``path``, or None when there is no such file."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def remove_token_file(path: Path, token: str) -> None:
    """Remove ``path`` if it still holds ``token`` (another server may have replaced it)."""
    if read_token_file(path) == token:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def server_token(given: str | None, directory: Path, http_port: int) -> Iterator[str]:
    """The token a server requires: ``given``, else a generated one kept in its token file while in use.

    A generated token is written to :func:`token_file` (``directory``, ``http_port``) on entry and
    the file is removed on exit, unless another server has replaced it meanwhile.

    Raises:
        OSError: the token file cannot be written.
    """
    if given:
        yield given
        return
    token = generate_token()
    path = token_file(directory, http_port)
    write_token_file(path, token)
    logger.info("no --admin-token given: generated one, readable by this user in %s", path)
    try:
        yield token
    finally:
        remove_token_file(path, token)
