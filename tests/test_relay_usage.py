"""Usage accounting on the relay (issue 12): key hashing, the ``usage`` search, the meter's
batch/ack protocol, and the http handler counting real requests through real sockets, drained
through the admin API, with over-quota keys refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any, cast

import pytest

from relay.agent.relay_api import RelayApi, RelayEndpoints
from relay.config import Address
from relay.server import RelayNode
from relay.usage import (
    ANONYMOUS_KEY,
    OVERFLOW_KEY,
    TokenUsage,
    UsageMeter,
    find_usage,
    key_of,
)
from tests.certs import CA, CertPair
from tests.conftest import StartNode, wait_for
from tests.helpers import chat, request

TOKEN = "sk-test-0123456789"
KEY = hashlib.sha256(TOKEN.encode()).hexdigest()[:32]


# --- pure parts -------------------------------------------------------------------------------


def test_key_is_a_hash_of_the_bearer_token_never_the_token() -> None:
    assert key_of(f"Bearer {TOKEN}".encode()) == KEY
    assert key_of(f"bearer   {TOKEN}  ".encode()) == KEY
    assert key_of(b"", TOKEN.encode()) == KEY  # x-api-key
    assert key_of(b"Basic dXNlcjpwYXNz") == ANONYMOUS_KEY
    assert key_of(b"Bearer ") == ANONYMOUS_KEY
    assert TOKEN not in KEY and len(KEY) == 32


def test_usage_is_found_in_the_final_sse_event_only() -> None:
    events = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,'
        b'"total_tokens":8}}\n\ndata: [DONE]\n\n'
    )
    assert find_usage(events, sse=True, whole=False) == TokenUsage(3, 5, 8)
    # only null usage objects: none
    assert find_usage(events.split(b"\n\n")[0] + b"\n\n", sse=True, whole=False) is None
    # nested details do not count twice; Anthropic-style names are read too
    nested = (
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10,'
        b'"completion_tokens_details":{"reasoning_tokens":2}}}\n\n'
    )
    assert find_usage(nested, sse=True, whole=False) == TokenUsage(4, 6, 10)
    anthropic = b'data: {"type":"message_delta","usage":{"input_tokens":5,"output_tokens":9}}\n'
    assert find_usage(anthropic, sse=True, whole=False) == TokenUsage(5, 9, 14)
    # a JSON body is parsed only when the tail is all of it
    body = b'{"id":"x","usage":{"input_tokens":2,"output_tokens":7}}'
    assert find_usage(body, sse=False, whole=True) == TokenUsage(2, 7, 9)
    assert find_usage(body, sse=False, whole=False) is None
    # garbage never raises
    for junk in (b'data: {"usage": {', b'"usage"', b'data: "usage"\n', b'\xff\xfe"usage"'):
        assert find_usage(junk, sse=True, whole=False) is None
        assert find_usage(junk, sse=False, whole=True) is None


def test_a_batch_is_returned_until_acknowledged_and_new_counts_wait_for_the_next() -> None:
    meter = UsageMeter()
    assert meter.take_batch() is None
    meter.entry("a" * 32, 7200.5).requests += 1
    first = meter.take_batch(8000.0)
    assert first is not None and [e.requests for e in first.entries] == [1]
    meter.entry("a" * 32, 7300.0).requests += 5  # after the seal: next batch
    assert meter.take_batch() is first  # resent unchanged until acked
    assert not meter.ack("someone-else") and meter.ack(first.id)
    second = meter.take_batch()
    assert second is not None and second.id != first.id
    assert [(e.key, e.hour, e.requests) for e in second.entries] == [("a" * 32, 7200, 5)]
    assert meter.ack(second.id) and meter.take_batch() is None


def test_entries_per_interval_are_bounded_by_an_overflow_entry() -> None:
    meter = UsageMeter(max_entries=3)
    for i in range(10):
        meter.entry(f"{i:032x}", 0.0).requests += 1
    batch = meter.take_batch()
    assert batch is not None
    assert len(batch.entries) == 4
    overflow = [e for e in batch.entries if e.key == OVERFLOW_KEY]
    assert overflow[0].requests == 7 and meter.overflowed == 7


def test_blocked_keys_must_be_key_hashes() -> None:
    meter = UsageMeter()
    assert meter.set_blocked([KEY]) == 1
    for bad in (["sk-live-token"], [KEY.upper()], [1]):
        try:
            meter.set_blocked(bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
    assert meter.blocked == frozenset({KEY})


# --- through the http handler -----------------------------------------------------------------


def _edge(origin: int, tmp_path: Path, **top: Any) -> dict[str, Any]:
    return {
        "api": {"addr": "127.0.0.1:0"},
        "services": [
            {
                "name": "edge",
                "addr": "127.0.0.1:0",
                "listener": {"type": "tcp"},
                "handler": {"type": "http"},
                "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin}"}]},
            }
        ],
        "accessLog": {"file": str(tmp_path / "access.log")},
        **top,
    }


def _api(node: RelayNode) -> RelayApi:
    assert node.admin_port is not None
    return RelayApi(RelayEndpoints(Address("127.0.0.1", node.admin_port), None, None))


async def test_counts_match_what_the_clients_sent_and_received(
    start_node: StartNode, origin: int, tmp_path: Path
) -> None:
    node = await start_node(_edge(origin, tmp_path))
    port = node.bound_port("edge")
    auth = {"authorization": f"Bearer {TOKEN}"}
    sent = received = 0
    streamed = chat(7, 1, ttfb_ms=20, stream_options={"include_usage": True})
    for _ in range(3):
        answer = await request(port, "POST", "/v1/chat/completions", streamed, auth)
        assert answer.status == 200 and answer.complete
        assert answer.events[-2][1]["usage"]["completion_tokens"] == 7
        sent += len(json.dumps(streamed))
        received += len(answer.body)
    plain = {**chat(4), "stream": False}
    answer = await request(port, "POST", "/v1/chat/completions", plain, {"x-api-key": TOKEN})
    assert answer.status == 200
    sent += len(json.dumps(plain))
    received += len(answer.body)
    anonymous = await request(port, "GET", "/v1/models")
    assert anonymous.status == 200

    batch = await _api(node).usage_batch()
    assert batch is not None
    entries = {e["key"]: e for e in batch["entries"]}  # type: ignore[union-attr,index]
    ours = entries[KEY]
    assert ours["requests"] == 4 and ours["streams"] == 3 and ours["errors"] == 0
    assert ours["bytes_in"] == sent and ours["bytes_out"] == received
    # prompt "hi" is one word at the dev origin; 3 x 7 + 4 completion tokens
    assert ours["prompt_tokens"] == 4 and ours["completion_tokens"] == 25
    assert ours["total_tokens"] == 29
    # three streams waited 20 ms for their first byte (the loop clock has 1 ms steps)
    assert ours["ttfb_count"] == 4 and ours["ttfb_sum"] >= 3 * 0.018
    assert entries[ANONYMOUS_KEY]["requests"] == 1
    # the same batch until acknowledged
    assert (await _api(node).usage_batch()) == batch
    assert await _api(node).ack_usage(str(batch["batch_id"]))
    assert await _api(node).usage_batch() is None


async def test_over_quota_keys_get_429_json_and_others_pass(
    start_node: StartNode, origin: int, tmp_path: Path
) -> None:
    node = await start_node(_edge(origin, tmp_path))
    port = node.bound_port("edge")
    await _api(node).set_blocked([KEY])
    refused = await request(
        port, "POST", "/v1/chat/completions", chat(3, 1), {"authorization": f"Bearer {TOKEN}"}
    )
    assert refused.status == 429
    assert json.loads(refused.body)["error"] == "quota_exceeded"
    other = await request(
        port, "POST", "/v1/chat/completions", chat(3, 1), {"authorization": "Bearer other"}
    )
    assert other.status == 200 and other.complete
    await _api(node).set_blocked([])
    again = await request(
        port, "POST", "/v1/chat/completions", chat(3, 1), {"authorization": f"Bearer {TOKEN}"}
    )
    assert again.status == 200
    batch = await _api(node).usage_batch()
    assert batch is not None
    ours = next(e for e in batch["entries"] if e["key"] == KEY)  # type: ignore[union-attr]
    assert ours["requests"] == 2 and ours["blocked"] == 1
    metrics = node.metrics.exposition().decode()
    assert 'aicdn_blocked_total{reason="quota",service="edge"} 1.0' in metrics


async def test_http3_requests_are_counted_like_http1(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair
) -> None:
    """HTTP/3 requests take the HTTP/1.1 handler's path, accounting included."""
    from tests.test_relay_http3 import H3Client, h3_connect, h3_edge

    _, edge = await h3_edge(start_node, origin, server_cert)
    body = json.dumps(chat(9, 1, stream_options={"include_usage": True})).encode()
    async with await h3_connect(edge.bound_port("edge"), ca) as client:
        client = cast(H3Client, client)
        answers = [
            await client.request(
                "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {TOKEN}"}
            )
            for _ in range(2)
        ]
    assert all(a.status == 200 and a.complete for a in answers)
    batch = edge.usage.take_batch()
    assert batch is not None
    (ours,) = [e for e in batch.entries if e.key == KEY]
    assert (ours.requests, ours.streams, ours.bytes_in) == (2, 2, 2 * len(body))
    assert ours.bytes_out == sum(len(a.body) for a in answers)
    assert ours.completion_tokens == 18 and ours.total_tokens == 20


@pytest.mark.slow
async def test_workers_are_drained_in_turn_and_all_refuse_over_quota_keys(
    origin_process: int, tmp_path: Path
) -> None:
    from tests.processes import RelayProcess, edge_and_core_config, port, wait_http

    config = edge_and_core_config(origin_process)
    config["workers"] = 2
    relay = RelayProcess(config, tmp_path)
    api = RelayApi(RelayEndpoints(Address("127.0.0.1", relay.api), None, None))
    try:
        edge = port(config, "edge")

        def ready() -> bool:
            health = json.loads(wait_http(f"http://127.0.0.1:{relay.api}/healthz"))
            return all(w["ready"] for w in health["workers"])

        await wait_for(ready, 15)
        auth = {"authorization": f"Bearer {TOKEN}"}
        body = chat(3, 1, stream_options={"include_usage": True})
        answers = await asyncio.gather(
            *(request(edge, "POST", "/v1/chat/completions", body, auth) for _ in range(40))
        )
        assert all(a.status == 200 for a in answers)
        counted: dict[str, int] = {"requests": 0, "bytes_out": 0, "total_tokens": 0}
        batches = set()
        for _ in range(10):  # one worker's batch per call, until none is left
            batch = await api.usage_batch()
            if batch is None:
                break
            batches.add(batch["batch_id"])
            for entry in batch["entries"]:  # type: ignore[union-attr]
                for name in counted:
                    counted[name] += entry[name] if entry["key"] == KEY else 0
            assert await api.ack_usage(str(batch["batch_id"]))
        assert counted == {
            "requests": 40,
            "bytes_out": sum(len(a.body) for a in answers),
            "total_tokens": 40 * 4,
        }
        assert len(batches) == 2  # both workers served some
        await api.set_blocked([KEY])
        refused = await asyncio.gather(
            *(request(edge, "POST", "/v1/chat/completions", body, auth) for _ in range(20))
        )
        assert {a.status for a in refused} == {429}
    finally:
        relay.stop()
