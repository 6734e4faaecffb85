"""HTTP/3 entry: H3 requests served by the HTTP/1.1 handler, unchanged.

An ``http3`` listener is a QUIC listener offering ALPN ``h3`` whose links run aioquic's
``H3Connection`` (control and QPACK streams, frame parsing, header validation). Each request
stream becomes an ``H3RequestTransport``: to the handler protocol (``HttpConnection``) it is
one client connection carrying one HTTP/1.1 request with ``Connection: close``, so H3 requests
take exactly the HTTP/1.1 path (limits, policies, headers, timeouts, retries, metrics). What the
handler writes back is parsed (``httptools``) into H3 HEADERS and DATA frames, each body chunk
sent as soon as it is parsed, so SSE streams token by token.

Bytes go through the stream transports (``QuicStreamTransport``) both ways, so the tunnel's
flow control applies: receive credit follows what the handler consumes, writers pause on the
stream's and the connection's send budget. aioquic's ``H3Connection`` gets a ``_QuicFacade``
instead of the connection: what it sends on a request stream goes through that stream's
transport (and its accounting); only its own control and QPACK streams write to aioquic
directly (a few bytes per connection).

Contracts of ``H3RequestTransport`` (towards the handler):

* ``connection_made`` when the request's HEADERS arrive (not when the stream opens), then the
  request as HTTP/1.1 bytes; a body without ``content-length`` is sent chunked. The end of the
  request stream is ``eof_received`` (a false answer closes).
* ``write``: HTTP/1.1 response bytes; interim (1xx) and final heads become HEADERS, the body
  DATA, the end of the message ends the stream (FIN). ``close`` after a complete response ends
  the stream cleanly; ``close`` before one, and ``abort``, reset it (the client sees an error,
  never a truncated response that looks complete). Either way ``connection_lost`` follows.
* The client resetting the stream, or the QUIC connection going away, is ``connection_lost``
  with the error. ``pause_reading``/``resume_reading`` and the write buffer limits act on the
  QUIC stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import httptools
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from relay.transports.base import NO_EXTRA
from relay.transports.quic.engine import TunnelQuicConnection
from relay.transports.quic.link import QuicLink
from relay.transports.quic.server import QuicListener
from relay.transports.quic.stream import QuicStreamTransport

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]

#: The ALPN of HTTP/3.
ALPN = H3_ALPN[0]

#: Connection-specific headers: meaningless (and forbidden) in HTTP/3, dropped both ways.
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)


class _QuicFacade:
    """What ``H3Connection`` uses of a ``QuicConnection`` (aioquic 1.7.2), routed so that bytes
    for a request stream go through its transport: the tunnel's send accounting then covers
    HTTP/3 responses too, and nothing re-creates a stream the transport already finished."""

    def __init__(self, link: QuicLink) -> None:
        self._link = link
        self._quic = link.quic
        self._quic_logger = None  # H3Connection logs frames when set; we keep no qlog

    @property
    def configuration(self) -> QuicConfiguration:
        return self._quic.configuration

    @property
    def _remote_max_datagram_frame_size(self) -> int | None:
        return self._quic._remote_max_datagram_frame_size

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        return self._quic.get_next_available_stream_id(is_unidirectional)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self._link.streams.get(stream_id)
        if stream is not None:
            stream.write(data)
            if end_stream:
                stream.write_eof()
        elif stream_id & 1:
            # Our own (server-initiated) control and QPACK streams.
            self._quic.send_stream_data(stream_id, data, end_stream)
            self._link.schedule_flush()
        # else: a client stream whose transport is gone; aioquic would re-create its state.

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self._link.reset(stream_id, error_code)
        self._link.schedule_flush()

    def close(
        self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None:
        self._link.close(error_code=error_code, reason_phrase=reason_phrase)


class H3Session:
    """The HTTP/3 side of one QUIC connection: its ``H3Connection`` and its request streams."""

    def __init__(self, factory: ProtocolFactory) -> None:
        self.factory = factory
        self.link: QuicLink | None = None
        self.h3: H3Connection | None = None
        self.requests: dict[int, H3RequestTransport] = {}

    def on_stream(self, stream: QuicStreamTransport) -> None:
        """A stream the client opened (``QuicLink``'s ``on_stream``)."""
        link = self.link
        assert link is not None
        if self.h3 is None:
            # Created with the first stream rather than with the link: by then the handshake
            # is done (or 0-RTT keys exist), and our SETTINGS go out on the 1-RTT packets.
            self.h3 = H3Connection(cast(QuicConnection, _QuicFacade(link)))
        stream_id = stream.stream_id
        if not stream_id & 2:  # bidirectional: a request
            self.requests[stream_id] = H3RequestTransport(self, stream)
        events = _StreamEvents(self, stream_id)
        stream.set_protocol(events)
        events.connection_made(stream)

    def receive(self, stream_id: int, data: bytes, fin: bool) -> None:
        """Bytes of any client stream, in order: parsed by aioquic, dispatched per request."""
        h3 = self.h3
        assert h3 is not None
        # DANGER ZONE: every chunk of every request body (and every QPACK instruction).
        for event in h3.handle_event(
            StreamDataReceived(data=data, end_stream=fin, stream_id=stream_id)
        ):
            if isinstance(event, HeadersReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request.headers_received(event.headers, event.stream_ended)
            elif isinstance(event, DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request.body_received(event.data, event.stream_ended)

    def stream_lost(self, stream_id: int, exc: Exception | None) -> None:
        request = self.requests.pop(stream_id, None)
        if self.h3 is not None:
            # aioquic forgets a stream once it ended both ways; one reset or aborted would stay
            # in its table for the connection's lifetime.
            self.h3._stream.pop(stream_id, None)
        if request is not None:
            request.stream_lost(exc)


class _StreamEvents(asyncio.Protocol):
    """The protocol of a client stream: its bytes go to the session's ``H3Connection``."""

    __slots__ = ("_session", "_stream_id")

    def __init__(self, session: H3Session, stream_id: int) -> None:
        self._session = session
        self._stream_id = stream_id

    def data_received(self, data: bytes) -> None:
        self._session.receive(self._stream_id, data, False)

    def eof_received(self) -> bool:
        self._session.receive(self._stream_id, b"", True)
        # Kept open: a request stream closes when its response is done; a unidirectional one
        # cannot be closed by us (see ``QuicLink``).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._session.stream_lost(self._stream_id, exc)

    def pause_writing(self) -> None:
        request = self._session.requests.get(self._stream_id)
        if request is not None:
            request.set_writing_paused(True)

    def resume_writing(self) -> None:
        request = self._session.requests.get(self._stream_id)
        if request is not None:
            request.set_writing_paused(False)


class H3RequestTransport(asyncio.Transport):
    """One H3 request stream as an HTTP/1.1 client connection (see the module docstring)."""

    def __init__(self, session: H3Session, stream: QuicStreamTransport) -> None:
        super().__init__(NO_EXTRA)
        self._session = session
        self._stream = stream
        self.stream_id = stream.stream_id
        self._protocol: asyncio.Protocol | None = None
        self._closing = False
        self._lost = False
        self._writing_paused = False
        #: Request bytes parsed while the handler had reading paused; None while flowing.
        self._held: list[bytes] | None = None
        self._held_eof = False
        self._reading_paused = False
        self._chunked_body = False
        self._request_done = False
        self._is_head = False
        # response side
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._response_started = False
        self._response_done = False

    # --- request: from the session ----------------------------------------------------------

    def headers_received(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        """The request's HEADERS (validated by aioquic): make the handler protocol and give it
        the request head as HTTP/1.1; ``ended`` when the stream ended with them (no body)."""
        if self._protocol is not None:
            # Trailers: HTTP/1.1 bodies we produce carry none; they only end the body.
            if ended:
                self.body_received(b"", True)
            return
        method = path = authority = b""
        fields: list[bytes] = []
        has_length = has_host = False
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name in _HOP_BY_HOP:
                continue
            has_length = has_length or name == b"content-length"
            has_host = has_host or name == b"host"
            fields.append(name + b": " + value)
        self._is_head = method == b"HEAD"
        if not has_host and authority:
            fields.insert(0, b"host: " + authority)
        # One request per handler connection: it closes after answering, as with HTTP/1.1.
        fields.append(b"connection: close")
        if not ended and not has_length:
            # An H3 body ends with the stream; HTTP/1.1 needs framing for that.
            self._chunked_body = True
            fields.append(b"transfer-encoding: chunked")
        head = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, path or authority, b"\r\n".join(fields))
        protocol = self._session.factory()
        self._protocol = protocol
        protocol.connection_made(self)
        if self._writing_paused:
            protocol.pause_writing()
        self._deliver(head)
        if ended:
            self._end_request()

    def body_received(self, data: bytes, ended: bool) -> None:
        """DATA payload of the request (chunk-encoded when it has no content-length)."""
        if self._protocol is None or self._request_done:
            return  # DATA before HEADERS is refused by aioquic; after the end, nothing comes
        if data:
            self._deliver(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked_body else data)
        if ended:
            self._end_request()

    def _end_request(self) -> None:
        self._request_done = True
        if self._chunked_body:
            self._deliver(b"0\r\n\r\n")
        if self._held is not None:
            self._held_eof = True
        else:
            self._eof()

    def _deliver(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        elif not self._closing and self._protocol is not None:
            self._protocol.data_received(data)

    def _eof(self) -> None:
        if not self._closing and self._protocol is not None and not self._protocol.eof_received():
            self.close()

    def _release_held(self) -> None:
        held = self._held
        if self._reading_paused or held is None:
            return
        self._held = None
        for index, data in enumerate(held):
            self._deliver(data)
            if self._reading_paused:  # paused again by what it just read: keep the rest
                self._held = held[index + 1 :]
                return
        if self._held_eof:
            self._held_eof = False
            self._eof()

    def set_writing_paused(self, paused: bool) -> None:
        """The QUIC stream's send buffer crossed a watermark (from ``_StreamEvents``)."""
        self._writing_paused = paused
        protocol = self._protocol
        if protocol is not None and not self._lost:
            protocol.pause_writing() if paused else protocol.resume_writing()

    def stream_lost(self, exc: Exception | None) -> None:
        """The QUIC stream finished (closed by us, reset by the client, connection lost)."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._held = None
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(exc)

    # --- response: httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers = [(b":status", b"%d" % status)]
        headers += [(n, v) for n, v in self._headers if n not in _HOP_BY_HOP]
        self._headers = []
        h3 = self._session.h3
        assert h3 is not None
        if 100 <= status < 200:
            h3.send_headers(self.stream_id, headers)  # interim: the final head follows
            return
        self._response_started = True
        if self._is_head or status == 304:
            # No body follows, whatever content-length says (the size of a GET's body). HTTP/3
            # clients may check it against the DATA received (aioquic's does, and fails the
            # connection), so it is left out.
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        # httptools cannot be told that a HEAD answer has no body: it ends with its head.
        self._response_done = self._is_head
        h3.send_headers(self.stream_id, headers, end_stream=self._is_head)

    def on_body(self, body: bytes) -> None:
        # DANGER ZONE: every response chunk (every SSE event); sent at once, never collected.
        if not self._response_done:
            h3 = self._session.h3
            assert h3 is not None
            h3.send_data(self.stream_id, body, end_stream=False)

    def on_message_complete(self) -> None:
        if self._response_started and not self._response_done:
            self._response_done = True
            h3 = self._session.h3
            assert h3 is not None
            h3.send_data(self.stream_id, b"", end_stream=True)

    # --- asyncio.Transport ------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._response_done or not data:
            return
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserError:
            log.exception("HTTP/3 stream %d: handler wrote an invalid response", self.stream_id)
            self.abort()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("an HTTP/3 response ends with its message")

    def close(self) -> None:
        if self._closing:
            return
        if not self._response_done:
            # No complete response: a clean end would pass for one. Reset instead.
            self._reset(
                ErrorCode.H3_INTERNAL_ERROR
                if self._response_started
                else ErrorCode.H3_REQUEST_REJECTED
            )
            return
        self._closing = True
        self._stream.close()

    def abort(self) -> None:
        if self._closing:
            return
        self._reset(
            ErrorCode.H3_INTERNAL_ERROR if self._response_started else ErrorCode.H3_REQUEST_REJECTED
        )

    def _reset(self, code: int) -> None:
        self._closing = True
        # The H3 error code first: the stream's own abort resets with a generic code, which
        # aioquic ignores once the stream is reset.
        link = self._session.link
        if link is not None:
            link.reset(self.stream_id, code)
        self._stream.abort()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "alpn_protocol":
            return ALPN
        return self._stream.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def pause_reading(self) -> None:
        if self._reading_paused or self._closing:
            return
        self._reading_paused = True
        if self._held is None:
            self._held = []
        self._stream.pause_reading()  # and no more receive credit for the client

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._stream.resume_reading()
        # From the loop: resume_reading is called from protocol callbacks, which must not be
        # re-entered.
        asyncio.get_running_loop().call_soon(self._release_held)

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def get_write_buffer_size(self) -> int:
        return self._stream.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._stream.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._stream.set_write_buffer_limits(high, low)


class H3Listener(QuicListener):
    """An ``http3`` listener: each connection an ``H3Session``, each request stream a
    connection for a protocol from the factory (see the module docstring)."""

    def new_link(self, quic: TunnelQuicConnection) -> QuicLink:
        session = H3Session(self._factory)
        link = QuicLink(quic, self.options, on_stream=session.on_stream, accept_uni=True)
        session.link = link
        return link
