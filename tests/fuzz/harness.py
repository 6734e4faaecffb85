"""Relay nodes on a background event loop, for fuzz tests that talk to them with blocking
sockets (hypothesis drives plain functions; the relay runs as it does in production, on uvloop,
behind real loopback sockets).

Two paths, each an edge (``http`` handler) chained over TCP to a core (``relay`` handler):
``echo`` ends at the dev origin; ``script`` ends at an origin that answers whatever bytes the
test put in ``ScriptedOrigin.reply``, then closes. Errors the relay logs at ERROR or above
(``log.exception`` at a connection boundary means a bug) are collected in ``errors``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from relay.config import config_from_mapping
from relay.dev_origin import serve_origin
from relay.server import RelayNode
from tests.conftest import core_mapping, edge_mapping, hop_node

T = TypeVar("T")

#: Handler options of both edges: short timeouts so a stuck exchange ends within seconds.
EDGE_METADATA = {
    "ttfbTimeout": "2s",
    "idleTimeout": "1s",
    "totalTimeout": "10s",
    "headerTimeout": "2s",
    "maxHeaderSize": 8192,
    "maxBodySize": 65536,
}


class ScriptedOrigin:
    """Reads a request head, answers ``reply`` verbatim, then closes the connection."""

    def __init__(self) -> None:
        self.reply = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class Harness:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.script = ScriptedOrigin()
        self._log = _ErrorLog()
        logging.getLogger().addHandler(self._log)
        self._nodes: list[RelayNode] = []
        self._servers: list[asyncio.Server] = []
        self.ports: dict[str, int] = self.run(self._start())

    @property
    def errors(self) -> list[str]:
        return self._log.records

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> dict[str, int]:
        echo = await serve_origin("127.0.0.1", 0)
        script = await asyncio.start_server(self.script.handle, "127.0.0.1", 0)
        self._servers += [echo, script]
        ports: dict[str, int] = {}
        for name, server in (("echo", echo), ("script", script)):
            core = RelayNode(config_from_mapping(core_mapping("tcp", _port(server))))
            await core.start()
            edge = RelayNode(
                config_from_mapping(
                    edge_mapping(
                        [hop_node("core-1", "tcp", core.bound_port("core"))],
                        metadata=EDGE_METADATA,
                    )
                )
            )
            await edge.start()
            self._nodes += [core, edge]
            ports[name] = edge.bound_port("edge")
            ports[f"{name}-node"] = len(self._nodes) - 1
        return ports

    def edge(self, name: str) -> RelayNode:
        return self._nodes[self.ports[f"{name}-node"]]

    def close(self) -> None:
        logging.getLogger().removeHandler(self._log)

        async def stop() -> None:
            for node in self._nodes:
                await node.stop(0)
            for server in self._servers:
                server.close()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def exchange(port: int, data: bytes, deadline: float = 15.0, half_close: bool = True) -> bytes:
    """Send ``data`` to the relay, half-close, and read until the relay closes. Fails if the
    relay has not closed within ``deadline`` seconds (a hang)."""
    end = time.monotonic() + deadline
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the relay may refuse and close before it has read everything
        parts: list[bytes] = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"relay still open after {deadline}s: {b''.join(parts)[:200]!r}"
                )
            sock.settimeout(left)
            try:
                part = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"relay still open after {deadline}s: {b''.join(parts)[:200]!r}"
                ) from None
            except ConnectionResetError:
                break  # an abort: the client sees a broken connection, which is an answer
            if not part:
                break
            parts.append(part)
    return b"".join(parts)
