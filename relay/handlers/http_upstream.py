"""The upstream side of one HTTP exchange: parses the origin's response and streams it back.

Every body read is written to the client the moment it arrives: no buffering, so each SSE
event leaves as soon as it arrives. httptools parses response heads, and bodies with a
length (its parser then serves the connection's next response too). A chunked body is
followed by its framing alone (``ChunkedBody``) and goes out as the origin framed it, a body
that ends with the connection is re-chunked read by read: the parser is dropped for those, so
a long stream holds none.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from relay.protocols import http1
from relay.protocols.http1_body import BodyError, ChunkedBody

if TYPE_CHECKING:
    from relay.handlers.http_exchange import Exchange

_NO_BODY_STATUS = (204, 304)
#: Response headers the handler looks at, drops or replaces; any other passes as it is.
_RESPONSE_SPECIAL = http1.HOP_BY_HOP | {
    b"content-length", b"content-type", b"cache-control", b"alt-svc",
}  # fmt: skip
_SSE = b"text/event-stream"
_JSON = b"application/json"
#: A response head longer than this is refused (httptools' own bound is far larger).
MAX_RESPONSE_HEAD = 65536
_HEAD_END = b"\r\n\r\n"

# How the body of the response in progress is framed (``UpstreamConnection._framing``).
_HEAD = 0  # reading a head: no body yet
_CHUNKED = 1  # chunked: ``_chunks`` follows it; the client gets it as it is
_LENGTH = 2  # Content-Length: the parser follows it; the client gets the same length
_UNTIL_CLOSE = 3  # neither: the body ends with the connection; the client gets it chunked


class UpstreamConnection(asyncio.Protocol):
    """An upstream connection (through the chain) serving one exchange at a time.

    It outlives an exchange when both the origin and the client keep the connection alive,
    so the next request of the same client connection skips the tunnel set-up.
    """

    # Slots: one per upstream connection, held for as long as a stream runs or it idles.
    __slots__ = (
        "_chunks", "_framing", "_head_buf", "_headers", "_keep_alive", "_parser", "_reason",
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
        #: Parses heads and bodies with a length; dropped (None) when a body is followed without
        #: it, and made again for the next head.
        self._parser: httptools.HttpResponseParser | None = None
        #: The start of a response head that a read cut.
        self._head_buf = b""
        self._headers = http1.NO_HEADERS
        self._reason = b""
        self._framing = _HEAD
        self._chunks: ChunkedBody | None = None
        #: The origin keeps the connection open after this response.
        self._keep_alive = False

    def close(self) -> None:
        self.transport.close()

    # --- exchange lifecycle -----------------------------------------------------------------

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.reusable = False
        self._head_buf = b""
        self._reason = b""
        self._framing = _HEAD
        self._chunks = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # An idle keep-alive connection has nothing to say; anything here is garbage.
            self.transport.abort()
            return
        exchange.upstream_activity(len(data))
        if self._framing == _CHUNKED:
            # DANGER ZONE: every read of a chunked response (per SSE event): no copy, one write.
            chunks = self._chunks
            assert chunks is not None
            before = chunks.payload_bytes
            try:
                out = chunks.feed(data, exchange.tail)
            except BodyError as exc:
                self._invalid(exchange, str(exc))
                return
            if not chunks.done:
                exchange.send_body(out, chunks.payload_bytes - before)
                return
            conn = exchange.conn
            conn.cork()  # the last chunk leaves with the rest, and the exchange ends in this read
            try:
                exchange.send_body(out, chunks.payload_bytes - before)
                self._complete(exchange, not chunks.extra)
            finally:
                conn.uncork()
            return
        conn = exchange.conn
        conn.cork()
        try:
            self._read(exchange, data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, BodyError) as exc:
            self._invalid(exchange, str(exc))
        finally:
            conn.uncork()

    def _read(self, exchange: Exchange, data: bytes) -> None:
        """Every read but those of a chunked body under way (``data_received`` takes those)."""
        while data:
            if self.exchange is not exchange:  # it ended, and more came behind it
                self.reusable = False
                return
            framing = self._framing
            if framing == _HEAD:
                data = self._read_head(data)
            elif framing == _CHUNKED:
                chunks = self._chunks
                assert chunks is not None
                before = chunks.payload_bytes
                exchange.send_body(chunks.feed(data, exchange.tail), chunks.payload_bytes - before)
                if chunks.done:
                    self._complete(exchange, not chunks.extra)
                return
            elif framing == _LENGTH:
                assert self._parser is not None
                self._parser.feed_data(data)  # on_body, on_message_complete
                return
            else:  # _UNTIL_CLOSE
                if exchange.tail is not None:
                    exchange.tail.append(data)
                exchange.send_body(http1.chunk(data), len(data))
                return

    def _read_head(self, data: bytes) -> bytes:
        """Feed a response head to the parser; return what follows it that is not the parser's
        to read (the body, unless it has a length)."""
        buf = self._head_buf + data if self._head_buf else data
        end = buf.find(_HEAD_END)
        if end < 0:
            if len(buf) > MAX_RESPONSE_HEAD:
                raise BodyError(f"response head over {MAX_RESPONSE_HEAD} bytes")
            self._head_buf = buf
            return b""
        self._head_buf = b""
        end += len(_HEAD_END)
        self._headers = []
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpResponseParser(self)
        head_request = self.exchange is not None and self.exchange.is_head
        if end < len(buf):
            parser.feed_data(buf[:end])
            rest = buf[end:]
        else:
            parser.feed_data(buf)
            rest = b""
        framing = self._framing
        if framing == _LENGTH:
            if rest:
                parser.feed_data(rest)
            return b""
        if framing != _HEAD or head_request:
            # Mid-message for httptools: a body it will not see, or a HEAD answer's length.
            self._parser = None
        return rest

    def _complete(self, exchange: Exchange, clean: bool) -> None:
        """The response ended; ``clean``: nothing followed it (else the connection is spent)."""
        if self._framing != _LENGTH:
            exchange.send_to_client(http1.LAST_CHUNK)
        self._framing = _HEAD
        self._chunks = None
        exchange.response_complete(reusable=self._keep_alive and clean)

    def _invalid(self, exchange: Exchange, why: str) -> None:
        self.reusable = False
        exchange.upstream_failed(f"invalid response from upstream: {why}")
        self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close: a response without framing ends here (handled in connection_lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        exchange = self.exchange
        if exchange is None:
            return
        if self._framing == _UNTIL_CLOSE and exc is None:
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

    # --- httptools callbacks (heads, and bodies with a length) -------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers is not http1.NO_HEADERS:  # (only heads are fed to the parser)
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        parser = self._parser
        if exchange is None or parser is None:  # bytes after a whole response, parsed as one
            raise BodyError("a response nobody asked for")
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim answer (100 Continue, 103 Early Hints): pass on, keep waiting.
            exchange.send_to_client(http1.response_head(status, self._reason, self._headers))
            self._headers = http1.NO_HEADERS
            return
        # One pass over the origin's headers (this runs once per request): the head the client
        # gets is built as it goes, and what we need to know of them is picked up on the way.
        # Most headers are no business of ours: one set lookup each.
        length_line = b""
        transfer_codings = b""
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
                transfer_codings += b"," + value.lower()
            if lower in http1.HOP_BY_HOP or (drop is not None and lower in drop):
                continue
            if lower == b"content-length":
                length_line = line  # httptools checked it: digits, and one value
            elif lower == b"content-type":
                content_type = value.lower()
                lines.append(line)
            elif lower == b"cache-control":
                cache_control.append(line)
            elif lower == b"alt-svc":
                alt_svc.append(line)
            else:
                lines.append(line)
        upstream_chunked = False
        if transfer_codings:
            # Chunked only when it is the final coding, as httptools reads it; named anywhere
            # else, where its body ends is anyone's guess: refused (a 502, or a broken stream).
            upstream_chunked = transfer_codings.rsplit(b",", 1)[-1].strip() == b"chunked"
            if not upstream_chunked and b"chunked" in transfer_codings:
                raise BodyError("chunked is not the final transfer coding")
        self._keep_alive = parser.should_keep_alive()
        if exchange.is_head or status in _NO_BODY_STATUS:
            framing = _HEAD  # no body: the response ends with its head
            if length_line:
                lines.append(length_line)  # the length of the body a GET would get
        elif upstream_chunked:
            framing = _CHUNKED  # the origin's chunks go out as they are
            self._chunks = ChunkedBody()
            lines.append(b"transfer-encoding: chunked")
        elif length_line:
            framing = _LENGTH
            lines.append(length_line)
        else:
            framing = _UNTIL_CLOSE  # re-chunked read by read, so the client sees the end
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
        self._headers = http1.NO_HEADERS  # not kept for as long as the stream runs
        exchange.response_started(status, b"\r\n".join(lines))
        if framing == _HEAD:
            # A HEAD answer's connection is not reused: an origin that sends a body anyway
            # would leave it in front of the next response.
            exchange.response_complete(reusable=self._keep_alive and not exchange.is_head)
        else:
            self._framing = framing  # a length of 0 ends in on_message_complete, at once

    def on_body(self, body: bytes) -> None:
        # A body with a length (bulk downloads, JSON answers): as httptools reads it.
        exchange = self.exchange
        if exchange is not None:
            if exchange.tail is not None:
                exchange.tail.append(body)
            exchange.send_body(body, len(body))

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None and self._framing == _LENGTH:
            self._complete(exchange, True)
