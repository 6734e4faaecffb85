"""Client side: one shared QUIC connection per node, one stream per tunneled connection.

``QuicTunnelConnection`` is the tunnel to one node (address, TLS settings, options): it keeps
one ``QuicLink`` at a time, dials it on first use, and re-dials on the next ``open_stream`` once
it is lost, stale or closed. Concurrent callers share one dial. The session ticket of the last
connection resumes the next one (and with ``zeroRTT`` its first streams ride in 0-RTT).

``tunnel_pool()`` holds the tunnels of the running event loop, so every chain and every reload
of the config share one QUIC connection per node; a tunnel nobody uses stops its keepalive
PINGs and its connection ends by idle timeout.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from aioquic.tls import SessionTicket

from relay.config.model import Address, DialerConfig, TLSConfig
from relay.transports.base import LoopLocal, PendingProtocol, TransportError
from relay.transports.quic.engine import TunnelQuicConnection
from relay.transports.quic.link import QuicLink, now_
from relay.transports.quic.options import QuicOptions, client_configuration
from relay.transports.quic.stream import QuicStreamTransport


@dataclass(frozen=True, slots=True)
class TunnelKey:
    """What must be equal for two dials to share a connection."""

    host: str
    port: int
    tls: TLSConfig | None
    base_dir: str
    options: QuicOptions
    timeout: float


class QuicTunnelConnection:
    """The QUIC tunnel to one node, shared by all tunneled connections to it (see module)."""

    def __init__(self, key: TunnelKey) -> None:
        self.key = key
        self.link: QuicLink | None = None
        self._dialing: asyncio.Task[QuicLink] | None = None
        self._ticket: SessionTicket | None = None
        #: QUIC connections established so far (1 + re-dials).
        self.dials = 0

    async def open_stream(self) -> QuicStreamTransport:
        """A new stream on the current connection, dialing one first when there is none.

        Raises ``OSError``, ``TimeoutError`` or ``TransportError`` (``HandshakeError`` for a
        refused handshake, e.g. a certificate that does not verify) when the dial fails; the
        chain then tries its next node.
        """
        link = await self.connect()
        return link.open_stream()

    async def connect(self) -> QuicLink:
        """The current connection, dialed first when there is none (shared with concurrent
        callers). Raises as ``open_stream``. The re-probe of a benched node calls this: the
        connection it makes is the one the next stream uses, with no handshake to wait for.
        """
        link = self._usable_link()
        if link is None:
            if self._dialing is None:
                self._dialing = asyncio.get_running_loop().create_task(self._dial())
                self._dialing.add_done_callback(self._dial_done)
            # Shielded: one caller giving up must not cancel the dial the others wait for.
            link = await asyncio.shield(self._dialing)
        return link

    def close(self) -> None:
        """Close the current connection (its streams get ``connection_lost``)."""
        if self._dialing is not None:
            self._dialing.cancel()
        if self.link is not None:
            self.link.close(reason_phrase="tunnel closed")
            self.link = None

    def _usable_link(self) -> QuicLink | None:
        link = self.link
        if link is None:
            return None
        if link.error is None:
            # A link in use hears from the peer at least every keepalive interval (a third of
            # the idle timeout). Silence for half of it means an unused link about to time out
            # (a stream opened now could die with it) or a dead peer: dial a fresh one.
            if now_() - link.last_rx < link.quic.effective_idle_timeout() / 2:
                return link
            link.close(reason_phrase="idle")
        self.link = None
        return None

    def _dial_done(self, task: asyncio.Task[QuicLink]) -> None:
        self._dialing = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _dial(self) -> QuicLink:
        key = self.key
        loop = asyncio.get_running_loop()
        link: QuicLink | None = None
        try:
            async with asyncio.timeout(key.timeout):
                infos = await loop.getaddrinfo(key.host, key.port, type=socket.SOCK_DGRAM)
                family, _, _, _, sockaddr = infos[0]
                config = client_configuration(key.tls, key.host, key.base_dir, key.options)
                ticket = self._ticket
                if ticket is not None and ticket.is_valid:
                    config.session_ticket = ticket
                quic = TunnelQuicConnection(
                    configuration=config,
                    max_streams=key.options.max_streams,
                    session_ticket_handler=self._keep_ticket,
                )
                link = QuicLink(quic, key.options)
                new_link = link
                await loop.create_datagram_endpoint(
                    lambda: new_link,
                    remote_addr=(str(sockaddr[0]), int(sockaddr[1])),
                    family=family,
                )
                link.connect(link.peername)
                early = key.options.zero_rtt and config.session_ticket is not None
                if not early:
                    await asyncio.shield(link.handshake)
        except TimeoutError:
            if link is not None:
                link.close(reason_phrase="handshake timeout")
            raise TimeoutError(
                f"QUIC handshake with {key.host}:{key.port} timed out after {key.timeout:g}s"
            ) from None
        except BaseException:
            if link is not None:
                link.close(reason_phrase="dial abandoned")
            raise
        # With 0-RTT the handshake is still running: streams opened now send their first
        # bytes as early data, and a failed handshake ends them with HandshakeError.
        self.link = link
        self.dials += 1
        return link

    def _keep_ticket(self, ticket: SessionTicket) -> None:
        self._ticket = ticket


class QuicTunnelPool:
    """The tunnels of one event loop, by ``TunnelKey``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tunnels: dict[TunnelKey, QuicTunnelConnection] = {}

    def tunnel(self, key: TunnelKey) -> QuicTunnelConnection:
        tunnel = self.tunnels.get(key)
        if tunnel is None:
            tunnel = self.tunnels[key] = QuicTunnelConnection(key)
        return tunnel

    def close(self) -> None:
        """Close every tunnel's connection (shutdown, tests)."""
        for tunnel in self.tunnels.values():
            tunnel.close()
        self.tunnels.clear()


_POOLS = LoopLocal(QuicTunnelPool)


def tunnel_pool() -> QuicTunnelPool:
    """The pool of the running event loop."""
    return _POOLS.get()


def tunnel_key(addr: Address, dialer: DialerConfig, base_dir: str) -> TunnelKey:
    """The pool key of a ``quic`` dialer; raises ``TransportError`` for bad metadata."""
    try:
        options = QuicOptions.from_metadata(dialer.metadata, keepalive=dialer.keepalive)
    except ValueError as exc:
        raise TransportError(f"quic dialer: {exc}") from None
    return TunnelKey(
        addr.host or "127.0.0.1", addr.port, dialer.tls, base_dir, options, dialer.timeout
    )


async def probe_quic(addr: Address, dialer: DialerConfig, base_dir: str) -> None:
    """Make sure the pooled tunnel to ``addr`` has a connection (dialing one if needed), as
    new streams would. Raises as ``open_quic_stream`` when the node does not answer."""
    await tunnel_pool().tunnel(tunnel_key(addr, dialer, base_dir)).connect()


async def open_quic_stream(
    addr: Address, dialer: DialerConfig, base_dir: str
) -> QuicStreamTransport:
    """A stream to ``addr`` on the shared connection, its events buffered by a
    ``PendingProtocol`` (as every transport ``open_connection`` returns)."""
    stream = await tunnel_pool().tunnel(tunnel_key(addr, dialer, base_dir)).open_stream()
    pending = PendingProtocol()
    stream.set_protocol(pending)
    pending.connection_made(stream)
    return stream
