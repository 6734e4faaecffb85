"""QUIC tunnel transport (aioquic): one connection per edge→core node pair, one bidirectional
stream per tunneled connection, keepalive PINGs, bounded send and receive buffers.

* ``engine`` — aioquic's connection with receive credit that follows consumption.
* ``link`` — drives one connection over the loop's UDP transport.
* ``budget`` — send-side accounting: writers pause before aioquic's buffers grow unbounded.
* ``stream`` — ``QuicStreamTransport``, a stream as an asyncio transport.
* ``client`` — ``QuicTunnelConnection`` per node and the per-loop pool (``open_quic_stream``).
* ``server`` — ``serve_quic`` and ``QuicListener``.
"""

from __future__ import annotations

from relay.transports.quic.client import (
    QuicTunnelConnection,
    QuicTunnelPool,
    open_quic_stream,
    tunnel_pool,
)
from relay.transports.quic.link import QuicConnectionLost, QuicLink
from relay.transports.quic.options import QuicOptions
from relay.transports.quic.server import QuicListener, serve_quic
from relay.transports.quic.stream import QuicStreamTransport

__all__ = [
    "QuicConnectionLost",
    "QuicLink",
    "QuicListener",
    "QuicOptions",
    "QuicStreamTransport",
    "QuicTunnelConnection",
    "QuicTunnelPool",
    "open_quic_stream",
    "serve_quic",
    "tunnel_pool",
]
