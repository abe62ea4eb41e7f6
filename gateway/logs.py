"""Logging: one line per event, as text or JSON, carrying the id of the request it belongs to.

The request id of an inference (the v2 ``id``, else the ``X-Request-ID`` header or ``x-request-id``
gRPC metadata, else a generated one) is held in a context variable while the request is answered;
a logging filter copies it into every record as ``request_id``, so each line logged while answering
the request names it. JSON lines come from python-json-logger.
"""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar
from enum import StrEnum

from pythonjsonlogger.json import JsonFormatter

__all__ = ["LogFormat", "configure_logging", "current_request_id", "new_request_id", "set_request_id"]

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"


class LogFormat(StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


def current_request_id() -> str | None:
    """The id of the request being answered in this context, or None outside a request."""
    return _request_id.get()


def set_request_id(request_id: str) -> None:
    """Make ``request_id`` the id of the request being answered in this context (task)."""
    _request_id.set(request_id)


def new_request_id() -> str:
    """A new random request id (32 hex digits)."""
    return uuid.uuid4().hex


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
