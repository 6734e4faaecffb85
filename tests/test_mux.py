"""Multiplexed tunnels (``mtcp``/``mtls``, smux v2 framing) on real loopback sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.config import ConfigError, config_from_mapping
from relay.config.model import Address, DialerConfig
from relay.listeners import MuxListener
from relay.transports.mux import MuxOptions, MuxSession, MuxSessionLost, MuxStream
from relay.transports.mux.client import MuxTunnel, tunnel_key, tunnel_pool
from relay.transports.mux.frames import HEADER, PSH, SYN, UPD, VERSION
from relay.transports.mux.session import ACCEPT_BATCH
from tests.certs import CA, CertPair
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.helpers import chat, request


class Recorder(asyncio.Protocol):
    """A stream's protocol that keeps what happened to it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(data)


@dataclass
class MuxServer:
    """A listening socket whose connections are mux sessions; one protocol per stream."""

    port: int
    sessions: list[MuxSession] = field(default_factory=list)
    protocols: list[Recorder] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)


@pytest.fixture
async def mux_server() -> AsyncIterator[Callable[..., Any]]:
    servers: list[asyncio.Server] = []

    async def start(
        protocol: type[Recorder] = Echo, options: MuxOptions | None = None
    ) -> MuxServer:
        state = MuxServer(0)

        def on_stream(stream: MuxStream) -> None:
            proto = protocol()
            state.protocols.append(proto)
            stream.set_protocol(proto)
            proto.connection_made(stream)

        def session() -> MuxSession:
            made = CountingSession(options or MuxOptions(), False, on_stream, state.reads)
            state.sessions.append(made)
            return made

        server = await asyncio.get_running_loop().create_server(session, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    tunnel_pool().close()
    for server in servers:
        server.close()


class CountingSession(MuxSession):
    """A server session that records the size of every read of its connection."""

    def __init__(
        self,
        options: MuxOptions,
        is_client: bool,
        on_stream: Callable[[MuxStream], None],
        reads: list[int],
    ) -> None:
        super().__init__(options, is_client, on_stream)
        self._reads = reads

    def data_received(self, data: bytes) -> None:
        self._reads.append(len(data))
        super().data_received(data)


def _tunnel(port: int, **metadata: Any) -> MuxTunnel:
    dialer = DialerConfig(type="mtcp", metadata=dict(metadata))
    return tunnel_pool().tunnel(tunnel_key(Address("127.0.0.1", port), dialer, "."))


async def _open(tunnel: MuxTunnel, protocol: Recorder | None = None) -> tuple[MuxStream, Recorder]:
    stream = await tunnel.open_stream()
    proto = protocol or Recorder()
    stream.set_protocol(proto)
    proto.connection_made(stream)
    return stream, proto


async def test_many_streams_share_one_connection_and_echo(
    mux_server: Callable[..., Any],
) -> None:
    server = await mux_server()
    tunnel = _tunnel(server.port)
    opened = [await _open(tunnel) for _ in range(200)]
    for index, (stream, _) in enumerate(opened):
        stream.write(f"hello {index}".encode())

    await wait_for(lambda: all(p.data for _, p in opened))

    assert [bytes(p.data) for _, p in opened] == [f"hello {i}".encode() for i in range(200)]
    assert len(server.sessions) == 1 and tunnel.dials == 1
    assert [s.stream_id for s, _ in opened] == list(range(1, 401, 2))  # odd ids, as smux's


async def test_frames_written_in_one_loop_turn_leave_in_one_write(
    mux_server: Callable[..., Any],
) -> None:
    server = await mux_server(Recorder)
    tunnel = _tunnel(server.port)
    opened = [await _open(tunnel) for _ in range(100)]
    await wait_for(lambda: len(server.protocols) == 100)
    server.reads.clear()

    for stream, _ in opened:  # one token per stream, all in the same loop iteration
        stream.write(b"data: {}\n\n")
    await wait_for(lambda: all(p.data for p in server.protocols))

    # 100 frames of 18 bytes went out in one system call and arrived in one read.
    assert server.reads == [100 * (8 + 10)]


async def test_a_stalled_reader_holds_one_window_and_others_flow(
    mux_server: Callable[..., Any],
) -> None:
    server = await mux_server(Recorder)
    tunnel = _tunnel(server.port)
    slow, slow_writer = await _open(tunnel)
    fast, _ = await _open(tunnel)
    await wait_for(lambda: len(server.protocols) == 2)
    slow_reader, fast_reader = server.protocols
    assert slow_reader.transport is not None
    slow_reader.transport.pause_reading()
    chunk = bytes(range(256)) * 256  # 64 KiB

    for _ in range(16):  # 1 MiB to a reader that does not read
        slow.write(chunk)
    fast.write(b"still flowing")
    await wait_for(lambda: fast_reader.data == b"still flowing")

    # The peer took one window (256 KiB, smux's initial one); the rest waits here and the
    # writer was told to stop.
    await asyncio.sleep(0.1)
    assert slow.get_write_buffer_size() == (1 << 20) - (256 << 10)
    assert slow_writer.paused == 1 and slow_writer.resumed == 0
    assert slow_reader.data == b""

    slow_reader.transport.resume_reading()
    await wait_for(lambda: len(slow_reader.data) == 1 << 20)
    assert bytes(slow_reader.data) == chunk * 16
    assert slow.get_write_buffer_size() == 0 and slow_writer.resumed == 1


async def test_close_delivers_what_was_written_then_ends_the_peers_stream(
    mux_server: Callable[..., Any],
) -> None:
    server = await mux_server(Recorder)
    tunnel = _tunnel(server.port)
    stream, mine = await _open(tunnel)
    big = b"x" * (1 << 20)  # more than one window: FIN must wait for the window updates

    stream.write(big)
    stream.close()
    await wait_for(lambda: bool(server.protocols) and server.protocols[0].lost != [])

    theirs = server.protocols[0]
    assert len(theirs.data) == len(big) and theirs.eof and theirs.lost == [None]
    await wait_for(lambda: mine.lost == [None])
    assert not server.sessions[0].streams and not tunnel.session.streams  # type: ignore[union-attr]


async def test_the_peers_abort_ends_the_stream_here(mux_server: Callable[..., Any]) -> None:
    server = await mux_server(Recorder)
    tunnel = _tunnel(server.port)
    stream, mine = await _open(tunnel)
    stream.write(b"hi")
    await wait_for(lambda: bool(server.protocols) and server.protocols[0].data == b"hi")
    assert server.protocols[0].transport is not None

    server.protocols[0].transport.abort()

    await wait_for(lambda: mine.lost == [None])
    assert mine.eof
    stream.write(b"after the end")  # dropped, not an error
    assert stream.is_closing()


async def test_a_lost_session_ends_every_stream_and_the_next_open_redials(
    mux_server: Callable[..., Any],
) -> None:
    server = await mux_server()
    tunnel = _tunnel(server.port)
    opened = [await _open(tunnel) for _ in range(3)]
    await wait_for(lambda: len(server.protocols) == 3)

    server.sessions[0].transport.abort()

    await wait_for(lambda: all(p.lost for _, p in opened))
    assert all(isinstance(p.lost[0], MuxSessionLost) for _, p in opened)
    stream, proto = await _open(tunnel)
    stream.write(b"again")
    await wait_for(lambda: proto.data == b"again")
    assert tunnel.dials == 2 and len(server.sessions) == 2


async def _raw_session(port: int, frames: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frames)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (struct.pack("<BBHI", 1, SYN, 0, 1), "mux frame of version 1, expected 2"),
        (struct.pack("<BBHI", VERSION, 9, 0, 1), "unknown mux command 9"),
        (struct.pack("<BBHI", VERSION, SYN, 0, 2), "mux stream 2 opened out of turn"),
        (HEADER.pack(VERSION, UPD, 4, 1) + b"\0" * 4, "mux window update of 4 bytes, not 8"),
    ],
)
async def test_a_broken_frame_ends_the_session_with_a_named_error(
    mux_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    frames: bytes,
    message: str,
) -> None:
    server = await mux_server()
    caplog.set_level(logging.WARNING, "relay.transports.mux")

    answer = await _raw_session(server.port, frames)

    assert answer == b""  # closed without a word
    assert message in caplog.text
    assert server.sessions[0].error is not None


async def test_frames_split_anywhere_are_reassembled(mux_server: Callable[..., Any]) -> None:
    server = await mux_server()
    payload = b"split across reads"
    frames = HEADER.pack(VERSION, SYN, 0, 1) + HEADER.pack(VERSION, PSH, len(payload), 1) + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for byte in frames:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0)

    echoed = b""
    while len(echoed) < len(payload):  # the stream got the payload as it came: byte by byte
        version, command, length, stream_id = HEADER.unpack(await reader.readexactly(8))
        assert (version, command, stream_id) == (VERSION, PSH, 1)
        echoed += await reader.readexactly(length)

    writer.close()
    assert echoed == payload


async def test_a_silent_peer_is_dropped_after_the_keepalive_timeout(
    mux_server: Callable[..., Any],
) -> None:
    options = MuxOptions(keepalive_interval=0.1, keepalive_timeout=0.3)
    server = await mux_server(options=options)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    pings = await asyncio.wait_for(reader.read(), 5)  # NOPs, then the close

    writer.close()
    assert pings and len(pings) % 8 == 0
    assert isinstance(server.sessions[0].error, MuxSessionLost)
    assert "nothing heard for 0.3s" in str(server.sessions[0].error)


async def test_sessions_that_ping_each_other_stay_up(mux_server: Callable[..., Any]) -> None:
    server = await mux_server(options=MuxOptions(keepalive_interval=0.1, keepalive_timeout=0.3))
    tunnel = _tunnel(server.port, **{"mux.keepaliveInterval": "0.1s", "mux.keepaliveTimeout": 1})
    stream, proto = await _open(tunnel)

    await asyncio.sleep(1.0)  # idle, but for the pings
    stream.write(b"still here")

    await wait_for(lambda: proto.data == b"still here")
    assert server.sessions[0].error is None and tunnel.dials == 1


async def test_streams_over_the_limit_are_refused(mux_server: Callable[..., Any]) -> None:
    server = await mux_server(options=MuxOptions(max_streams=2))
    tunnel = _tunnel(server.port)
    opened = [await _open(tunnel) for _ in range(3)]

    await wait_for(lambda: opened[2][1].lost == [None])

    assert opened[2][1].eof
    assert not opened[0][1].lost and not opened[1][1].lost
    assert len(server.protocols) == 2


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"mux.version": 1}, "metadata.mux.version: only version 2 is supported"),
        ({"mux.maxStreamBuffer": 1024}, "metadata.mux.maxStreamBuffer: expected bytes between"),
        ({"mux.keepaliveInterval": "soon"}, "metadata.mux.keepaliveInterval:"),
        (
            {"mux.keepaliveInterval": "20s", "mux.keepaliveTimeout": "10s"},
            "metadata.mux.keepaliveTimeout: must not be below keepaliveInterval",
        ),
        ({"mux.maxStreams": 0}, "metadata.mux.maxStreams: expected a positive integer"),
    ],
)
def test_bad_mux_options_are_refused_by_name(metadata: dict[str, Any], message: str) -> None:
    mapping = core_mapping("mtcp", 9)
    mapping["services"][0]["listener"]["metadata"] = metadata
    with pytest.raises(ConfigError) as listener_error:
        config_from_mapping(mapping)
    assert f"services[0].listener.{message}" in str(listener_error.value)

    node = hop_node("core-1", "mtcp", 9)
    node["dialer"]["metadata"] = metadata
    with pytest.raises(ConfigError) as dialer_error:
        config_from_mapping(edge_mapping([node]))
    assert "chains[0].hops[0].nodes[0].dialer." in str(dialer_error.value)
    assert message in str(dialer_error.value)


@pytest.mark.parametrize("transport", ["mtcp", "mtls"])
async def test_edge_streams_share_one_session_to_the_core(
    transport: str, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    core = await start_node(core_mapping(transport, origin, server_cert))
    node = hop_node("core-1", transport, core.bound_port("core"), ca)
    edge = await start_node(edge_mapping([node]))
    port = edge.bound_port("edge")

    responses = await asyncio.gather(
        *(request(port, "POST", "/v1/chat/completions", chat(5, interval_ms=10)) for _ in range(20))
    )

    assert all(r.status == 200 and r.complete and r.events[-1][1] == "[DONE]" for r in responses)
    (tunnel,) = tunnel_pool().tunnels.values()
    assert tunnel.dials == 1
    assert tunnel.session is not None and tunnel.session.streams_total >= 20


async def test_a_client_that_leaves_mid_stream_frees_the_core(
    start_node: StartNode, origin: int
) -> None:
    # smux has no half-close: the edge's FIN ends the core's stream and its origin connection,
    # as a reset of a tcp hop would; the origin stops generating for nobody.
    core = await start_node(core_mapping("mtcp", origin))
    edge = await start_node(edge_mapping([hop_node("core-1", "mtcp", core.bound_port("core"))]))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    body = json.dumps(chat(500, interval_ms=20)).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await asyncio.wait_for(reader.readuntil(b"data: "), 5)
    stats = core.runtime("core").stats
    assert stats.connections_active == 1

    writer.close()

    await wait_for(lambda: stats.connections_active == 0, timeout=3)


async def test_a_closed_listener_takes_no_new_streams_and_lets_open_ones_finish() -> None:
    protocols: list[Recorder] = []

    def echo() -> Recorder:
        protocols.append(Echo())
        return protocols[-1]

    listener = MuxListener(echo, MuxOptions())
    listener.server = await asyncio.get_running_loop().create_server(
        listener.new_session, "127.0.0.1", 0
    )
    port = listener.sockets[0].getsockname()[1]
    try:
        tunnel = _tunnel(port)
        held, held_proto = await _open(tunnel)
        held.write(b"before")
        await wait_for(lambda: held_proto.data == b"before")

        listener.close()
        _, late_proto = await _open(tunnel)

        await wait_for(lambda: late_proto.lost == [None])  # refused: FIN at once
        held.write(b" and after")
        await wait_for(lambda: held_proto.data == b"before and after")
        held.close()
        # The session ends with its last stream; a new one finds no listener.
        await wait_for(lambda: tunnel.session is not None and tunnel.session.error is not None)
        with pytest.raises(ConnectionRefusedError):
            await tunnel.open_stream()
        assert len(protocols) == 1
    finally:
        tunnel_pool().close()


@pytest.mark.parametrize("window", [16384, 4 << 20])
async def test_a_window_other_than_smuxs_is_announced_and_kept(
    mux_server: Callable[..., Any], window: int
) -> None:
    # Writers assume 256 KiB until told otherwise: a smaller window must hold them back to
    # it, and a larger one must not leave them waiting for a report that never comes.
    server = await mux_server(Recorder, MuxOptions(stream_window=window))
    tunnel = _tunnel(server.port, **{"mux.maxStreamBuffer": window})
    stream, _ = await _open(tunnel)
    await wait_for(lambda: len(server.protocols) == 1)
    reader = server.protocols[0]
    assert reader.transport is not None
    reader.transport.pause_reading()
    await asyncio.sleep(0.05)  # the announcement arrives

    stream.write(b"w" * (8 << 20))
    await asyncio.sleep(0.1)

    assert stream.get_write_buffer_size() == (8 << 20) - window
    reader.transport.resume_reading()
    await wait_for(lambda: len(reader.data) == 8 << 20)


async def test_a_burst_of_new_streams_is_set_up_a_few_per_loop_turn(
    mux_server: Callable[..., Any],
) -> None:
    # Setting up a stream costs a handler and often a dial: a burst of them in one read must
    # not hold the loop (and the tokens of open streams) for one long callback.
    server = await mux_server(Recorder)
    tunnel = _tunnel(server.port)
    await _open(tunnel)
    await wait_for(lambda: len(server.protocols) == 1)
    loop = asyncio.get_running_loop()
    counts: list[int] = []

    def tick() -> None:  # once per loop turn
        counts.append(len(server.protocols))
        if len(server.protocols) < 201:
            loop.call_soon(tick)

    for _ in range(200):  # 200 SYNs leave in one write and arrive in one read
        await _open(tunnel)
    tick()
    await wait_for(lambda: len(server.protocols) == 201)

    steps = [later - earlier for earlier, later in itertools.pairwise(counts)]
    assert max(steps) <= ACCEPT_BATCH
    assert sum(steps) == 200
