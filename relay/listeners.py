"""Listening sockets per listener type, each handing connections to a protocol factory."""

from __future__ import annotations

import asyncio
import socket
import ssl
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from relay.config.model import ServiceConfig, TLSConfig
from relay.transports.base import LayeredTransport
from relay.transports.mux import MuxOptions, MuxSession, MuxStream
from relay.transports.proxied import ProxyHeaderReader
from relay.transports.quic import h3
from relay.transports.quic.options import QuicOptions, server_configuration
from relay.transports.quic.server import QuicListener, serve_quic
from relay.transports.tls import TUNNEL_ALPN, server_context
from relay.transports.tls_layer import TLSLayerTransport
from relay.transports.ws import ServerHandshake, WebSocketTransport

ProtocolFactory = Callable[[], asyncio.Protocol]

#: Accept queue; LLM traffic arrives in bursts of connections.
BACKLOG = 4096
#: A WebSocket upgrade must complete within this many seconds.
WS_HANDSHAKE_TIMEOUT = 10.0


class ListenerUnavailable(Exception):
    """The listener type exists in the schema but cannot serve this service (an ``http3``
    listener with a handler other than ``http``)."""


class Listening(Protocol):
    """What ``listen`` returns: an ``asyncio.Server``, a ``QuicListener`` for quic, a
    ``MuxListener`` for mtcp/mtls."""

    @property
    def sockets(self) -> Sequence[Any]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class SwappableContext:
    """A listener's TLS context that a reload can replace for new handshakes.

    ``asyncio`` fixes a server's ``SSLContext`` when it starts listening; the first context's
    SNI callback (called on every ClientHello, SNI or not) moves each new connection onto the
    current one. Connections already established keep the certificate they were served.
    """

    def __init__(self, first: ssl.SSLContext) -> None:
        self.first = first
        self.current = first
        first.sni_callback = self._pick

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: Any) -> None:
        current = self.current
        if current is not self.first:
            conn.context = current


#: Listening object -> prepares new certificates for it (see ``prepare_certificates``).
_REFRESHERS: weakref.WeakKeyDictionary[Any, Callable[[TLSConfig, str], Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def prepare_certificates(
    listening: Listening, tls: TLSConfig | None, base_dir: str
) -> Callable[[], None] | None:
    """For a TLS, WSS, QUIC or HTTP/3 listener kept across a reload: read its certificate and
    key (and client CA) from ``tls`` afresh and return a function that makes new handshakes
    use them (streams already open are untouched). None for listeners without TLS.

    Reading happens here, applying in the returned function, so a reload can read every
    listener's files before it changes anything. Raises ``OSError``/``ssl.SSLError``/
    ``ValueError`` for unreadable or mismatched files.
    """
    refresher = _REFRESHERS.get(listening)
    if refresher is None or tls is None:
        return None
    return refresher(tls, base_dir)


def _ws_factory(factory: ProtocolFactory, path: str, keepalive: float) -> ProtocolFactory:
    def on_open(ws: WebSocketTransport) -> None:
        protocol = factory()
        ws.set_protocol(protocol)
        protocol.connection_made(ws)
        ws.start()

    return lambda: ServerHandshake(path, keepalive, on_open, WS_HANDSHAKE_TIMEOUT)


class MuxListener:
    """An ``mtcp``/``mtls`` listening server and its sessions. Closing it also stops new
    streams on the sessions it accepted; each closes once its open streams are done."""

    def __init__(self, factory: ProtocolFactory, options: MuxOptions) -> None:
        self.server: asyncio.Server | None = None
        self.sessions: weakref.WeakSet[MuxSession] = weakref.WeakSet()
        self._factory = factory
        self._options = options

    @property
    def sockets(self) -> Sequence[Any]:
        return () if self.server is None else self.server.sockets

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.drain()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    def new_session(self) -> MuxSession:
        """Each connection is a session; each stream its client opens is a connection for a
        protocol from the service's factory."""
        session = MuxSession(self._options, is_client=False, on_stream=self._on_stream)
        self.sessions.add(session)
        return session

    def _on_stream(self, stream: MuxStream) -> None:
        protocol = self._factory()
        stream.set_protocol(protocol)
        protocol.connection_made(stream)


def _attach(transport: LayeredTransport, factory: ProtocolFactory) -> None:
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    transport.start()


def _proxy_factory(
    factory: ProtocolFactory, version: int, ssl_ctx: ssl.SSLContext | None
) -> ProtocolFactory:
    def on_ready(proxied: LayeredTransport) -> None:
        if ssl_ctx is None:
            _attach(proxied, factory)
            return
        tls = TLSLayerTransport(proxied, ssl_ctx, server_side=True)

        def handshake_done(done: asyncio.Future[None]) -> None:
            if done.exception() is None:
                _attach(tls, factory)

        tls.handshake.add_done_callback(handshake_done)
        proxied.start()  # feed what followed the PROXY header into the TLS layer

    return lambda: ProxyHeaderReader(version, on_ready)


def _keepalive(service: ServiceConfig) -> float:
    value = service.listener.metadata.get("keepalive", 15.0)
    return float(value) if isinstance(value, (int, float)) else 15.0


async def listen(
    service: ServiceConfig,
    default_tls: TLSConfig | None,
    base_dir: str,
    factory: ProtocolFactory,
    reuse_port: bool = False,
) -> Listening:
    """Start listening for ``service``; ``factory`` makes the handler protocol per connection.

    ``reuse_port`` (workers) lets several processes bind the same address; the kernel spreads
    connections across them. Raises ``OSError`` when the address cannot be bound.
    """
    kind = service.listener.type
    if kind in ("quic", "http3"):
        quic_tls = service.listener.tls or default_tls
        assert quic_tls is not None  # the loader refuses TLS listeners without certificates
        options = QuicOptions.from_metadata(service.listener.metadata)
        if kind == "quic":
            quic = await serve_quic(
                service.addr.host or None, service.addr.port, quic_tls, base_dir, factory,
                options, reuse_port,
            )  # fmt: skip
            _REFRESHERS[quic] = _quic_refresher(quic, options)
            return quic
        if service.handler.type != "http":
            raise ListenerUnavailable(
                f"service {service.name}: an http3 listener serves the http handler only"
            )
        # Each H3 request stream is presented to the http handler as an HTTP/1.1 connection.
        h3_listener = await serve_quic(
            service.addr.host or None, service.addr.port, quic_tls, base_dir, factory,
            options, reuse_port, alpn=h3.ALPN, listener_type=h3.H3Listener,
        )  # fmt: skip
        _REFRESHERS[h3_listener] = _quic_refresher(h3_listener, options, h3.ALPN)
        return h3_listener
    ssl_ctx = None
    swappable: SwappableContext | None = None
    alpn: tuple[str, ...] = ()
    if kind in ("tls", "wss", "mtls"):
        tls = service.listener.tls or default_tls
        assert tls is not None  # the loader refuses TLS listeners without certificates
        alpn = {"tls": (TUNNEL_ALPN, "http/1.1"), "mtls": (TUNNEL_ALPN,)}.get(kind, ("http/1.1",))
        ssl_ctx = server_context(tls, base_dir, alpn)
        swappable = SwappableContext(ssl_ctx)
    protocol_factory = factory
    mux: MuxListener | None = None
    if kind in ("ws", "wss"):
        protocol_factory = _ws_factory(factory, service.listener.path, _keepalive(service))
    elif kind in ("mtcp", "mtls"):
        mux = MuxListener(factory, MuxOptions.from_metadata(service.listener.metadata))
        protocol_factory = mux.new_session
    if service.listener.proxy_protocol:
        # The balancer's header comes in clear before any TLS: read it first, then run TLS
        # (if any) as a layer over the rest of the connection.
        protocol_factory = _proxy_factory(
            protocol_factory, service.listener.proxy_protocol, ssl_ctx
        )
        ssl_ctx = None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol_factory,
        host=service.addr.host or None,
        port=service.addr.port,
        ssl=ssl_ctx,
        backlog=BACKLOG,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
    for listening in server.sockets:
        # Accepted sockets inherit TCP_NODELAY from the listening socket on Linux: every SSE
        # event leaves at once instead of waiting behind Nagle's algorithm.
        if listening.family in (socket.AF_INET, socket.AF_INET6):
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    result: Listening = server
    if mux is not None:
        mux.server = server
        result = mux
    if swappable is not None:
        _REFRESHERS[result] = _tcp_refresher(swappable, alpn)
    return result


def _tcp_refresher(
    swappable: SwappableContext, alpn: tuple[str, ...]
) -> Callable[[TLSConfig, str], Callable[[], None]]:
    def prepare(tls: TLSConfig, base_dir: str) -> Callable[[], None]:
        fresh = server_context(tls, base_dir, alpn)

        def apply() -> None:
            swappable.current = fresh

        return apply

    return prepare


def _quic_refresher(
    listener: QuicListener, options: QuicOptions, alpn: str | None = None
) -> Callable[[TLSConfig, str], Callable[[], None]]:
    def prepare(tls: TLSConfig, base_dir: str) -> Callable[[], None]:
        fresh = (
            server_configuration(tls, base_dir, options)
            if alpn is None
            else server_configuration(tls, base_dir, options, alpn)
        )

        def apply() -> None:
            # aioquic builds each new connection from the server's configuration object: its
            # certificate fields are replaced in place (one loop turn, nothing half-set).
            current = listener.configuration
            if current is None:
                return
            current.certificate = fresh.certificate
            current.certificate_chain = fresh.certificate_chain
            current.private_key = fresh.private_key

        return apply

    return prepare
