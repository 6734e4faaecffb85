"""HTTP/3 entry (aioquic's H3 client → edge → core → origin), Alt-Svc on the TLS listener, and
the QUIC → WSS fallback with re-upgrade once QUIC answers again."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamReset

from relay.config import ConfigError, config_from_mapping
from relay.transports.quic import QuicOptions, tunnel_pool
from tests.certs import CA, CertPair
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.helpers import chat, request


@pytest.fixture(autouse=True)
async def _close_tunnels() -> AsyncIterator[None]:
    """QUIC tunnels are pooled per event loop: close this test's before its loop goes away."""
    yield
    tunnel_pool().close()


# --- an HTTP/3 client (aioquic) ---------------------------------------------------------------


@dataclass
class H3Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: SSE events: (arrival time.time(), parsed JSON or the raw data string).
    events: list[tuple[float, Any]] = field(default_factory=list)
    #: True when the stream ended cleanly (FIN), False when it was reset.
    complete: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: bytes = b""

    def on_data(self, data: bytes) -> None:
        now = time.time()
        self.body += data
        self._pending += data
        while b"\n\n" in self._pending:
            event, self._pending = self._pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    text = line[6:].decode()
                    try:
                        self.events.append((now, json.loads(text)))
                    except ValueError:
                        self.events.append((now, text))


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, H3Response] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.responses:
            self.responses[event.stream_id].done.set()
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, (HeadersReceived, DataReceived)):
            return
        response = self.responses.get(event.stream_id)
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            headers = {k.decode(): v.decode() for k, v in event.headers}
            status = int(headers.pop(":status"))
            if status >= 200:
                response.status, response.headers = status, headers
        else:
            response.on_data(event.data)
        if event.stream_ended:
            response.complete = True
            response.done.set()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> H3Response:
        stream_id = self._quic.get_next_available_stream_id()
        response = self.responses[stream_id] = H3Response()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.encode()),
            (b"content-type", b"application/json"),
        ] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.h3.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        await asyncio.wait_for(response.done.wait(), timeout)
        return response


def h3_config(ca: CA) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(cafile=str(ca.cert_file))
    return config


def free_tcp_and_udp_port() -> int:
    """A port free for both TCP and UDP (a TLS and an HTTP/3 service share its number)."""
    for _ in range(50):
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        port = int(tcp.getsockname()[1])
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            udp.close()
            tcp.close()
        return port
    raise AssertionError("no port free for both TCP and UDP")


async def h3_edge(
    start_node: StartNode, origin: int, cert: CertPair, port: int = 0, tls_too: bool = False
) -> tuple[Any, Any]:
    """A core (tcp relay) in front of the origin, and an edge whose http service "edge"
    listens on HTTP/3 on ``port``; with ``tls_too`` a twin "edge-tls" listens on TLS (TCP) on
    the same port."""
    core = await start_node(core_mapping("tcp", origin))
    tls = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    mapping = edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))])
    edge = mapping["services"][0]
    edge["addr"] = f"127.0.0.1:{port}"
    edge["listener"] = {"type": "http3", "tls": tls}
    if tls_too:
        mapping["services"].append(
            {**edge, "name": "edge-tls", "listener": {"type": "tls", "tls": tls}}
        )
    return core, await start_node(mapping)


async def h3_connect(port: int, ca: CA) -> Any:
    return connect("127.0.0.1", port, configuration=h3_config(ca), create_protocol=H3Client)


# --- HTTP/3 entry ---------------------------------------------------------------------------


async def test_sse_over_http3_arrives_token_by_token(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    _, edge = await h3_edge(start_node, origin, server_cert)
    port = edge.bound_port("edge")

    async with await h3_connect(port, ca) as client:
        client = cast(H3Client, client)
        body = json.dumps(chat(60, interval_ms=20)).encode()
        response = await client.request(
            "POST", "/v1/chat/completions", body, {"x-request-id": "req-h3-1"}
        )

    assert response.status == 200
    assert response.complete
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"] == "req-h3-1"
    assert "connection" not in response.headers and "transfer-encoding" not in response.headers
    assert response.events[-1][1] == "[DONE]"
    tokens = [(at, e) for at, e in response.events if isinstance(e, dict) and "sent_at" in e]
    assert [e["seq"] for _, e in tokens][:60] == list(range(60))
    # Each token arrives when it was sent, not collected into bigger writes.
    delays = [at - e["sent_at"] for at, e in tokens]
    assert statistics.median(delays) < 0.010, delays
    sent_span = tokens[-1][1]["sent_at"] - tokens[0][1]["sent_at"]
    assert tokens[-1][0] - tokens[0][0] > 0.9 * sent_span
    # The same request path as HTTP/1.1: the request was counted by the http service.
    stats = edge.runtime("edge").stats
    assert stats.connections_total == 1
    await wait_for(lambda: stats.connections_active == 0)


async def test_http3_post_with_body_and_concurrent_requests(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    _, edge = await h3_edge(start_node, origin, server_cert)
    port = edge.bound_port("edge")
    payload = {"hello": "h3", "blob": "x" * 200_000}

    async with await h3_connect(port, ca) as client:
        client = cast(H3Client, client)
        echo, health, *streams = await asyncio.gather(
            client.request("POST", "/echo", json.dumps(payload).encode(), {"x-test": "yes"}),
            client.request("GET", "/healthz"),
            *(
                client.request("POST", "/v1/chat/completions", json.dumps(chat(5, 5)).encode())
                for _ in range(20)
            ),
        )

    assert echo.status == 200 and echo.complete
    doc = json.loads(echo.body)
    assert doc["method"] == "POST" and doc["path"] == "/echo"
    assert json.loads(doc["body"]) == payload
    assert doc["headers"]["x-test"] == "yes"
    assert doc["headers"]["host"] == "localhost"
    assert doc["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert health.status == 200 and health.complete
    assert all(r.status == 200 and r.complete and r.events[-1][1] == "[DONE]" for r in streams)


async def test_http3_client_reset_reaches_the_handler(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """A client that resets its request stream mid-response: the handler sees the connection
    lost and drops the upstream, as for an HTTP/1.1 client that disconnects."""
    _, edge = await h3_edge(start_node, origin, server_cert)
    stats = edge.runtime("edge").stats

    async with await h3_connect(edge.bound_port("edge"), ca) as client:
        client = cast(H3Client, client)
        stream_id = client._quic.get_next_available_stream_id()
        response = client.responses[stream_id] = H3Response()
        client.h3.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/v1/chat/completions"),
            ],
        )
        client.h3.send_data(stream_id, json.dumps(chat(1000, 20)).encode(), end_stream=True)
        client.transmit()
        await wait_for(lambda: len(response.events) >= 3)
        assert stats.connections_active == 1
        client._quic.reset_stream(stream_id, 0x10C)  # H3_REQUEST_CANCELLED
        client._quic.stop_stream(stream_id, 0x10C)
        client.transmit()
        await wait_for(lambda: stats.connections_active == 0)
    text = (await edge.metrics_text()).decode()
    assert 'aicdn_requests_total{code="499",service="edge"} 1.0' in text


async def test_alt_svc_on_the_tls_twin(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """TLS (TCP) and HTTP/3 (UDP) share a port; TLS responses advertise HTTP/3 there."""
    port = free_tcp_and_udp_port()
    await h3_edge(start_node, origin, server_cert, port, tls_too=True)
    ctx = ssl.create_default_context(cafile=str(ca.cert_file))

    over_tls = await request(port, "GET", "/healthz", ssl_context=ctx)
    async with await h3_connect(port, ca) as client:
        over_h3 = await cast(H3Client, client).request("GET", "/healthz")

    assert over_tls.status == 200
    assert over_tls.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
    assert over_h3.status == 200
    assert "alt-svc" not in over_h3.headers  # already there


def test_tls_and_http3_may_share_a_port(server_cert: CertPair) -> None:
    """The port clash check is per protocol: TCP for tls, UDP for http3."""
    tls = {"certFile": str(server_cert.cert_file), "keyFile": str(server_cert.key_file)}
    service = {
        "addr": ":8443",
        "handler": {"type": "http"},
        "forwarder": {"nodes": [{"name": "origin", "addr": "127.0.0.1:9"}]},
    }
    config = config_from_mapping(
        {
            "services": [
                {**service, "name": "https", "listener": {"type": "tls", "tls": tls}},
                {**service, "name": "h3", "listener": {"type": "http3", "tls": tls}},
            ]
        }
    )
    assert [s.listener.type for s in config.services] == ["tls", "http3"]


# --- fallback to WSS while UDP is blocked, and back to QUIC -----------------------------------


def free_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def quic_core(origin: int, cert: CertPair, port: int) -> dict[str, Any]:
    mapping = core_mapping("quic", origin)
    service = mapping["services"][0]
    service["addr"] = f"127.0.0.1:{port}"
    service["listener"]["tls"] = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    return mapping


@pytest.mark.parametrize("blocked", ["closed", "blackhole"])
async def test_udp_blocked_falls_back_to_wss_and_moves_back_to_quic(
    blocked: str, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """One hop, a QUIC and a WSS node for the same core. UDP "blocked" two ways: a closed port
    (ICMP fails the handshake at once) and a black hole (the handshake times out). New streams
    go over WSS, and no client waits for QUIC again, even past ``failTimeout``; once QUIC
    answers, the re-probe un-benches the node and new streams move back to it."""
    wss_core = await start_node(core_mapping("wss", origin, server_cert))
    quic_port = free_udp_port()
    blackhole: socket.socket | None = None
    if blocked == "blackhole":
        blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blackhole.bind(("127.0.0.1", quic_port))  # reads nothing, answers nothing
    quic_node = hop_node("core-quic", "quic", quic_port)
    quic_node["dialer"]["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost"}
    quic_node["dialer"]["metadata"] = {"timeout": 0.5, "reprobeInterval": 0.2}
    wss_node = hop_node("core-wss", "wss", wss_core.bound_port("core"), ca)
    selector = {"strategy": "fifo", "maxFails": 1, "failTimeout": 0.3}
    edge = await start_node(edge_mapping([quic_node, wss_node], selector=selector))
    port = edge.bound_port("edge")
    chain = edge.runtime("edge").chain
    assert chain is not None
    benched = chain.hops[0].nodes[0]
    wss_stats = wss_core.runtime("core").stats
    loop = asyncio.get_running_loop()

    try:
        # The first request pays for the failed QUIC dial, then goes over WSS.
        first = await request(port, "POST", "/v1/chat/completions", chat(5, interval_ms=5))
        assert first.status == 200 and first.complete
        assert wss_stats.connections_total == 1
        assert not benched.available(loop.time())
        # UDP stays blocked for longer than failTimeout: the re-probe keeps QUIC benched, so
        # every request goes straight over WSS, none waits for a QUIC handshake (0.5s).
        for _ in range(6):
            started = time.monotonic()
            response = await request(port, "POST", "/v1/chat/completions", chat(3, 5))
            assert response.status == 200 and response.complete
            assert time.monotonic() - started < 0.4
            await asyncio.sleep(0.15)
        assert not benched.available(loop.time())
        assert not tunnel_pool().tunnels or all(
            t.link is None for t in tunnel_pool().tunnels.values()
        )
    finally:
        if blackhole is not None:
            blackhole.close()

    # UDP passes again (a QUIC core on the port): the re-probe connects and un-benches.
    quic_core_node = await start_node(quic_core(origin, server_cert, quic_port))
    await wait_for(lambda: benched.available(loop.time()))
    (tunnel,) = tunnel_pool().tunnels.values()
    assert tunnel.link is not None and tunnel.dials == 1  # ready before any client asks
    wss_before = wss_stats.connections_total

    responses = [
        await request(port, "POST", "/v1/chat/completions", chat(3, 5), headers={"x-n": str(n)})
        for n in range(3)
    ]

    assert all(r.status == 200 and r.complete for r in responses)
    assert quic_core_node.runtime("core").stats.connections_total >= 1
    assert wss_stats.connections_total == wss_before  # nothing more over WSS
    assert tunnel.dials == 1  # the probe's connection carried them


async def test_http3_error_answers_and_head(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """The handler's own answers (a 502 when no core answers) and HEAD responses (a head and
    no body) end their streams cleanly."""
    _, edge = await h3_edge(start_node, origin, server_cert)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = int(closed.getsockname()[1])
    closed.close()
    broken = edge_mapping([hop_node("dead", "tcp", dead_port)])
    tls = {"certFile": str(server_cert.cert_file), "keyFile": str(server_cert.key_file)}
    broken["services"][0]["listener"] = {"type": "http3", "tls": tls}
    broken_edge = await start_node(broken)
    body = json.dumps(chat(3, 5)).encode()

    async with await h3_connect(edge.bound_port("edge"), ca) as client:
        head = await cast(H3Client, client).request("HEAD", "/healthz")
    async with await h3_connect(broken_edge.bound_port("edge"), ca) as client:
        failed = await cast(H3Client, client).request(
            "POST", "/v1/chat/completions", body, {"x-request-id": "req-502"}
        )

    # The dev origin serves /healthz to GET only (and sends a body even to HEAD).
    assert head.status == 405 and head.complete and head.body == b""
    assert "content-length" not in head.headers
    assert failed.status == 502 and failed.complete
    assert failed.headers["x-request-id"] == "req-502"
    assert json.loads(failed.body)["error"] == "bad_gateway"


def test_reprobe_interval_is_checked_by_the_loader() -> None:
    node = hop_node("core-quic", "quic", 4433)
    node["dialer"]["metadata"] = {"reprobeInterval": -1}
    with pytest.raises(ConfigError, match="reprobeInterval"):
        config_from_mapping(edge_mapping([node]))
    node["dialer"]["metadata"] = {"reprobeInterval": "2s"}
    config = config_from_mapping(edge_mapping([node]))
    dialer = config.chains[0].hops[0].nodes[0].dialer
    assert QuicOptions.from_metadata(dialer.metadata).reprobe_interval == 2.0
