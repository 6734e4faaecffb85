"""The upstream side of one HTTP exchange: parses the origin's response and streams it back.

Every body chunk is written to the client the moment it is parsed (re-chunked when the client
gets chunked encoding): no buffering, so each SSE event leaves as soon as it arrives.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from relay.protocols import http1

if TYPE_CHECKING:
    from relay.handlers.http_exchange import Exchange

_NO_BODY_STATUS = (204, 304)
_SSE = b"text/event-stream"
_JSON = b"application/json"


class UpstreamConnection(asyncio.Protocol):
    """An upstream connection (through the chain) serving one exchange at a time.

    It outlives an exchange when both the origin and the client keep the connection alive,
    so the next request of the same client connection skips the tunnel set-up.
    """

    # Slots: one per upstream connection, held for as long as a stream runs or it idles.
    __slots__ = (
        "_chunked_out", "_close_delimited", "_head_sent", "_headers", "_parser", "_reason",
        "closed", "error", "exchange", "node", "pool_key", "reusable", "transport",
    )  # fmt: skip

    def __init__(
        self, transport: asyncio.Transport, node: str, pool_key: tuple[str, str] = ("", "")
    ) -> None:
        self.transport = transport
        self.node = node
        #: Where this connection leads (see ``Route.pool_key``), to pool it when idle.
        self.pool_key = pool_key
        self.exchange: Exchange | None = None
        self.reusable = False
        self.closed = False
        #: Why the connection ended (set by connection_lost).
        self.error: Exception | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: http1.Headers = []
        self._reason = b""
        self._chunked_out = False
        self._head_sent = False
        #: The origin frames its body by closing the connection (no length, not chunked).
        self._close_delimited = False

    def close(self) -> None:
        self.transport.close()

    # --- exchange lifecycle -----------------------------------------------------------------

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.reusable = False
        self._headers = []
        self._reason = b""
        self._head_sent = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # An idle keep-alive connection has nothing to say; anything here is garbage.
            self.transport.abort()
            return
        exchange.upstream_activity(len(data))
        conn = exchange.conn
        conn.cork()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            exchange.upstream_failed(f"invalid response from upstream: {exc}")
            self.transport.abort()
        finally:
            conn.uncork()

    def eof_received(self) -> bool:
        return False  # close: a response without framing ends here (handled in connection_lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        exchange = self.exchange
        if exchange is None:
            return
        if self._head_sent and self._close_delimited and exc is None:
            if self._chunked_out:
                exchange.send_to_client(http1.LAST_CHUNK)
            exchange.response_complete(reusable=False)
            return
        exchange.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_client_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_client_reading()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim answer (100 Continue, 103 Early Hints): pass on, keep waiting.
            exchange.send_to_client(http1.response_head(status, self._reason, self._headers))
            self._headers = []
            return
        # One pass over the origin's headers (this runs once per request): what the client
        # gets, and what we need to know of them.
        has_length = upstream_chunked = False
        content_type = b""
        drop = http1.HOP_BY_HOP
        for name, value in self._headers:
            if name.lower() == b"connection":
                drop = drop | http1.connection_tokens([(name, value)])
        headers: http1.Headers = []
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                upstream_chunked = upstream_chunked or b"chunked" in value.lower()
            if lower in drop:
                continue
            if lower == b"content-length":
                has_length = True
            elif lower == b"content-type":
                content_type = value.lower()
            headers.append((name, value))
        no_body = exchange.is_head or status in _NO_BODY_STATUS
        self._chunked_out = not has_length and not no_body
        self._close_delimited = self._chunked_out and not upstream_chunked
        if self._chunked_out:
            headers.append((b"transfer-encoding", b"chunked"))
        exchange.json_body = content_type.startswith(_JSON)
        if content_type.startswith(_SSE):
            exchange.sse = True
            # Tell any buffering proxy or CDN in front of us to pass events through at once.
            headers = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
            headers.append((b"cache-control", b"no-cache"))
            headers.append((b"x-accel-buffering", b"no"))
        if (exchange.sse or exchange.json_body) and exchange.conn.service.usage is not None:
            exchange.tail = []
        alt_svc = exchange.conn.service.alt_svc
        if alt_svc is not None:
            # Ours replaces the origin's: it names where *this* host serves HTTP/3.
            headers = [(n, v) for n, v in headers if n.lower() != b"alt-svc"]
            headers.append((b"alt-svc", alt_svc))
        headers.append((b"x-request-id", exchange.request_id))
        headers.append((b"connection", b"keep-alive" if exchange.client_keep_alive else b"close"))
        self._head_sent = True
        self._headers = []  # not kept for as long as the stream runs
        exchange.response_started(status, http1.response_head(status, self._reason, headers))
        if exchange.is_head:
            # httptools cannot be told to skip a HEAD answer's body: end the exchange here and
            # never reuse the connection.
            exchange.response_complete(reusable=False)

    def on_body(self, body: bytes) -> None:
        # DANGER ZONE: one call per upstream chunk (per SSE event, for token streams).
        exchange = self.exchange
        if exchange is None:
            return
        exchange.send_body(http1.chunk(body) if self._chunked_out else body, body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or not self._head_sent:
            return
        if self._chunked_out:
            exchange.send_to_client(http1.LAST_CHUNK)
        exchange.response_complete(reusable=self._parser.should_keep_alive())
