"""Request bodies of the REST transport, read within the server's limits.

The limit (``max_request_bytes``) applies to the ``Content-Length`` header before anything is read,
to the body as it arrives, and to what a ``Content-Encoding: gzip`` or ``deflate`` body decompresses
to; nothing past the limit is ever buffered. Upload bodies (model packages) have their own limit and
are not read here.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from starlette.types import Message, Receive, Scope

from gateway.errors import InvalidArgumentError, PayloadTooLargeError, UnsupportedMediaTypeError

#: Content-Encoding of a request body -> zlib ``wbits`` to decompress it (None: not compressed).
_ENCODINGS: dict[str, int | None] = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                                     "deflate": zlib.MAX_WBITS}  # fmt: skip


class BodyReader:
    """Collects a request body as its chunks arrive, decompressing it, and refuses it past a size limit.

    The limit applies to the body as received and, for a compressed body, to what it decompresses
    to: decompression stops as soon as its output passes the limit (so a gzip bomb costs at most
    ``limit`` bytes), and no more than the limit is ever buffered.

    Args:
        limit: largest body accepted, in bytes (``max_request_bytes``).
        content_encoding: the ``Content-Encoding`` header: absent, ``identity``, ``gzip`` (or ``x-gzip``)
            or ``deflate`` (zlib, RFC 9110 section 8.4.1).
        content_length: the ``Content-Length`` header, checked before any byte is read.

    Raises:
        UnsupportedMediaTypeError: another content encoding (415).
        PayloadTooLargeError: a Content-Length over the limit (413).
    """

    __slots__ = ("_chunks", "_decompressor", "_limit", "_received", "_size", "_wbits")

    def __init__(self, limit: int, content_encoding: str | None = None, content_length: str | None = None) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._received = 0
        self._wbits = 0
        self._decompressor: Any = None
        check_content_length(content_length, limit)
        if content_encoding:
            encoding = content_encoding.strip().lower()
            if encoding not in _ENCODINGS:
                raise UnsupportedMediaTypeError(
                    f"unsupported Content-Encoding '{content_encoding}'; the server decodes gzip, deflate or identity"
                )
            wbits = _ENCODINGS[encoding]
            if wbits is not None:
                self._wbits = wbits
                self._decompressor = zlib.decompressobj(wbits)

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body.

        Raises:
            PayloadTooLargeError: the body, or what it decompresses to, passes the limit (413).
            InvalidArgumentError: a compressed body that does not decompress (400).
        """
        self._received += len(chunk)
        check_received_bytes(self._received, self._limit)
        if self._decompressor is None:
            if chunk:
                self._chunks.append(chunk)
            return
        try:
            while chunk:
                # max_length: at most one byte past the limit, so that passing it is seen (0 would mean no limit).
                output = self._decompressor.decompress(chunk, self._limit - self._size + 1)
                self._size += len(output)
                if self._size > self._limit:
                    raise PayloadTooLargeError(_too_large("the decompressed request body", self._limit))
                self._chunks.append(output)
                chunk = self._decompressor.unconsumed_tail
                if not chunk and self._decompressor.eof and self._decompressor.unused_data:
                    chunk = self._decompressor.unused_data  # the next gzip member (RFC 1952 section 2.2)
                    self._decompressor = zlib.decompressobj(self._wbits)
        except zlib.error as error:
            raise InvalidArgumentError(f"the request body does not decompress: {error}") from None

    def finish(self) -> bytes:
        """The whole body, decompressed.

        Raises:
            InvalidArgumentError: a compressed body that ends before its compressed stream does (400).
        """
        if self._decompressor is not None and not self._decompressor.eof:
            raise InvalidArgumentError("the compressed request body is truncated")
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(what: str, limit: int) -> str:
    return f"{what} is larger than the server's limit of {limit} bytes (--max-request-bytes)"


def check_content_length(content_length: str | None, limit: int) -> None:
    """Refuse a request whose ``Content-Length`` header declares more than ``limit`` bytes, before reading it.

    Raises:
        PayloadTooLargeError: the declared length is over the limit (413).
    """
    if (
        content_length is not None
        and content_length.isascii()
        and content_length.isdigit()
        and int(content_length) > limit
    ):
        raise PayloadTooLargeError(_too_large(f"Content-Length {content_length}", limit))


def check_received_bytes(received: int, limit: int) -> None:
    """Refuse a request body once the bytes received so far pass ``limit``.

    Raises:
        PayloadTooLargeError: ``received`` is over the limit (413).
    """
    if received > limit:
        raise PayloadTooLargeError(_too_large("the request body", limit))


async def receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes | None:
    """Read an ASGI request body within ``limit`` bytes, decompressing a gzip or deflate body as it arrives.

    The Content-Length header is checked before anything is read, then the body as it arrives and
    what it decompresses to (see :class:`BodyReader`); nothing past the limit is
    buffered.

    Args:
        headers: the request headers, by lower-case name (``content-length``, ``content-encoding``).
        limit: largest body in bytes (``max_request_bytes``).

    Returns:
        The body, decompressed; None if the client disconnected first.

    Raises:
        PayloadTooLargeError: the body, or what it decompresses to, is larger than ``limit`` (413).
        UnsupportedMediaTypeError: a Content-Encoding other than gzip, deflate or identity (415).
        InvalidArgumentError: a compressed body that does not decompress (400).
    """
    content_length = headers.get("content-length")
    if (
        content_length is not None
        and "content-encoding" not in headers
        and content_length.isascii()
        and content_length.isdigit()
        and int(content_length) <= limit
    ):
        # The HTTP server ends the body at Content-Length: there is nothing to count (the hot path).
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    reader = BodyReader(limit, headers.get("content-encoding"), content_length)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        reader.feed(message.get("body", b""))
        if not message.get("more_body", False):
            return reader.finish()


def limited_receive(receive: Receive, scope: Scope, limit: int) -> Receive:
    """``receive`` of a request whose body may hold at most ``limit`` bytes (checked on Content-Length first).

    Reading past the limit raises :class:`PayloadTooLargeError` inside the route reading the body,
    which answers it in its own error format (413).
    """
    content_length = next(
        (value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"), None
    )
    received = 0

    async def limited() -> Message:
        nonlocal received
        check_content_length(content_length, limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            check_received_bytes(received, limit)
        return message

    return limited
