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
#: Response headers the handler looks at, drops or replaces; any other passes as it is.
_RESPONSE_SPECIAL = http1.HOP_BY_HOP | {
    b"content-length", b"content-type", b"cache-control", b"alt-svc",
}  # fmt: skip
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
        # One pass over the origin's headers (this runs once per request): the head the client
        # gets is built as it goes, and what we need to know of them is picked up on the way.
        # Most headers are no business of ours: one set lookup each.
        has_length = upstream_chunked = False
        content_type = b""
        cache_control: list[bytes] = []
        alt_svc: list[bytes] = []
        drop = http1.connection_named(self._headers)
        lines = [b"HTTP/1.1 %d %s" % (status, self._reason or http1.REASONS.get(status, b""))]
        for name, value in self._headers:
            lower = name.lower()
            line = name + b": " + value
            if lower not in _RESPONSE_SPECIAL:
                if drop is None or lower not in drop:
                    lines.append(line)
                continue
            if lower == b"transfer-encoding":
                upstream_chunked = upstream_chunked or b"chunked" in value.lower()
            if lower in http1.HOP_BY_HOP or (drop is not None and lower in drop):
                continue
            if lower == b"content-length":
                has_length = True
            elif lower == b"content-type":
                content_type = value.lower()
            elif lower == b"cache-control":
                cache_control.append(line)
                continue
            elif lower == b"alt-svc":
                alt_svc.append(line)
                continue
            lines.append(line)
        no_body = exchange.is_head or status in _NO_BODY_STATUS
        self._chunked_out = not has_length and not no_body
        self._close_delimited = self._chunked_out and not upstream_chunked
        if self._chunked_out:
            lines.append(b"transfer-encoding: chunked")
        exchange.json_body = content_type.startswith(_JSON)
        if content_type.startswith(_SSE):
            exchange.sse = True
            # Tell any buffering proxy or CDN in front of us to pass events through at once.
            lines.append(b"cache-control: no-cache")
            lines.append(b"x-accel-buffering: no")
        else:
            lines.extend(cache_control)
        if (exchange.sse or exchange.json_body) and exchange.conn.service.usage is not None:
            exchange.tail = []
        ours = exchange.conn.service.alt_svc
        # Ours replaces the origin's: it names where *this* host serves HTTP/3.
        lines.extend(alt_svc if ours is None else (b"alt-svc: " + ours,))
        lines.append(b"x-request-id: " + exchange.request_id)
        lines.append(
            b"connection: keep-alive\r\n\r\n"
            if exchange.client_keep_alive
            else b"connection: close\r\n\r\n"
        )
        self._head_sent = True
        self._headers = []  # not kept for as long as the stream runs
        exchange.response_started(status, b"\r\n".join(lines))
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
