"""HTTP/1.1 message heads for the ``http`` handler: pure functions over bytes, no I/O."""

from __future__ import annotations

import itertools
import json
import os
import re

#: Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

Headers = list[tuple[bytes, bytes]]

#: The headers of a connection between two message heads: shared, so that a long stream holds
#: no list of its own. Never appended to (each head being parsed gets a list of its own).
NO_HEADERS: Headers = []

# Request ids: a random per-process prefix and a counter. Unique across a fleet in practice,
# and far cheaper per request than uuid4 (which reads os.urandom every time).
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> bytes:
    return b"%s%08x" % (_ID_PREFIX, next(_ID_COUNTER))


def valid_request_id(value: bytes) -> bool:
    """Client-supplied request ids are kept only when short and made of safe characters."""
    return bool(_REQUEST_ID.match(value))


def connection_tokens(headers: Headers) -> set[bytes]:
    """Header names listed in ``Connection`` (also hop-by-hop for this message)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def connection_named(headers: Headers) -> frozenset[bytes] | None:
    """Header names a ``Connection`` header lists beyond the hop-by-hop ones (they are
    hop-by-hop for this message too); None when there are none, as almost always."""
    named: set[bytes] | None = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            if value.lower() in _PLAIN_CONNECTION:
                continue  # the usual values: nothing to parse
            tokens = connection_tokens([(name, value)]) - HOP_BY_HOP - {b"close"}
            if tokens:
                named = tokens if named is None else named | tokens
    return frozenset(named) if named is not None else None


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason or REASONS.get(status, b""))]
    lines.extend(n + b": " + v for n, v in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (callers never pass an empty ``data``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def json_error(
    status: int,
    error: str,
    message: str,
    request_id: bytes,
    keep_alive: bool,
    extra: Headers | None = None,
) -> bytes:
    """A complete JSON error response, as the relay itself answers (502, 504, 429, 400 ...)."""
    body = json.dumps(
        {"error": error, "message": message, "request_id": request_id.decode()}
    ).encode()
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id),
        (b"connection", b"keep-alive" if keep_alive else b"close"),
        *(extra or ()),
    ]
    return response_head(status, b"", headers) + body
