"""Streams that survive a broken edge-core link: real edge and core nodes, real sockets, QUIC
and WSS; the tunnel is broken under running SSE streams and every token must arrive once."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.protocols import relay_v1
from relay.protocols.relay_v1 import Status
from relay.protocols.resume import (
    ResumeRequest,
    StreamEnd,
    decode_accept,
    encode_open,
    encode_resume,
)
from relay.server import RelayNode
from relay.transports.quic import tunnel_pool
from tests.certs import CA, CertPair
from tests.conftest import AUTH, StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.cut_proxy import CutProxy, UdpDropProxy
from tests.helpers import Response, chat, read_body, read_head, request, request_bytes
from tests.processes import RelayProcess, free_port, wait_http

STREAMS = 100
TOKENS = 80
INTERVAL_MS = 15


@pytest.fixture(autouse=True)
async def _close_tunnels() -> AsyncIterator[None]:
    yield
    tunnel_pool().close()


def resumable(node: dict[str, Any], window: str = "10s") -> dict[str, Any]:
    node["connector"]["metadata"] = {"resume": True, "resumeWindow": window}
    return node


def token_seqs(response: Response) -> list[int]:
    return [e["seq"] for _, e in response.events if isinstance(e, dict) and "seq" in e]


def assert_every_token_once(responses: list[Response], tokens: int = TOKENS) -> None:
    for response in responses:
        assert response.status == 200
        assert response.complete
        # seq 0..tokens-1 are the tokens, seq == tokens the finish chunk: all once, in order.
        assert token_seqs(response) == list(range(tokens + 1))
        assert response.events[-1][1] == "[DONE]"


async def streams_closed(edge: RelayNode, core: RelayNode) -> None:
    """Nothing parked; idle pooled tunnels keep their (attached) streams until the edge
    closes them, and then the core forgets every one."""
    assert resume_stats(core, "core")["parked"] == 0
    assert resume_stats(core, "core")["buffered_bytes"] == 0
    assert 0 < len(core.resume_sessions) <= STREAMS
    await edge.stop(0)
    await wait_for(lambda: len(core.resume_sessions) == 0)


def resume_stats(node: RelayNode, side: str) -> dict[str, int]:
    stats = node.metrics.resume[side]
    return {name: getattr(stats, name) for name in stats.__slots__ if name != "side"}


def exported(node: RelayNode, name: str, side: str) -> float:
    text = node.metrics.exposition().decode()
    prefix = f'{name}{{side="{side}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"{name} not exported"
    return float(lines[0][len(prefix) :])


class Streams:
    """``count`` SSE chat streams through the edge at once; ``flowing`` counts those whose
    first token arrived (so a break hits streams whose tunnels are up, not being set up)."""

    def __init__(self, port: int, count: int = STREAMS, tokens: int = TOKENS) -> None:
        self.port, self.count, self.tokens = port, count, tokens
        self.flowing = 0
        self.task = asyncio.get_running_loop().create_task(self._all())

    async def _all(self) -> list[Response]:
        return list(await asyncio.gather(*(self._one() for _ in range(self.count))))

    async def _one(self) -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = json.dumps(chat(self.tokens, INTERVAL_MS)).encode()
        writer.write(request_bytes("POST", "/v1/chat/completions", body))
        try:
            status, headers = await read_head(reader)
            response = Response(status, headers)
            pending = b""
            seen = False

            def on_chunk(chunk: bytes) -> None:
                nonlocal pending, seen
                if not seen:
                    seen = True
                    self.flowing += 1
                pending += chunk
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    data = event.partition(b"data: ")[2].decode()
                    response.events.append((0.0, json.loads(data) if data[:1] == "{" else data))

            response.body, response.complete = await asyncio.wait_for(
                read_body(reader, headers, on_chunk), 60
            )
            return response
        finally:
            writer.close()

    async def flowing_all(self, timeout: float = 30.0) -> None:
        await wait_for(lambda: self.flowing == self.count, timeout)
        await asyncio.sleep(0.1)
        assert not self.task.done()

    async def result(self, timeout: float = 60.0) -> list[Response]:
        return await asyncio.wait_for(self.task, timeout)


async def streams(port: int, count: int = STREAMS, tokens: int = TOKENS) -> list[Response]:
    return await Streams(port, count, tokens).result()


# --- over TCP, the link cut by a proxy ------------------------------------------------------


async def test_streams_survive_cut_tcp_tunnels(start_node: StartNode, origin: int) -> None:
    core = await start_node(core_mapping("tcp", origin))
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    edge = await start_node(edge_mapping([resumable(hop_node("core-1", "tcp", proxy_port))]))

    running = Streams(edge.bound_port("edge"))
    await running.flowing_all()
    assert proxy.cut() >= STREAMS  # both sockets of every tunnel
    await asyncio.sleep(0.3)
    again = proxy.cut()  # and once more: the tunnels that resumed by now break again
    responses = await running.result()

    assert_every_token_once(responses)
    edge_stats, core_stats = resume_stats(edge, "edge"), resume_stats(core, "core")
    assert again > 0
    assert edge_stats["successes"] > STREAMS
    assert edge_stats["failures"] == 0 and edge_stats["streams_lost"] == 0
    # A resume the core accepted can be cut before its answer reached the edge: then the
    # edge counts a failed dial and tries again.
    assert core_stats["successes"] >= edge_stats["successes"]
    assert exported(core, "aicdn_resume_streams_parked", "core") == 0
    assert exported(core, "aicdn_resume_successes_total", "core") == core_stats["successes"]
    await streams_closed(edge, core)
    proxy.close()


async def test_streams_survive_while_the_link_is_down_for_a_while(
    start_node: StartNode, origin: int
) -> None:
    """The path refuses connections for a second: tokens produced meanwhile wait parked on
    the core and arrive, in order, once the edge gets through."""
    core = await start_node(core_mapping("tcp", origin))
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    edge = await start_node(edge_mapping([resumable(hop_node("core-1", "tcp", proxy_port))]))

    running = Streams(edge.bound_port("edge"), count=20)
    await running.flowing_all()
    proxy.blocked = True
    proxy.cut()
    await wait_for(lambda: resume_stats(core, "core")["parked"] == 20)
    assert exported(core, "aicdn_resume_buffered_bytes", "core") > 0
    await asyncio.sleep(1.0)
    proxy.blocked = False
    responses = await running.result()
    proxy.close()

    assert_every_token_once(responses)
    assert resume_stats(core, "core")["parked"] == 0
    assert resume_stats(core, "core")["buffered_bytes"] == 0
    assert resume_stats(core, "core")["replayed_bytes"] > 0


# --- over QUIC, and from QUIC to WSS ----------------------------------------------------------


def quic_service(name: str, origin: int, cert: CertPair) -> dict[str, Any]:
    service = core_mapping("quic", origin)["services"][0]
    service["name"] = name
    service["listener"]["tls"] = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    return service


def wss_service(name: str, origin: int, cert: CertPair) -> dict[str, Any]:
    service = core_mapping("wss", origin, cert)["services"][0]
    service["name"] = name
    return service


def quic_node(port: int, ca: CA) -> dict[str, Any]:
    node = hop_node("core-quic", "quic", port)
    node["dialer"]["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost"}
    # Generous for a loaded machine: a re-dial to a closed UDP port fails at once anyway
    # (ICMP), and silence costs at most this, well inside the resume window.
    node["dialer"]["metadata"] = {"timeout": "4s"}
    return resumable(node)


async def test_streams_survive_a_closed_quic_connection(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    core = await start_node({"services": [quic_service("core-quic", origin, server_cert)]})
    edge = await start_node(edge_mapping([quic_node(core.bound_port("core-quic"), ca)]))

    running = Streams(edge.bound_port("edge"))
    await running.flowing_all()
    tunnels = list(tunnel_pool().tunnels.values())
    assert len(tunnels) == 1
    dials = tunnels[0].dials
    tunnels[0].close()  # the edge's QUIC connection, with all 100 streams on it
    responses = await running.result()

    assert_every_token_once(responses)
    assert tunnels[0].dials == dials + 1  # resumed over one new QUIC connection
    assert resume_stats(edge, "edge")["successes"] == STREAMS
    await streams_closed(edge, core)
    assert resume_stats(core, "core")["parked"] == 0


async def test_streams_move_from_quic_to_wss_during_the_break(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """UDP stops passing (the core's QUIC port goes away): the streams resume over the same
    core's WSS listener, a second node of the edge's hop."""
    core = await start_node(
        {
            "services": [
                quic_service("core-quic", origin, server_cert),
                wss_service("core-wss", origin, server_cert),
            ]
        }
    )
    wss = resumable(hop_node("core-wss", "wss", core.bound_port("core-wss"), ca))
    edge = await start_node(
        edge_mapping(
            [quic_node(core.bound_port("core-quic"), ca), wss], selector={"strategy": "fifo"}
        )
    )

    running = Streams(edge.bound_port("edge"))
    await running.flowing_all()
    assert core.runtime("core-quic").stats.connections_active == STREAMS
    core.listener("core-quic").close()  # CONNECTION_CLOSE to the edge, then silence on UDP
    responses = await running.result()

    assert_every_token_once(responses)
    assert resume_stats(edge, "edge")["successes"] == STREAMS
    assert core.runtime("core-wss").stats.connections_total >= STREAMS
    await streams_closed(edge, core)


async def test_streams_survive_a_silent_path_detected_by_quic_idle_timeout(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """UDP goes silent both ways (no reset, no close). The edge's QUIC connection times out
    (idle timeout 2s), the edge resumes over a fresh QUIC connection once packets pass again,
    maybe before the core noticed its side is dead: the resume replaces the old tunnel."""
    core = await start_node({"services": [quic_service("core-quic", origin, server_cert)]})
    udp = UdpDropProxy(core.bound_port("core-quic"))
    udp_port = await udp.start()
    node = quic_node(udp_port, ca)
    node["dialer"]["metadata"] = {"timeout": "4s", "idleTimeout": "2s"}
    edge = await start_node(edge_mapping([node]))

    running = Streams(edge.bound_port("edge"), count=20, tokens=300)
    await running.flowing_all()
    udp.dropping = True
    await wait_for(lambda: resume_stats(edge, "edge")["attempts"] == 20, timeout=10)
    udp.dropping = False
    responses = await running.result()
    udp.close()

    assert_every_token_once(responses, tokens=300)
    assert resume_stats(edge, "edge")["successes"] == 20
    assert resume_stats(core, "core")["successes"] == 20


# --- limits ---------------------------------------------------------------------------------


async def test_past_the_window_streams_end_with_an_error_and_nothing_is_held(
    start_node: StartNode, origin: int
) -> None:
    core_config = core_mapping("tcp", origin)
    core_config["services"][0]["handler"]["metadata"] = {"resumeWindow": "1s"}
    core = await start_node(core_config)
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    node = resumable(hop_node("core-1", "tcp", proxy_port), window="1500ms")
    edge = await start_node(edge_mapping([node]))

    running = Streams(edge.bound_port("edge"), count=20, tokens=400)
    await running.flowing_all()
    proxy.blocked = True  # the core is out of reach for longer than either window
    proxy.cut()
    await wait_for(lambda: resume_stats(core, "core")["parked"] == 20)
    responses = await running.result(10)
    proxy.close()

    for response in responses:
        assert response.status == 200
        assert not response.complete  # the client sees the stream break, as without resume
        assert 0 < len(token_seqs(response)) < 400
    await wait_for(lambda: len(core.resume_sessions) == 0, timeout=5)
    assert exported(core, "aicdn_resume_streams_parked", "core") == 0
    assert exported(core, "aicdn_resume_buffered_bytes", "core") == 0
    assert exported(core, "aicdn_resume_streams_lost_total", "core") == 20
    assert exported(edge, "aicdn_resume_streams_lost_total", "edge") == 20
    assert exported(edge, "aicdn_resume_failures_total", "edge") == 20
    # The origin connections were closed with the streams: the core holds no connection.
    assert core.runtime("core").stats.connections_active == 0


async def test_a_restarted_core_refuses_the_resume_and_the_stream_fails_fast(
    start_node: StartNode, origin: int
) -> None:
    """The core process is gone (a new one answers): it holds no such stream, so the edge
    gives up at once instead of waiting out the window."""
    core = await start_node(core_mapping("tcp", origin))
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    edge = await start_node(edge_mapping([resumable(hop_node("core-1", "tcp", proxy_port))]))

    running = Streams(edge.bound_port("edge"), count=5, tokens=400)
    await running.flowing_all()
    core.resume_sessions.close_all()  # as if the core restarted: its streams are gone
    proxy.cut()
    loop = asyncio.get_running_loop()
    started = loop.time()
    responses = await running.result(10)
    assert loop.time() - started < 5  # well inside the 10 s window
    proxy.close()
    assert all(not r.complete for r in responses)
    assert resume_stats(edge, "edge")["streams_lost"] == 5


# --- authentication and interop -------------------------------------------------------------


def relay_service(name: str, origin: int, username: str) -> dict[str, Any]:
    service = core_mapping("tcp", origin)["services"][0]
    service["name"] = name
    service["handler"]["auth"] = {"username": username, "password": "pw-" + username}
    return service


async def _open(port: int, request: relay_v1.Request, first: bytes = b"") -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    await loop.sock_sendall(sock, relay_v1.encode_request(request) + first)
    return sock


async def _answer(sock: socket.socket) -> tuple[relay_v1.Response, bytes]:
    loop = asyncio.get_running_loop()
    buf = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert chunk, "closed before answering"
        buf += chunk
        parsed = relay_v1.parse_response(buf)
        if parsed is not None:
            return parsed


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


async def test_a_resume_with_another_edges_credentials_is_refused(
    start_node: StartNode, origin: int
) -> None:
    """Two edges with their own credentials on one core. Edge 2, even knowing edge 1's stream
    id and token, cannot take over its stream; edge 1 can."""
    core = await start_node(
        {
            "services": [
                relay_service("core-a", origin, "edge-1"),
                relay_service("core-b", origin, "edge-2"),
            ]
        }
    )
    port_a, port_b = core.bound_port("core-a"), core.bound_port("core-b")
    first = request_bytes("POST", "/v1/chat/completions", b'{"stream":true,"max_tokens":5}')
    opener = relay_v1.Request(
        username="edge-1", password="pw-edge-1", resume=encode_open(len(first))
    )
    sock = await _open(port_a, opener, first)
    answer, _ = await _answer(sock)
    assert answer.status == Status.OK and answer.resume is not None
    accept = decode_accept(answer.resume)
    _reset(sock)  # the tunnel breaks before the edge read anything more
    await wait_for(lambda: resume_stats(core, "core")["parked"] == 1)

    stolen = encode_resume(ResumeRequest(accept.stream_id, accept.token, 0))
    for port, user in ((port_b, "edge-2"), (port_a, "edge-1")):
        password = "pw-" + user
        if user == "edge-1":
            # The right user with a forged token is refused as well.
            stolen = encode_resume(ResumeRequest(accept.stream_id, b"\x01" * 32, 0))
        thief = await _open(port, relay_v1.Request(username=user, password=password, resume=stolen))
        refused, _ = await _answer(thief)
        assert refused.status == Status.UNAUTHORIZED
        thief.close()
    # Edge 2 with edge 1's credentials is no edge 2: the service refuses it at the door.
    wrong = await _open(
        port_b,
        relay_v1.Request(username="edge-1", password="pw-edge-1", resume=stolen),
    )
    assert (await _answer(wrong))[0].status == Status.UNAUTHORIZED
    wrong.close()
    assert resume_stats(core, "core")["parked"] == 1  # the stream is still there for edge 1

    owner = await _open(
        port_a,
        relay_v1.Request(
            username="edge-1",
            password="pw-edge-1",
            resume=encode_resume(ResumeRequest(accept.stream_id, accept.token, 0)),
        ),
    )
    resumed, rest = await _answer(owner)
    assert resumed.status == Status.OK and resumed.resume is not None
    assert decode_accept(resumed.resume).received == len(first)  # the core got the request
    end = StreamEnd()
    body = b""
    loop = asyncio.get_running_loop()
    data = rest
    while b"data: [DONE]" not in body:
        events, _ = end.receive(data)
        body += b"".join(getattr(e, "data", b"") for e in events)
        if b"data: [DONE]" in body:
            break
        data = await asyncio.wait_for(loop.sock_recv(owner, 65536), 5)
        assert data
    assert body.startswith(b"HTTP/1.1 200")  # replayed from offset 0: the whole answer
    owner.close()
    assert resume_stats(core, "core")["failures"] == 2
    assert resume_stats(core, "core")["successes"] == 1


async def test_a_core_without_resume_serves_plain_tunnels(
    start_node: StartNode, origin: int
) -> None:
    """A core that ignores the feature (resume off, as plain gost ignores an unknown feature)
    answers without it: the edge's tunnels are plain ones, and streams work as before."""
    core_config = core_mapping("tcp", origin)
    core_config["services"][0]["handler"]["metadata"] = {"resumeWindow": "0s"}
    core = await start_node(core_config)
    edge = await start_node(
        edge_mapping([resumable(hop_node("core-1", "tcp", core.bound_port("core")))])
    )

    responses = await streams(edge.bound_port("edge"), count=5, tokens=20)

    assert_every_token_once(responses, tokens=20)
    assert len(core.resume_sessions) == 0
    assert resume_stats(core, "core")["attempts"] == 0


async def test_request_bodies_sent_during_a_break_arrive_once(
    start_node: StartNode, origin: int
) -> None:
    """Edge-to-core bytes are counted too: a request written while the tunnel is down is
    replayed on resume, and the echo shows it arrived exactly once."""
    core = await start_node(core_mapping("tcp", origin))
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    edge = await start_node(edge_mapping([resumable(hop_node("core-1", "tcp", proxy_port))]))
    port = edge.bound_port("edge")

    first = await request(port, "POST", "/v1/chat/completions", chat(3, 1))
    assert first.status == 200
    # A pooled resumable tunnel now idles; cut it and block the path while the next
    # request is written into it.
    proxy.blocked = True
    proxy.cut()
    payload = {"big": "x" * 200_000}
    task = asyncio.create_task(request(port, "POST", "/echo", payload))
    await asyncio.sleep(0.5)
    proxy.blocked = False
    response = await asyncio.wait_for(task, 10)
    proxy.close()
    assert response.status == 200
    assert len(response.body) >= 200_000
    assert response.body.count(b"x" * 1000) == 200
    assert AUTH  # (the default credentials carried both tunnels)


async def test_a_draining_core_lets_resumable_streams_finish(
    start_node: StartNode, origin: int
) -> None:
    """A graceful stop waits for resumable streams as it does for plain tunnels."""
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping([resumable(hop_node("core-1", "tcp", core.bound_port("core")))])
    )
    running = Streams(edge.bound_port("edge"), count=5, tokens=60)
    await running.flowing_all()
    stopping = asyncio.create_task(core.stop(10))
    responses = await running.result()
    assert_every_token_once(responses, tokens=60)
    await stopping
    assert len(core.resume_sessions) == 0


async def test_idle_resumable_tunnels_hold_no_replay_data(
    start_node: StartNode, origin: int
) -> None:
    """Delayed acknowledgements empty both replay buffers of a pooled keep-alive tunnel."""
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping([resumable(hop_node("core-1", "tcp", core.bound_port("core")))])
    )
    responses = await streams(edge.bound_port("edge"), count=3, tokens=5)
    assert_every_token_once(responses, tokens=5)
    held = core.resume_sessions.streams.values()
    assert len(held) == 3  # the edge pools the tunnels, the core keeps their streams
    await wait_for(lambda: all(s.end.buffer.size == 0 for s in held), timeout=5)
    pooled = next(iter(edge.runtime("edge").upstream_pool._idle.values()))
    tunnels = [conn.transport for conn, _ in pooled]
    assert all(t._end.buffer.size == 0 for t in tunnels)


async def test_forward_handler_streams_survive_a_cut(start_node: StartNode, origin: int) -> None:
    """L4 forwarding (a splice over the resumable tunnel) resumes the same way."""
    core = await start_node(core_mapping("tcp", origin))
    proxy = CutProxy(core.bound_port("core"))
    proxy_port = await proxy.start()
    node = resumable(hop_node("core-1", "tcp", proxy_port))
    edge = await start_node(edge_mapping([node], handler="forward"))

    running = Streams(edge.bound_port("edge"), count=20)
    await running.flowing_all()
    assert proxy.cut() >= 20
    responses = await running.result()

    assert_every_token_once(responses)
    assert resume_stats(edge, "edge")["successes"] == 20
    proxy.close()


@pytest.mark.slow
async def test_edge_and_core_processes_resume_across_a_cut(
    origin_process: int, tmp_path: Path
) -> None:
    """As deployed: edge and core as ``python -m relay run -C FILE`` processes, the cut
    forwarder between them; the resume metrics are read from the metrics endpoints."""
    core_port, edge_port = free_port(), free_port()
    core_config = core_mapping("tcp", origin_process)
    core_config["services"][0]["addr"] = f"127.0.0.1:{core_port}"
    core_config["services"][0]["handler"]["metadata"] = {"resumeWindow": "20s"}
    core = RelayProcess(core_config, tmp_path, "core")
    proxy = CutProxy(core_port)
    try:
        proxy_port = await proxy.start()
        edge_config = edge_mapping([resumable(hop_node("core-1", "tcp", proxy_port))])
        edge_config["services"][0]["addr"] = f"127.0.0.1:{edge_port}"
        edge = RelayProcess(edge_config, tmp_path, "edge")
        try:
            running = Streams(edge_port, count=20)
            await running.flowing_all()
            assert proxy.cut() >= 20
            responses = await running.result()
            assert_every_token_once(responses)
            text = await asyncio.to_thread(wait_http, f"http://127.0.0.1:{core.metrics}/metrics")
            assert b'aicdn_resume_successes_total{side="core"} 20.0' in text
            assert b'aicdn_resume_streams_parked{side="core"} 0.0' in text
            edge_text = await asyncio.to_thread(
                wait_http, f"http://127.0.0.1:{edge.metrics}/metrics"
            )
            assert b'aicdn_resume_successes_total{side="edge"} 20.0' in edge_text
        finally:
            edge.stop()
    finally:
        proxy.close()
        core.stop()
