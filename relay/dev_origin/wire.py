"""HTTP/1.1 pieces shared by the connection and the handlers: the parsed request, response
heads, JSON error bodies, the ``_Job`` interface of a response in progress, and ``_HttpError``."""

from __future__ import annotations

import json
from typing import Protocol

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
}
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_SERVER_HEADER = b"Server: aicdn-dev-origin\r\n"


class _Job(Protocol):
    """A response in progress that outlives the callback which started it."""

    def cancel(self) -> None:
        """Stop for good (connection lost); must not write afterwards."""

    def pause_writing(self) -> None:
        """The transport's buffer is above its high-water mark."""

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""


class _Request:
    """One parsed request, as accumulated by the parser callbacks."""

    __slots__ = ("body", "error", "headers", "http11", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.method = ""
        self.http11 = True
        self.keep_alive = True
        #: Non-zero when the request must be refused with this status and the connection closed.
        self.error = 0

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _HttpError(Exception):
    """A handler refuses the request; becomes a JSON error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_body(status: int, message: str) -> bytes:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def _head(status: int, headers: list[bytes], keep_alive: bool, http11: bool) -> bytes:
    """A response status line plus header block; ``headers`` are complete ``Name: v\\r\\n``."""
    version = b"HTTP/1.1" if http11 else b"HTTP/1.0"
    if not keep_alive:
        connection = b"Connection: close\r\n"
    elif not http11:
        connection = b"Connection: keep-alive\r\n"  # 1.0 closes by default: say we do not.
    else:
        connection = b""
    reason = _REASONS.get(status, "Unknown").encode()
    return b"%s %d %s\r\n%s%s%s\r\n" % (
        version,
        status,
        reason,
        _SERVER_HEADER,
        b"".join(headers),
        connection,
    )
