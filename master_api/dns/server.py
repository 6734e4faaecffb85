"""The DNS server's sockets: UDP datagrams and TCP (RFC 7766: two-byte length prefix) on
``dns_addr``, both answered by one :class:`Responder` on one event loop.

UDP is the path that matters: one datagram in, at most one out, nothing kept. TCP serves the
clients a truncated reply sends there; connections are capped (:data:`MAX_TCP_CONNECTIONS`),
idle ones closed after :data:`TCP_IDLE_TIMEOUT`, and every write waits for ``drain()``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import cast

from master_api.dns.geo import IPAddress
from master_api.dns.responder import Responder

__all__ = ["MAX_TCP_CONNECTIONS", "TCP_IDLE_TIMEOUT", "DnsServer", "DnsSockets"]

log = logging.getLogger(__name__)

MAX_TCP_CONNECTIONS = 1000
TCP_IDLE_TIMEOUT = 10.0
_UNKNOWN_PEER = ipaddress.IPv4Address("0.0.0.0")


@dataclass(frozen=True, slots=True)
class DnsSockets:
    """Where the server listens (the port is the real one when 0 was asked)."""

    host: str
    port: int


def _peer(address: object) -> IPAddress:
    """The IP of a socket address tuple; 0.0.0.0 when it is not one (it always is for INET)."""
    try:
        host = address[0] if isinstance(address, tuple) else ""
        return ipaddress.ip_address(str(host).partition("%")[0])
    except ValueError:
        return _UNKNOWN_PEER


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector UDP transport is not a DatagramTransport subclass: cast, no check.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        # DANGER ZONE: per datagram. The responder never raises; sendto never blocks (the
        # kernel drops what does not fit, as it would any UDP datagram).
        reply = self._responder.respond(data, _peer(addr))
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do for a stateless
        # server, and not worth more than a debug line.
        log.debug("UDP error: %s", exc)


class DnsServer:
    """UDP and TCP listeners answering with ``responder``. :meth:`start` / :meth:`close`.

    The shutdown trigger belongs to the caller (STYLE A4): the CLI wires SIGTERM to
    :meth:`close`; tests call it.
    """

    def __init__(self, responder: Responder, host: str, port: int) -> None:
        self._responder = responder
        self._host = host or "0.0.0.0"
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> DnsSockets:
        """Bind UDP, then TCP on the same port. Raises ``OSError`` when the address is taken
        or not ours. Port 0: a free UDP port whose TCP twin is free too (the kernel picks
        them separately, so a few picks may be needed)."""
        attempts = 20 if self._port == 0 else 1
        for attempt in range(attempts):
            try:
                return await self._bind()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _bind(self) -> DnsSockets:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._responder), local_addr=(self._host, self._port), family=family
        )
        port = int(transport.get_extra_info("sockname")[1])
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, self._host, port, family=family, reuse_address=True
            )
        except OSError:
            transport.close()
            raise
        self._udp = transport
        return DnsSockets(self._host, port)

    async def close(self) -> None:
        """Stop listening, close the TCP connections, wait for their handlers."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        peer = _peer(writer.get_extra_info("peername"))
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                size = int.from_bytes(prefix, "big")
                message = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT)
                reply = self._responder.respond(message, peer, tcp=True)
                if reply is None:
                    break  # garbage on a stream: the framing can no longer be trusted
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, closed by the client mid-message, or reset: all ordinary ends
        finally:
            writer.close()
