"""SSE tokens through edge → core → origin over each tunnel transport, one by one."""

from __future__ import annotations

import statistics

import pytest

from tests.certs import CA, CertPair
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node
from tests.helpers import chat, request

TRANSPORTS = ["tcp", "tls", "ws", "wss", "mtcp", "mtls"]


async def _edge_core(
    start_node: StartNode, transport: str, origin: int, ca: CA, cert: CertPair
) -> int:
    core = await start_node(core_mapping(transport, origin, cert))
    node = hop_node("core-1", transport, core.bound_port("core"), ca)
    edge = await start_node(edge_mapping([node]))
    return edge.bound_port("edge")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sse_tokens_arrive_one_by_one(
    transport: str, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    port = await _edge_core(start_node, transport, origin, ca, server_cert)

    response = await request(port, "POST", "/v1/chat/completions", chat(100, interval_ms=20))

    assert response.status == 200
    assert response.complete
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache"
    assert response.events[-1][1] == "[DONE]"
    tokens = [(at, e) for at, e in response.events if isinstance(e, dict) and "sent_at" in e]
    assert [e["seq"] for _, e in tokens][:100] == list(range(100))
    delays = [at - e["sent_at"] for at, e in tokens]
    # Each token leaves the relay as it arrives: a few ms late at most, never held back.
    assert statistics.median(delays) < 0.010, delays
    assert max(delays) < 0.100, delays
    # Not batched: arrivals span (almost) the whole time the origin took to send.
    sent_span = tokens[-1][1]["sent_at"] - tokens[0][1]["sent_at"]
    arrival_span = tokens[-1][0] - tokens[0][0]
    assert sent_span > 1.5
    assert arrival_span > 0.9 * sent_span


async def test_keep_alive_and_non_streaming_through_tunnel(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    port = await _edge_core(start_node, "tls", origin, ca, server_cert)
    payload = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": False}

    first = await request(port, "POST", "/v1/chat/completions", payload)
    echo = await request(port, "POST", "/echo", {"x": 1}, headers={"X-Request-ID": "req-42"})

    assert first.status == 200
    assert first.headers["content-type"].startswith("application/json")
    assert b"chat.completion" in first.body
    assert echo.status == 200
    assert echo.headers["x-request-id"] == "req-42"
    import json

    seen = json.loads(echo.body)
    assert seen["headers"]["x-request-id"] == "req-42"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert json.loads(seen["body"]) == {"x": 1}


@pytest.mark.parametrize("inner", ["tcp", "ws", "tls"])
async def test_two_hop_chain_streams_through_both_relays(
    inner: str, start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """edge → mid → core → origin: each hop's relay header names the next hop."""
    core = await start_node(core_mapping(inner, origin, server_cert))
    core_port = core.bound_port("core")
    mid_mapping = core_mapping("tls", origin, server_cert)
    mid_mapping["services"][0]["forwarder"] = {
        "nodes": [{"name": "core", "addr": f"127.0.0.1:{core_port}"}]
    }
    mid = await start_node(mid_mapping)
    edge_config = edge_mapping([hop_node("mid-1", "tls", mid.bound_port("core"), ca)])
    edge_config["chains"][0]["hops"].append(
        {"name": "core-hop", "nodes": [hop_node("core-1", inner, core_port, ca)]}
    )
    edge = await start_node(edge_config)

    response = await request(
        edge.bound_port("edge"), "POST", "/v1/chat/completions", chat(20, interval_ms=10)
    )

    assert response.status == 200 and response.complete
    assert len([e for _, e in response.events if isinstance(e, dict)]) == 21
    assert mid.runtime("core").stats.connections_total == 1
    assert core.runtime("core").stats.connections_total == 1
