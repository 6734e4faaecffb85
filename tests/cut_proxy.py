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
