"""Client side: one shared session per node, one stream per tunneled connection.

``MuxTunnel`` is the tunnel to one node (address, TLS settings, options): it keeps one
``MuxSession`` at a time, dials it on first use and again on the next ``open_stream`` once it is
lost or out of stream ids. Concurrent callers share one dial.

``tunnel_pool()`` holds the tunnels of the running event loop, so every chain and every reload
of the config share one session per node and process.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from relay.config.model import Address, DialerConfig, TLSConfig
from relay.transports.base import LoopLocal, PendingProtocol, TransportError
from relay.transports.mux.options import MuxOptions
from relay.transports.mux.session import MuxSession
from relay.transports.mux.stream import MuxStream
from relay.transports.tls import TUNNEL_ALPN, client_context


@dataclass(frozen=True, slots=True)
class TunnelKey:
    """What must be equal for two dials to share a session."""

    host: str
    port: int
    #: The TLS settings for ``mtls``; None for ``mtcp``.
    tls: TLSConfig | None
    secure: bool
    base_dir: str
    options: MuxOptions
    timeout: float


class MuxTunnel:
    """The multiplexed tunnel to one node, shared by all tunneled connections to it."""

    def __init__(self, key: TunnelKey) -> None:
        self.key = key
        self.session: MuxSession | None = None
        self._dialing: asyncio.Task[MuxSession] | None = None
        #: Sessions established so far (1 + re-dials).
        self.dials = 0

    async def open_stream(self) -> MuxStream:
        """A new stream on the current session, dialing one first when there is none.

        Raises ``OSError``, ``TimeoutError`` or ``ssl.SSLError`` when the dial fails; the chain
        then tries its next node.
        """
        session = self.session
        if session is None or not session.can_open:
            session = await self._connect()
        return session.open_stream()

    def close(self) -> None:
        if self._dialing is not None:
            self._dialing.cancel()
        if self.session is not None:
            self.session.close()
            self.session = None

    async def _connect(self) -> MuxSession:
        if self._dialing is None:
            self._dialing = asyncio.get_running_loop().create_task(self._dial())
            self._dialing.add_done_callback(self._dial_done)
        # Shielded: one caller giving up must not cancel the dial the others wait for.
        return await asyncio.shield(self._dialing)

    def _dial_done(self, task: asyncio.Task[MuxSession]) -> None:
        self._dialing = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _dial(self) -> MuxSession:
        key = self.key
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        server_name: str | None = None
        if key.secure:
            ctx = client_context(key.tls, key.base_dir, alpn=(TUNNEL_ALPN,))
            server_name = (key.tls.server_name if key.tls else None) or key.host
        try:
            async with asyncio.timeout(key.timeout):
                # TCP_NODELAY: uvloop (and asyncio) set it on every TCP transport they create.
                _, session = await loop.create_connection(
                    lambda: MuxSession(key.options, is_client=True),
                    key.host,
                    key.port,
                    ssl=ctx,
                    server_hostname=server_name,
                )
        except TimeoutError:
            raise TimeoutError(
                f"connect to {key.host}:{key.port} timed out after {key.timeout:g}s"
            ) from None
        self.session = session
        self.dials += 1
        return session


class MuxTunnelPool:
    """The tunnels of one event loop, by ``TunnelKey``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tunnels: dict[TunnelKey, MuxTunnel] = {}

    def tunnel(self, key: TunnelKey) -> MuxTunnel:
        tunnel = self.tunnels.get(key)
        if tunnel is None:
            tunnel = self.tunnels[key] = MuxTunnel(key)
        return tunnel

    def close(self) -> None:
        """Close every tunnel's session (shutdown, tests)."""
        for tunnel in self.tunnels.values():
            tunnel.close()
        self.tunnels.clear()


_POOLS = LoopLocal(MuxTunnelPool)


def tunnel_pool() -> MuxTunnelPool:
    """The pool of the running event loop."""
    return _POOLS.get()


#: Pool keys by dialer (checked by identity): worked out once, not per stream.
_KEYS: dict[tuple[int, Address, str], tuple[DialerConfig, TunnelKey]] = {}


def tunnel_key(addr: Address, dialer: DialerConfig, base_dir: str) -> TunnelKey:
    """The pool key of an ``mtcp``/``mtls`` dialer; raises ``TransportError`` for bad metadata."""
    cached = _KEYS.get((id(dialer), addr, base_dir))
    if cached is not None and cached[0] is dialer:
        return cached[1]
    key = _tunnel_key(addr, dialer, base_dir)
    if len(_KEYS) >= 1024:  # configs of many reloads ago
        _KEYS.clear()
    _KEYS[(id(dialer), addr, base_dir)] = (dialer, key)
    return key


def _tunnel_key(addr: Address, dialer: DialerConfig, base_dir: str) -> TunnelKey:
    try:
        options = MuxOptions.from_metadata(dialer.metadata)
    except ValueError as exc:
        raise TransportError(f"{dialer.type} dialer: {exc}") from None
    return TunnelKey(
        addr.host or "127.0.0.1",
        addr.port,
        dialer.tls,
        dialer.type == "mtls",
        base_dir,
        options,
        dialer.timeout,
    )


async def open_mux_stream(addr: Address, dialer: DialerConfig, base_dir: str) -> MuxStream:
    """A stream to ``addr`` on the shared session, its events buffered by a ``PendingProtocol``
    (as every transport ``open_connection`` returns)."""
    stream = await tunnel_pool().tunnel(tunnel_key(addr, dialer, base_dir)).open_stream()
    pending = PendingProtocol()
    stream.set_protocol(pending)
    pending.connection_made(stream)
    return stream
