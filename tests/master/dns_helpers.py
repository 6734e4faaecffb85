"""Helpers of the DNS tests: queries built with dnslib (an independent encoder: the server's
replies are parsed by it too), a blocking UDP/TCP client, and the DNS server on a thread."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dnslib import EDNS0, DNSRecord, EDNSOption

from master_api.dns import DnsConfig, DnsServer, EdgeWatcher, Responder
from master_api.dns.wire import ClientSubnet
from master_api.repos import Repos


def make_query(
    name: str,
    qtype: str = "A",
    subnet: str | None = None,
    edns: bool = True,
    payload: int = 1232,
) -> DNSRecord:
    """A query for ``name``; ``subnet`` (``"203.80.96.0/24"``) adds an ECS option."""
    query = DNSRecord.question(name, qtype)
    if edns:
        options = []
        if subnet is not None:
            network = ipaddress.ip_network(subnet)
            ecs = ClientSubnet(network.network_address, network.prefixlen).reply(0)
            options.append(EDNSOption(8, ecs))
        query.add_ar(EDNS0(udp_len=payload, opts=options))
    return query


def ask(port: int, query: DNSRecord, tcp: bool = False, timeout: float = 3.0) -> DNSRecord:
    """Send ``query`` to 127.0.0.1:``port`` and parse the reply (which must carry its id).
    Over UDP it is sent up to 3 times, as resolvers do: the kernel drops datagrams when a
    loaded machine lets the server's receive buffer fill."""
    wire = query.pack()
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(_read(sock, 2), "big")
            data = _read(sock, size)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            for attempt in range(3):
                sock.sendto(wire, ("127.0.0.1", port))
                try:
                    data, _ = sock.recvfrom(65535)
                    break
                except TimeoutError:
                    if attempt == 2:
                        raise
    reply = DNSRecord.parse(data)
    assert reply.header.id == query.header.id and reply.header.qr == 1
    return reply


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def addresses(reply: DNSRecord) -> set[str]:
    """The A/AAAA addresses in the answer section."""
    return {str(rr.rdata) for rr in reply.rr if rr.rtype in (1, 28)}


def subnet_option(reply: DNSRecord) -> bytes | None:
    """The ECS option payload of the reply, if any."""
    for rr in reply.ar:
        if rr.rtype == 41:
            for option in rr.rdata:
                if option.code == 8:
                    return bytes(option.data)
    return None


@dataclass
class RunningDns:
    port: int
    watcher: EdgeWatcher
    responder: Responder


@contextmanager
def running_dns(repos: Repos, config: DnsConfig) -> Iterator[RunningDns]:
    """The real server (UDP + TCP on a loopback port) and its refresh thread, on a loop of
    its own thread, reading ``repos``."""
    watcher = EdgeWatcher(repos, config.refresh, config.max_silence)
    watcher.start()
    responder = Responder(config, lambda: watcher.view)
    server = DnsServer(responder, "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dns-test-loop", daemon=True)
    thread.start()
    try:
        sockets = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield RunningDns(sockets.port, watcher, responder)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        watcher.stop()
