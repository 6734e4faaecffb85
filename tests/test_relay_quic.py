"""The QUIC tunnel transport: edge → core over real QUIC on loopback (aioquic)."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.chain import open_connection
from relay.config import ConfigError
from relay.config.model import Address, DialerConfig, TLSConfig
from relay.dev_origin import BYTES_ALPHABET
from relay.protocols import relay_v1
from relay.transports.base import TransportError
from relay.transports.quic import (
    QuicListener,
    QuicOptions,
    QuicStreamTransport,
    QuicTunnelConnection,
    serve_quic,
    tunnel_pool,
)
from relay.transports.quic.client import TunnelKey
from relay.transports.quic.options import STREAM_WINDOW
from tests.certs import CA, CertPair, make_ca
from tests.conftest import AUTH, StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.helpers import chat, read_head, request, request_bytes
from tests.processes import RelayProcess, free_port, slow_read_memory


@pytest.fixture(autouse=True)
async def _close_tunnels() -> AsyncIterator[None]:
    """Tunnels are pooled per event loop: close this test's before its loop goes away."""
    yield
    tunnel_pool().close()


def quic_core(origin: int, cert: CertPair, port: int = 0) -> dict[str, Any]:
    mapping = core_mapping("quic", origin)
    service = mapping["services"][0]
    service["addr"] = f"127.0.0.1:{port}"
    service["listener"]["tls"] = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    return mapping


def quic_hop(port: int, ca: CA, **tls: Any) -> dict[str, Any]:
    node = hop_node("core-1", "quic", port)
    node["dialer"]["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost", **tls}
    return node


def the_tunnel() -> QuicTunnelConnection:
    tunnels = list(tunnel_pool().tunnels.values())
    assert len(tunnels) == 1, tunnels
    return tunnels[0]


def quic_listener(node: Any) -> QuicListener:
    listener = node.listener("core")
    assert isinstance(listener, QuicListener)
    return listener


async def edge_to_core(
    start_node: StartNode, origin: int, ca: CA, cert: CertPair, **edge: Any
) -> tuple[int, Any]:
    core = await start_node(quic_core(origin, cert))
    node = await start_node(edge_mapping([quic_hop(core.bound_port("core"), ca)], **edge))
    return node.bound_port("edge"), core


# --- through the relay ----------------------------------------------------------------------


async def test_sse_tokens_arrive_one_by_one(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    port, core = await edge_to_core(start_node, origin, ca, server_cert)

    response = await request(port, "POST", "/v1/chat/completions", chat(100, interval_ms=20))

    assert response.status == 200
    assert response.complete
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.events[-1][1] == "[DONE]"
    tokens = [(at, e) for at, e in response.events if isinstance(e, dict) and "sent_at" in e]
    assert [e["seq"] for _, e in tokens][:100] == list(range(100))
    delays = [at - e["sent_at"] for at, e in tokens]
    assert statistics.median(delays) < 0.010, delays
    assert max(delays) < 0.100, delays
    sent_span = tokens[-1][1]["sent_at"] - tokens[0][1]["sent_at"]
    arrival_span = tokens[-1][0] - tokens[0][0]
    assert sent_span > 1.5
    assert arrival_span > 0.9 * sent_span
    assert quic_listener(core).connections_total == 1


async def test_concurrent_streams_share_one_quic_connection(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    port, core = await edge_to_core(start_node, origin, ca, server_cert)
    listener = quic_listener(core)
    count = 500
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sum(len(link.streams) for link in listener.links))
            await asyncio.sleep(0.01)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        responses = await asyncio.gather(
            *(
                request(port, "POST", "/v1/chat/completions", chat(6, interval_ms=800))
                for _ in range(count)
            )
        )
    finally:
        sampler.cancel()

    assert all(r.status == 200 and r.complete for r in responses)
    assert all(r.events[-1][1] == "[DONE]" for r in responses)
    # One QUIC connection carried every tunneled connection, most of them at the same time.
    assert listener.connections_total == 1
    assert listener.streams_total == count
    assert core.runtime("core").stats.connections_total == count
    assert peak > count // 2, peak
    assert the_tunnel().dials == 1


async def test_slow_client_keeps_buffers_bounded(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """A client that stops reading pauses the edge's stream, whose withheld credit pauses the
    core's writer, which stops reading the origin: nothing in between grows."""
    buffer_size = 64 * 1024
    core = await start_node(quic_core(origin, server_cert))
    mapping = edge_mapping([quic_hop(core.bound_port("core"), ca)])
    mapping["services"][0]["metadata"] = {"bufferSize": buffer_size}
    port = (await start_node(mapping)).bound_port("edge")
    total = 16 << 20
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(request_bytes("GET", f"/bytes?n={total}"))
    status, _ = await read_head(reader)
    assert status == 200

    # The client reads nothing. Kernel socket buffers towards it fill (and grow by autotuning)
    # for a while; then every buffer in the path is full and the origin is paused.
    core_stats = core.runtime("core").stats
    taken_from_origin = -1
    for _ in range(50):
        if core_stats.bytes_out == taken_from_origin:
            break
        taken_from_origin = core_stats.bytes_out
        await asyncio.sleep(0.3)
    link = the_tunnel().link
    assert link is not None
    (stream,) = link.streams.values()
    held = link.quic.rx_held
    (core_link,) = quic_listener(core).links
    (core_stream,) = core_link.streams.values()
    core_unacked = core_stream.get_write_buffer_size()
    await asyncio.sleep(0.5)

    # The core stopped reading the origin: a bounded amount left it, and no more since.
    assert taken_from_origin < total // 2, taken_from_origin
    assert core_stats.bytes_out - taken_from_origin < buffer_size
    # What the paused edge stream holds is within one stream window; the core's un-acked
    # bytes (waiting for credit) within its write buffer limit.
    assert held <= STREAM_WINDOW
    assert not stream.is_reading()
    assert core_unacked <= 2 * (256 << 10)

    # Reading again drains everything, in order.
    received = 0
    while received < total:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk, received
        offset = received % len(BYTES_ALPHABET)
        expected = (BYTES_ALPHABET * (len(chunk) // len(BYTES_ALPHABET) + 2))[
            offset : offset + len(chunk)
        ]
        assert chunk == expected
        received += len(chunk)
    writer.close()
    assert received == total
    assert link.quic.rx_held == 0


@pytest.mark.slow
async def test_slow_reader_does_not_grow_relay_memory(
    tmp_path: Path, origin_process: int, ca: CA, server_cert: CertPair
) -> None:
    """As the TCP test in test_relay_process.py, with the edge → core hop over QUIC."""
    core_port, edge_port = free_port(), free_port()
    config = quic_core(origin_process, server_cert, core_port)
    edge = edge_mapping([quic_hop(core_port, ca)])
    edge["services"][0]["addr"] = f"127.0.0.1:{edge_port}"
    edge["services"][0]["metadata"] = {"bufferSize": 65536}
    config["services"].insert(0, edge["services"][0])
    config["chains"] = edge["chains"]
    relay = RelayProcess(config, tmp_path)
    try:
        status, baseline, peak, received = await slow_read_memory(relay, edge_port)
        assert status == 200
        assert peak - baseline < 16 * 1024, (baseline, peak)
        assert received > 0
    finally:
        relay.stop()


@pytest.mark.parametrize("wrong", ["ca", "name"])
async def test_certificate_verification_failure_is_a_502(
    wrong: str, tmp_path: Path, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    core = await start_node(quic_core(origin, server_cert))
    if wrong == "ca":
        hop = quic_hop(core.bound_port("core"), make_ca(tmp_path, "another CA"))
    else:
        hop = quic_hop(core.bound_port("core"), ca, serverName="core.example")
    edge = await start_node(edge_mapping([hop]))

    response = await request(edge.bound_port("edge"), "GET", "/healthz")

    assert response.status == 502
    assert core.runtime("core").stats.connections_total == 0
    assert the_tunnel().link is None


async def test_listener_refuses_to_require_client_certificates(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """aioquic's server never requests a client certificate: a caFile (which on a TLS listener
    requires one) must not silently let every client in."""
    mapping = quic_core(origin, server_cert)
    mapping["services"][0]["listener"]["tls"]["caFile"] = str(ca.cert_file)

    with pytest.raises(ConfigError, match="client certificates"):  # refused by the checker
        await start_node(mapping)


async def test_core_restart_is_redialed(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    core = await start_node(quic_core(origin, server_cert))
    core_port = core.bound_port("core")
    edge = await start_node(edge_mapping([quic_hop(core_port, ca)]))
    port = edge.bound_port("edge")
    assert (await request(port, "GET", "/healthz")).status == 200

    await core.stop(0)  # graceful: clients get CONNECTION_CLOSE
    old = the_tunnel().link
    assert old is not None
    await wait_for(lambda: old.error is not None)
    assert (await request(port, "GET", "/healthz")).status == 502
    await start_node(quic_core(origin, server_cert, core_port))

    response = await request(port, "POST", "/v1/chat/completions", chat(5, interval_ms=5))
    assert response.status == 200 and response.complete
    assert the_tunnel().dials == 2


async def test_crashed_core_is_detected_and_redialed(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """A core that vanishes without CONNECTION_CLOSE: probes go unanswered, the edge gives the
    connection up within about a second and dials the core that came back on the port."""
    core = await start_node(quic_core(origin, server_cert))
    core_port = core.bound_port("core")
    edge = await start_node(edge_mapping([quic_hop(core_port, ca)]))
    port = edge.bound_port("edge")
    assert (await request(port, "GET", "/healthz")).status == 200
    old = the_tunnel().link
    assert old is not None

    quic_listener(core)._transport.abort()  # type: ignore[union-attr]  # the process "dies"
    await asyncio.sleep(0.05)  # the socket closes on the next loop iteration
    await start_node(quic_core(origin, server_cert, core_port))
    started = time.monotonic()
    statuses = []
    while time.monotonic() - started < 10:
        statuses.append((await request(port, "GET", "/healthz", timeout=10)).status)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.05)

    assert statuses[-1] == 200, statuses
    assert time.monotonic() - started < 5
    assert old.error is not None and "stopped answering" in str(old.error)
    assert the_tunnel().dials == 2


@pytest.mark.parametrize("zero_rtt", [False, True])
async def test_redial_resumes_the_session(
    zero_rtt: bool, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    core = await start_node(quic_core(origin, server_cert))
    hop = quic_hop(core.bound_port("core"), ca)
    hop["dialer"]["metadata"] = {"zeroRTT": zero_rtt}
    edge = await start_node(edge_mapping([hop]))
    assert (await request(edge.bound_port("edge"), "GET", "/healthz")).status == 200
    tunnel = the_tunnel()
    first = tunnel.link
    assert first is not None and not first.session_resumed

    tunnel.close()  # the session ticket stays with the tunnel
    # Dialed inline (open_stream shares the dial through a task, and on loopback the handshake
    # completes before the caller resumes): with 0-RTT the link is usable at once, the stream's
    # first bytes (relay header and request) travel as early data.
    second = await tunnel._dial()
    stream = second.open_stream()
    assert second is not first
    assert second.handshake.done() is not zero_rtt
    reply = Writer()
    stream.set_protocol(reply)
    header = relay_v1.encode_request(
        relay_v1.Request(username=AUTH["username"], password=AUTH["password"])
    )
    stream.write(header + request_bytes("GET", "/healthz", headers={"connection": "close"}))

    await wait_for(lambda: bool(reply.lost))
    assert bytes(reply.data).startswith(relay_v1.encode_response(relay_v1.Status.OK))
    assert b"HTTP/1.1 200" in reply.data
    assert second.session_resumed
    assert tunnel.dials == 2


async def test_quic_hop_only_first_in_a_chain() -> None:
    dialer = DialerConfig(type="quic")
    with pytest.raises(TransportError, match="first hop"):
        await open_connection(Address("127.0.0.1", 1), dialer, ".", over=object())  # type: ignore[arg-type]


async def test_unreachable_core_fails_fast() -> None:
    """Nothing listens on the UDP port: the ICMP error fails the dial, no timeout needed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    dialer = DialerConfig(type="quic", tls=TLSConfig(insecure_skip_verify=True), timeout=5)

    started = time.monotonic()
    with pytest.raises(TransportError, match="handshake"):
        await open_connection(Address("127.0.0.1", closed_port), dialer, ".")
    assert time.monotonic() - started < 1


# --- the transport on its own ---------------------------------------------------------------


class Collector(asyncio.Protocol):
    """Server side of the transport tests: keeps what arrives, can be paused."""

    instances: list[Collector]

    def __init__(self) -> None:
        self.transport: QuicStreamTransport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []
        Collector.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, QuicStreamTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Writer(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.data = bytearray()
        self.lost: list[Exception | None] = []

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


@pytest.fixture
async def quic_pair(
    server_cert: CertPair, ca: CA
) -> AsyncIterator[tuple[QuicListener, QuicTunnelConnection]]:
    Collector.instances = []
    options = QuicOptions(idle_timeout=1.5, keepalive=0.5)
    tls = TLSConfig(cert_file=str(server_cert.cert_file), key_file=str(server_cert.key_file))
    listener = await serve_quic("127.0.0.1", 0, tls, ".", Collector, options)
    port = listener.sockets[0].getsockname()[1]
    client_tls = TLSConfig(ca_file=str(ca.cert_file), server_name="localhost")
    tunnel = QuicTunnelConnection(TunnelKey("127.0.0.1", port, client_tls, ".", options, 5.0))
    yield listener, tunnel
    tunnel.close()
    listener.close()


async def test_paused_reader_withholds_credit_and_pauses_the_writer(
    quic_pair: tuple[QuicListener, QuicTunnelConnection],
) -> None:
    listener, tunnel = quic_pair
    stream = await tunnel.open_stream()
    writer = Writer()
    stream.set_protocol(writer)
    stream.set_write_buffer_limits(high=256 << 10)
    stream.write(b"x")
    await wait_for(lambda: bool(Collector.instances))
    receiver = Collector.instances[0]
    assert receiver.transport is not None
    receiver.transport.pause_reading()
    (server_link,) = listener.links

    payload = bytes(range(256)) * (4 << 12)  # 4 MiB
    for offset in range(0, len(payload), 64 << 10):
        stream.write(payload[offset : offset + (64 << 10)])
    await asyncio.sleep(0.5)

    # The receiver holds at most one window; the rest waits, un-acked, on the writer's side.
    assert server_link.quic.rx_held <= STREAM_WINDOW
    assert len(receiver.data) == 1
    assert writer.paused == 1 and writer.resumed == 0
    assert stream.get_write_buffer_size() >= len(payload) - STREAM_WINDOW
    # Bytes waiting for the slow reader's credit do not count against the connection: another
    # stream of the same connection is not held up by this one.
    link = tunnel.link
    assert link is not None and not link.budget.paused
    assert link.unacked_bytes < STREAM_WINDOW
    other = await tunnel.open_stream()
    other.set_protocol(Writer())
    other.write(b"y" * 100_000)
    other.write_eof()
    await wait_for(lambda: len(Collector.instances) == 2 and Collector.instances[1].eof)
    assert bytes(Collector.instances[1].data) == b"y" * 100_000

    receiver.transport.resume_reading()
    stream.write_eof()
    await wait_for(lambda: receiver.eof)
    assert bytes(receiver.data) == b"x" + payload
    assert writer.resumed == 1
    await wait_for(lambda: stream.get_write_buffer_size() == 0)
    assert server_link.quic.rx_held == 0


async def test_close_abort_and_reset_semantics(
    quic_pair: tuple[QuicListener, QuicTunnelConnection],
) -> None:
    listener, tunnel = quic_pair
    closing = await tunnel.open_stream()
    aborting = await tunnel.open_stream()
    protocols = [Writer(), Writer()]
    for stream, protocol in zip((closing, aborting), protocols, strict=True):
        stream.set_protocol(protocol)
        stream.write(b"hello")
    await wait_for(lambda: len(Collector.instances) == 2)
    first, second = sorted(Collector.instances, key=lambda c: c.transport.stream_id)  # type: ignore[union-attr]

    # close(): FIN (eof at the peer) and STOP_SENDING, which ends the peer's stream too once
    # its own side is done.
    closing.close()
    await wait_for(lambda: first.eof)
    assert protocols[0].lost == [None]
    await wait_for(lambda: first.lost == [None])

    # abort(): RESET_STREAM, the peer sees a reset.
    aborting.abort()
    await wait_for(lambda: bool(second.lost))
    assert isinstance(second.lost[0], ConnectionResetError)
    assert protocols[1].lost == [None]

    # Both streams are forgotten by both ends (aioquic discards finished streams).
    (server_link,) = listener.links
    assert server_link.streams == {}
    await wait_for(lambda: not server_link.quic._streams)


async def test_keepalive_outlives_the_idle_timeout_and_unused_tunnels_expire(
    quic_pair: tuple[QuicListener, QuicTunnelConnection],
) -> None:
    listener, tunnel = quic_pair  # idle timeout 1.5 s
    stream = await tunnel.open_stream()
    writer = Writer()
    stream.set_protocol(writer)
    stream.write(b"ping?")
    await asyncio.sleep(3.0)  # twice the idle timeout, the stream open and silent

    stream.write(b"still there")
    await wait_for(lambda: bytes(Collector.instances[0].data) == b"ping?still there")
    assert writer.lost == []
    link = tunnel.link
    assert link is not None and link.error is None

    stream.close()
    # Unused: the PINGs stop and both ends let the connection idle out.
    await wait_for(lambda: link.error is not None and not listener.links, timeout=5)
    await tunnel.open_stream()
    assert tunnel.dials == 2


async def test_lost_connection_ends_its_streams(
    quic_pair: tuple[QuicListener, QuicTunnelConnection],
) -> None:
    listener, tunnel = quic_pair
    stream = await tunnel.open_stream()
    writer = Writer()
    stream.set_protocol(writer)
    stream.write(b"x")
    await wait_for(lambda: bool(Collector.instances))

    listener.close()

    await wait_for(lambda: bool(writer.lost))
    assert isinstance(writer.lost[0], TransportError)
    assert isinstance(Collector.instances[0].lost[0], TransportError)
