"""Bidirectional forwarding between two transports, with bounded buffers.

Each end's protocol writes what it reads straight into the other transport. When a transport's
write buffer passes its high-water mark (``buffer_size``), asyncio calls ``pause_writing`` on
its protocol and we stop reading the *other* side; ``resume_writing`` at the low-water mark
resumes it. So a slow reader pauses its sender and memory per connection stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.metrics import ServiceStats
from relay.transports.base import PendingProtocol


class SpliceEnd(asyncio.Protocol):
    # Slots, and no closure for "both ends closed" (~200 bytes per tunnel): each end knows
    # whether it is gone, and the one that goes last runs ``on_close``.
    __slots__ = ("_on_close", "_stats", "eof", "from_client", "gone", "peer", "prefix", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        stats: ServiceStats,
        from_client: bool,
        on_close: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.peer: SpliceEnd
        self.from_client = from_client
        self.eof = False
        self.gone = False
        self._stats = stats
        self._on_close = on_close
        #: Bytes owed to the peer in front of the first ones read here (see ``splice``).
        self.prefix = b""

    def data_received(self, data: bytes) -> None:
        # DANGER ZONE: runs for every chunk of every tunneled connection.
        if self.prefix:
            self.peer.transport.write(self.prefix + data)
            self.prefix = b""
        else:
            self.peer.transport.write(data)
        if self.from_client:
            self._stats.bytes_in += len(data)
        else:
            self._stats.bytes_out += len(data)

    def flush_prefix(self) -> None:
        prefix, self.prefix = self.prefix, b""
        if prefix and not self.peer.transport.is_closing():
            self.peer.transport.write(prefix)

    def eof_received(self) -> bool:
        self.flush_prefix()
        self.eof = True
        peer = self.peer.transport
        if self.peer.eof or not peer.can_write_eof():
            peer.close()
            return False
        peer.write_eof()  # half-close: the other side may still answer
        # Keep our side open for the answer, where the transport can (TLS cannot half-close).
        return self.transport.can_write_eof()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gone:
            return
        if exc is None:
            self.flush_prefix()  # (a reset is no answer: the client sees the tunnel fail)
        # close() lets the peer flush what it still holds; then both ends are gone.
        self.peer.transport.close()
        self.gone = True
        if self.peer.gone:
            self._on_close()


def splice(
    client: asyncio.Transport,
    upstream: asyncio.Transport,
    upstream_pending: PendingProtocol,
    stats: ServiceStats,
    buffer_size: int,
    on_close: Callable[[], None],
    answer: bytes = b"",
) -> None:
    """Forward bytes both ways until both ends are closed; ``on_close`` runs once at the end.

    ``answer`` is written to the client in front of the first bytes from upstream (or when
    upstream ends without a byte): the relay server's OK, coalesced with the target's answer.
    """
    down = SpliceEnd(client, stats, True, on_close)
    up = SpliceEnd(upstream, stats, False, on_close)
    down.peer, up.peer = up, down
    up.prefix = answer
    client.set_write_buffer_limits(high=buffer_size)
    upstream.set_write_buffer_limits(high=buffer_size)
    client.set_protocol(down)
    upstream_pending.hand_over(up)
    if client.is_closing():
        down.connection_lost(None)
