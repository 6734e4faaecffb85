"""Multiplexed tunnels (gost's ``mtcp``/``mtls``): many streams over one TCP or TLS connection
per edge→core node pair, framed as smux version 2.

* ``frames`` — the wire format.
* ``options`` — ``MuxOptions`` from dialer/listener metadata.
* ``stream`` — ``MuxStream``, a stream as an asyncio transport.
* ``session`` — ``MuxSession``, the connection's protocol: framing, batching, keepalive.
* ``client`` — ``MuxTunnel`` per node and the per-loop pool (``open_mux_stream``).
"""

from __future__ import annotations

from relay.transports.mux.client import MuxTunnel, MuxTunnelPool, open_mux_stream, tunnel_pool
from relay.transports.mux.frames import MuxProtocolError, MuxSessionLost
from relay.transports.mux.options import MuxOptions
from relay.transports.mux.session import MuxSession
from relay.transports.mux.stream import MuxStream

__all__ = [
    "MuxOptions",
    "MuxProtocolError",
    "MuxSession",
    "MuxSessionLost",
    "MuxStream",
    "MuxTunnel",
    "MuxTunnelPool",
    "open_mux_stream",
    "tunnel_pool",
]
