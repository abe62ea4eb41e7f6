"""Logging: one line per event, as text or JSON, carrying the id of the request it belongs to.

The request id of an inference (the v2 ``id``, else the ``X-Request-ID`` header or ``x-request-id``
gRPC metadata, else a generated one) is held in a context variable while the request is answered;
a logging filter copies it into every record as ``request_id``, so each line logged while answering
the request names it. JSON lines come from python-json-logger.
"""

from __future__ import annotations

import itertools
import logging
import os
from contextvars import ContextVar
from enum import StrEnum

from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "REQUEST_ID_HEADER",
    "LogFormat",
    "configure_logging",
    "current_request_id",
    "new_request_id",
    "request_id_header",
    "set_request_id",
]

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
#: The HTTP header carrying a request id, in requests and in answers (every REST route family).
REQUEST_ID_HEADER = "X-Request-ID"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s %(request_id)s"


class LogFormat(StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


def current_request_id() -> str | None:
    """The id of the request being answered in this context, or None outside a request."""
    return _request_id.get()


def request_id_header() -> dict[str, str] | None:
    """``{"X-Request-ID": id}`` for the request being answered in this context, or None outside one."""
    request_id = _request_id.get()
    return {REQUEST_ID_HEADER: request_id} if request_id else None


def set_request_id(request_id: str) -> None:
    """Make ``request_id`` the id of the request being answered in this context (task)."""
    _request_id.set(request_id)


#: Generated request ids: 16 random hex digits for this process, then a counter (cheaper than a uuid4).
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A new request id, unique in this process and, by its random prefix, across processes."""
    return f"{_id_prefix}-{next(_id_counter):x}"


class _RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or ``-`` outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        record.__dict__.pop("color_message", None)  # uvicorn's copy of the message with ANSI colours
        return True


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every log record to stderr, one line each, as text or JSON, with its request id.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if log_format is LogFormat.JSON:
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
