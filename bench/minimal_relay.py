"""The issue's yardstick: a minimal L4 relay on asyncio Protocols (``python -m bench.minimal_relay
LISTEN_PORT UPSTREAM_PORT``).

No parsing, no policies, no metrics, no timeouts: accept, connect upstream, and write what one
side reads into the other, pausing a side whose peer's buffer is full. It shows what Python on
uvloop costs per byte moved on this machine, so the relay's figures can be read against the
floor of the language rather than against C proxies only. Not for anything but the bench.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _End(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side's protocol."""

    __slots__ = ("_early", "_eof", "peer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _End | None = None
        self._early: list[bytes] = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self._early.append(data)  # upstream not connected yet
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write_eof()
        else:
            self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def flush_early(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        for data in self._early:
            self.peer.transport.write(data)
        self._early.clear()
        if self._eof:
            self.peer.transport.write_eof()


async def _main(listen: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()

    async def connect(client: _End) -> None:
        try:
            _, up = await loop.create_connection(_End, "127.0.0.1", upstream)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        up.peer, client.peer = client, up
        client.flush_early()

    dialing: set[asyncio.Task[None]] = set()

    def accepted() -> _End:
        client = _End()
        task = loop.create_task(connect(client))
        dialing.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(dialing.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", listen, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1]), int(sys.argv[2])))
