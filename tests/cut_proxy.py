"""A TCP forwarder the test controls, put between an edge and a core: ``cut`` breaks every
connection it carries (both sockets closed with a reset), as a network blip would; ``block``
refuses new ones (the path is down) until ``unblock``."""

from __future__ import annotations

import asyncio
import socket
import struct

from relay.transports.base import set_nodelay


class _Pipe(asyncio.Protocol):
    def __init__(self, proxy: CutProxy, inbound: bool) -> None:
        self.proxy = proxy
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.buffer: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.pipes.add(self)
        set_nodelay(transport)  # a forwarder must not hold small writes back (Nagle)
        if self.inbound:
            asyncio.get_running_loop().create_task(self.proxy._connect(self))

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.buffer.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): what a middlebox dropping the flow looks like."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pipes: set[_Pipe] = set()
        self.blocked = False
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def _accept(self) -> _Pipe:
        self.accepted += 1
        return _Pipe(self, inbound=True)

    async def _connect(self, down: _Pipe) -> None:
        if self.blocked:
            down.reset()
            return
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(
                lambda: _Pipe(self, inbound=False), "127.0.0.1", self.target_port
            )
        except OSError:
            down.reset()
            return
        down.peer, up.peer = up, down
        for data in down.buffer:
            assert up.transport is not None
            up.transport.write(data)
        down.buffer.clear()

    def cut(self) -> int:
        """Break every connection now; returns how many were cut."""
        pipes = list(self.pipes)
        for pipe in pipes:
            pipe.reset()
        return len(pipes)

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


class _UdpUpstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpDropProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.proxy.dropping and self.proxy.transport is not None:
            self.proxy.transport.sendto(data, self.client)


class UdpDropProxy(asyncio.DatagramProtocol):
    """A UDP forwarder (one upstream socket per client address) whose ``dropping`` flag makes
    the path go silent both ways: no reset, no close, as when a network changes under a QUIC
    connection. Both ends then find out by their idle timeouts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropping = False
        self.transport: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple[str, int], _UdpUpstream] = {}

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.dropping:
            return
        upstream = self._upstreams.get(addr)
        if upstream is None:
            upstream = self._upstreams[addr] = _UdpUpstream(self, addr)
            asyncio.get_running_loop().create_task(self._open(upstream))
            return  # the first datagram is lost; QUIC retransmits it
        if upstream.transport is not None:
            upstream.transport.sendto(data)

    async def _open(self, upstream: _UdpUpstream) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: upstream, remote_addr=("127.0.0.1", self.target_port)
        )

    def close(self) -> None:
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        if self.transport is not None:
            self.transport.close()
