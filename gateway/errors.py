"""One error hierarchy for the gateway, and the one table that maps it to HTTP and gRPC status.

Code raises these errors and never returns error values. The REST transport answers them with
:func:`http_status`, the gRPC transport aborts with the code :func:`status_code_name` names; neither
keeps a mapping of its own (KServe's two hand-kept mappings drifted apart). The gRPC codes are given
by their canonical names (``google.rpc.Code``), so that this module, and the core that raises these
errors, import no transport library.
"""

from __future__ import annotations

from http import HTTPStatus


class GatewayError(Exception):
    """Base of every error the gateway reports to a client.

    The message is shown to the client as it is, so it should say what was wrong and what was
    expected (which input, which shape, which model).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(GatewayError):
    """The request is malformed or does not match the model (400 / INVALID_ARGUMENT)."""


class NotFoundError(GatewayError):
    """The model, version or route does not exist, or the model is not loaded (404 / NOT_FOUND)."""


class UnavailableError(GatewayError):
    """The model exists but is not ready: loading, or its load failed (503 / UNAVAILABLE)."""


class DeadlineExceededError(GatewayError):
    """The request's deadline passed before its answer was ready (504 / DEADLINE_EXCEEDED).

    The deadline is the earliest of the gRPC deadline, Triton's ``timeout`` request parameter and the
    server's ``request_timeout_seconds``. Work still queued is dropped; work already running on the
    backend finishes and its result is discarded.
    """


class FailedPreconditionError(GatewayError):
    """The operation is not allowed in the server's current mode (400 / FAILED_PRECONDITION)."""


class UnauthenticatedError(GatewayError):
    """The management API was called without a valid bearer token (401 / UNAUTHENTICATED)."""


class AlreadyExistsError(GatewayError):
    """The model version to create exists already (409 / ALREADY_EXISTS)."""


class PayloadTooLargeError(GatewayError):
    """The request or upload is larger than the server's limit (413 / RESOURCE_EXHAUSTED)."""


class UnsupportedMediaTypeError(InvalidArgumentError):
    """The request body is in an encoding the server does not decode (415 / INVALID_ARGUMENT)."""


class NotSupportedError(GatewayError):
    """The request asks for a feature the gateway does not implement, e.g. CUDA shared memory (400 / UNIMPLEMENTED).

    HTTP answers 400, not 501: the route exists and the server works; the request asks for what it
    does not do. gRPC's UNIMPLEMENTED says so to gRPC clients.
    """


class InternalError(GatewayError):
    """The backend failed while running a valid request (500 / INTERNAL)."""


# The one mapping from error class to (HTTP status, gRPC status code name).
_STATUS: dict[type[GatewayError], tuple[HTTPStatus, str]] = {
    InvalidArgumentError: (HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT"),
    NotFoundError: (HTTPStatus.NOT_FOUND, "NOT_FOUND"),
    UnavailableError: (HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE"),
    DeadlineExceededError: (HTTPStatus.GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
    FailedPreconditionError: (HTTPStatus.BAD_REQUEST, "FAILED_PRECONDITION"),
    UnauthenticatedError: (HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED"),
    AlreadyExistsError: (HTTPStatus.CONFLICT, "ALREADY_EXISTS"),
    PayloadTooLargeError: (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RESOURCE_EXHAUSTED"),
    UnsupportedMediaTypeError: (HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "INVALID_ARGUMENT"),
    NotSupportedError: (HTTPStatus.BAD_REQUEST, "UNIMPLEMENTED"),
    InternalError: (HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL"),
}


def _lookup(error: GatewayError) -> tuple[HTTPStatus, str]:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return _STATUS[InternalError]


def http_status(error: GatewayError) -> int:
    """The HTTP status code for ``error`` (e.g. 400 for :class:`InvalidArgumentError`)."""
    return int(_lookup(error)[0])


def status_code_name(error: GatewayError) -> str:
    """The gRPC status code name for ``error`` (e.g. ``INVALID_ARGUMENT`` for :class:`InvalidArgumentError`).

    The names are those of ``grpc.StatusCode`` and ``google.rpc.Code``.
    """
    return _lookup(error)[1]
