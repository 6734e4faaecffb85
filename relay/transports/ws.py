"""WebSocket transport (ws/wss) on wsproto: CDN friendly, keepalive pings on by default.

``WebSocketTransport`` carries the tunnel's bytes as binary messages. The handshakes are
separate small protocols that run first and then hand the raw transport over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from relay.transports.base import HandshakeError, LayeredTransport, TransportError

#: A handshake request longer than this is refused.
MAX_HANDSHAKE_BYTES = 16 * 1024


class WebSocketClosed(TransportError):
    """The peer closed the WebSocket, or stopped answering pings."""


class WebSocketTransport(LayeredTransport):
    def __init__(self, inner: asyncio.Transport, ws: WSConnection, keepalive: float) -> None:
        super().__init__(inner)
        self._ws = ws
        self._keepalive = keepalive
        self._awaiting_pong = False
        self._ping_timer: asyncio.TimerHandle | None = None
        if keepalive > 0:
            self._ping_timer = asyncio.get_running_loop().call_later(keepalive, self._ping)

    def start(self) -> None:
        """Deliver messages that arrived together with the handshake answer.

        Call once the protocol above is set.
        """
        super().start()
        self._process_events()

    def _ping(self) -> None:
        if self.is_closing():
            return
        if self._awaiting_pong:
            self.fail(WebSocketClosed("no pong within the keepalive interval"))
            return
        self._awaiting_pong = True
        self.inner.write(self._ws.send(Ping()))
        self._ping_timer = asyncio.get_running_loop().call_later(self._keepalive, self._ping)

    def encode(self, data: bytes) -> bytes:
        return self._ws.send(BytesMessage(data=data))

    def receive(self, data: bytes) -> None:
        try:
            self._ws.receive_data(data)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            self.fail(WebSocketClosed(f"websocket protocol error: {exc}"))
            return
        self._process_events()

    def _process_events(self) -> None:
        try:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    self.deliver(bytes(event.data))
                elif isinstance(event, TextMessage):
                    self.deliver(event.data.encode())
                elif isinstance(event, Ping):
                    self.inner.write(self._ws.send(event.response()))
                elif isinstance(event, Pong):
                    self._awaiting_pong = False
                elif isinstance(event, CloseConnection):
                    if self._ws.state.name == "REMOTE_CLOSING":
                        self.inner.write(self._ws.send(event.response()))
                    self.deliver_eof()
                    self.close()
                    return
        except (LocalProtocolError, RemoteProtocolError) as exc:
            self.fail(WebSocketClosed(f"websocket protocol error: {exc}"))

    def can_write_eof(self) -> bool:
        return False  # WebSocket has no half-close

    def close(self) -> None:
        if not self._closing and self._ws.state.name == "OPEN":
            try:
                self.inner.write(self._ws.send(CloseConnection(code=1000)))
            except LocalProtocolError:
                pass
        self._cancel_ping()
        super().close()

    def inner_lost(self, exc: Exception | None) -> None:
        self._cancel_ping()
        super().inner_lost(exc)

    def _cancel_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None


class ClientHandshake(asyncio.Protocol):
    """Sends the upgrade request on ``transport`` and resolves ``done`` when it is answered."""

    def __init__(self, transport: asyncio.Transport, host: str, path: str) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport = transport
        transport.set_protocol(self)
        transport.write(self.ws.send(Request(host=host, target=path)))

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    # Messages that followed the 101 answer stay queued in wsproto until
                    # WebSocketTransport.start() drains them.
                    self.done.set_result(None)
                    return
                if isinstance(event, (RejectConnection, RejectData)):
                    status = getattr(event, "status_code", 0)
                    self.done.set_exception(HandshakeError(f"websocket upgrade refused ({status})"))
                    return
        except RemoteProtocolError as exc:
            self.done.set_exception(HandshakeError(f"bad websocket upgrade answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(HandshakeError("connection closed during websocket upgrade"))


async def client_upgrade(
    transport: asyncio.Transport, host: str, path: str, keepalive: float, timeout: float
) -> WebSocketTransport:
    """Upgrade ``transport`` to a WebSocket; raises ``HandshakeError`` or ``TimeoutError``."""
    handshake = ClientHandshake(transport, host, path)
    try:
        await asyncio.wait_for(handshake.done, timeout)
    except BaseException:
        transport.abort()
        raise
    return WebSocketTransport(transport, handshake.ws, keepalive)


class ServerHandshake(asyncio.Protocol):
    """Answers the upgrade request of an accepted connection, then hands it to ``on_open``.

    ``on_open`` receives the ``WebSocketTransport`` and must set its protocol and call
    ``start()``. Requests for another path get 404; anything that is not an upgrade gets 400.
    """

    def __init__(
        self,
        path: str,
        keepalive: float,
        on_open: Callable[[WebSocketTransport], None],
        timeout: float,
    ) -> None:
        self._path = path
        self._keepalive = keepalive
        self._on_open = on_open
        self._timeout = timeout
        self._ws = WSConnection(ConnectionType.SERVER)
        self._transport: asyncio.Transport | None = None
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._seen += len(data)
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, Request):
                    self._answer(transport, event)
                    return
        except RemoteProtocolError as exc:
            self._refuse(transport, exc.event_hint, 400)
            return
        if self._seen > MAX_HANDSHAKE_BYTES:
            self._refuse(transport, None, 431)

    def _answer(self, transport: asyncio.Transport, request: Request) -> None:
        if request.target.split("?", 1)[0] != self._path:
            self._refuse(transport, None, 404)
            return
        if self._timer is not None:
            self._timer.cancel()
        transport.write(self._ws.send(AcceptConnection()))
        # RFC 6455 §4.1: clients send no frame before our 101, so nothing trails the request.
        ws_transport = WebSocketTransport(transport, self._ws, self._keepalive)
        self._on_open(ws_transport)

    def _refuse(self, transport: asyncio.Transport, hint: object, status: int) -> None:
        if isinstance(hint, RejectConnection):
            try:
                transport.write(self._ws.send(hint))
            except LocalProtocolError:
                pass
        else:
            reason = {400: b"Bad Request", 404: b"Not Found", 431: b"Too Large"}.get(status, b"")
            transport.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\n\r\n" % (status, reason))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
