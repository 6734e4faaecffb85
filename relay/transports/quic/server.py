"""Server side: aioquic's ``QuicServer`` on a UDP socket; every stream a client opens is a
``QuicStreamTransport`` handed to a new protocol from the listener's factory."""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from relay.config.model import TLSConfig
from relay.transports.quic.engine import TunnelQuicConnection
from relay.transports.quic.link import QuicLink
from relay.transports.quic.options import QuicOptions, server_configuration
from relay.transports.quic.stream import QuicStreamTransport
from relay.transports.tls import TUNNEL_ALPN

ProtocolFactory = Callable[[], asyncio.Protocol]

#: Session tickets kept for resumption (oldest dropped first).
TICKETS = 10_000
#: Socket buffers asked for: bursts of datagrams must not overflow the kernel's default.
SOCKET_BUFFER = 4 << 20


class TicketStore:
    """Single-use session tickets: a ticket resumes one connection only, so 0-RTT data replayed
    by an on-path attacker finds its ticket gone (RFC 8446 §8.1). Per process: a worker that
    did not issue a ticket makes the client do a full handshake."""

    def __init__(self, capacity: int = TICKETS) -> None:
        self._capacity = capacity
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()

    def add(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        if len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)


class QuicListener:
    """A listening QUIC service, shaped like the ``asyncio.Server`` other listeners return."""

    def __init__(self, options: QuicOptions, factory: ProtocolFactory) -> None:
        self.options = options
        self._factory = factory
        self._transport: asyncio.DatagramTransport | None = None
        self._server: QuicServer | None = None
        #: Live connections; counters since start.
        self.links: set[QuicLink] = set()
        self.connections_total = 0
        self._streams_of_closed = 0
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def configuration(self) -> QuicConfiguration | None:
        """The configuration new connections are built from (None before listening)."""
        # aioquic's QuicServer keeps it as ``_configuration`` and reads it per new connection.
        return None if self._server is None else self._server._configuration

    @property
    def sockets(self) -> tuple[Any, ...]:
        if self._transport is None:
            return ()
        return (self._transport.get_extra_info("socket"),)

    @property
    def streams_total(self) -> int:
        return sum(link.streams_total for link in self.links) + self._streams_of_closed

    def is_serving(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE to each client) and the socket."""
        if self._server is not None and self.is_serving():
            self._server.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await self._closed

    # --- for aioquic's QuicServer -----------------------------------------------------------

    def create_protocol(self, connection: QuicConnection, **_: object) -> QuicLink:
        quic = TunnelQuicConnection.adopt(connection, self.options.max_streams)
        link = self.new_link(quic)
        self.links.add(link)
        self.connections_total += 1
        link.closed.add_done_callback(lambda _: self._forget(link))
        return link

    def new_link(self, quic: TunnelQuicConnection) -> QuicLink:
        """The link driving a new connection; subclasses decide what its streams carry (here:
        each stream is a connection for a protocol from the factory)."""
        return QuicLink(quic, self.options, on_stream=self._on_stream)

    def _forget(self, link: QuicLink) -> None:
        self.links.discard(link)
        self._streams_of_closed += link.streams_total

    def _on_stream(self, stream: QuicStreamTransport) -> None:
        protocol = self._factory()
        stream.set_protocol(protocol)
        protocol.connection_made(stream)


async def _udp_socket(host: str | None, port: int, reuse_port: bool) -> socket.socket:
    loop = asyncio.get_running_loop()
    if host:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    else:
        # All interfaces, IPv4 and IPv6 on one socket where the host has IPv6.
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr = ("::", port, 0, 0)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            addr = ("0.0.0.0", port)
    try:
        if reuse_port:
            # Workers share the port; the kernel hashes each client's 4-tuple to one of them,
            # so a connection's datagrams keep reaching the process that holds its state.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:  # capped by the kernel's maximum; best effort
                pass
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_quic(
    host: str | None,
    port: int,
    tls: TLSConfig,
    base_dir: str,
    factory: ProtocolFactory,
    options: QuicOptions | None = None,
    reuse_port: bool = False,
    alpn: str = TUNNEL_ALPN,
    listener_type: type[QuicListener] = QuicListener,
) -> QuicListener:
    """Listen for QUIC tunnel connections on ``host:port`` (all interfaces when empty).

    Each bidirectional stream a client opens gets a protocol from ``factory`` (``connection_made``
    with the stream transport, then its bytes), unless ``listener_type`` (a ``QuicListener``
    subclass, e.g. HTTP/3's) makes its links otherwise; ``alpn`` is the one protocol offered.
    Raises ``OSError`` when the port cannot be bound and ``ValueError``/``OSError`` for
    unusable certificates.
    """
    options = options or QuicOptions(keepalive=0.0)
    configuration = server_configuration(tls, base_dir, options, alpn)
    listener = listener_type(options, factory)
    tickets = TicketStore()
    sock = await _udp_socket(host, port, reuse_port)
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(
            configuration=configuration,
            create_protocol=listener.create_protocol,
            session_ticket_fetcher=tickets.pop,
            session_ticket_handler=tickets.add,
        ),
        sock=sock,
    )
    listener._transport = transport
    listener._server = server
    return listener
