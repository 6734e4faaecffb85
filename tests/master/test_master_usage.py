"""Usage on the master (issue 12), on the real store: batches applied once however often they
are sent, sums per key/node/hour with filters, CSV export, quotas and who may set them."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from master_api.extensions import services
from master_api.services.usage import period_start
from tests.master.conftest import Caller

HOUR = 1_764_400_000 // 3600 * 3600
KEY_A = "a" * 32
KEY_B = "b" * 32


def _entry(key: str, hour: int, requests: int, tokens: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "hour": hour,
        "requests": requests,
        "errors": 0,
        "blocked": 0,
        "bytes_in": 100 * requests,
        "bytes_out": 1000 * requests,
        "streams": requests,
        "ttfb_seconds_sum": 0.05 * requests,
        "ttfb_count": requests,
        "duration_seconds_sum": 1.5 * requests,
        "prompt_tokens": tokens // 2,
        "completion_tokens": tokens - tokens // 2,
        "total_tokens": tokens,
        **extra,
    }


def _record(app: Flask, node: str, batch: str, entries: list[dict[str, Any]]) -> None:
    with app.app_context():
        services().usage.record(node, batch, entries)


def test_a_batch_sent_again_is_counted_once(app: Flask, viewer: Caller) -> None:
    batch = [_entry(KEY_A, HOUR, 3, 30), _entry(KEY_A, HOUR + 3600, 2, 20)]
    for _ in range(3):  # a retry after a lost answer, then one after a restart
        _record(app, "node-1", "boot1-1", batch)
    _record(app, "node-1", "boot1-2", [_entry(KEY_A, HOUR, 1, 10)])
    _record(app, "node-2", "boot9-1", [_entry(KEY_A, HOUR, 4, 40), _entry(KEY_B, HOUR, 5)])

    answer = viewer.get("/api/v1/usage", query_string={"key": KEY_A, "group": "key"})
    assert answer.status_code == 200, answer.json
    (row,) = answer.json["items"]
    assert row["requests"] == 10 and row["total_tokens"] == 100
    assert row["bytes_in"] == 1000 and row["bytes_out"] == 10000
    assert row["ttfb_ms_avg"] == pytest.approx(50.0) and row["duration_ms_avg"] == 1500.0

    per_node_hour = viewer.get(
        "/api/v1/usage", query_string={"key": KEY_A, "group": "node,hour"}
    ).json["items"]
    assert [(r["node_id"], r["hour"], r["requests"]) for r in per_node_hour] == [
        ("node-1", HOUR, 4), ("node-2", HOUR, 4), ("node-1", HOUR + 3600, 2),
    ]  # fmt: skip
    # from/to select hours: ISO 8601 or epoch seconds
    second_hour = viewer.get(
        "/api/v1/usage", query_string={"from": str(HOUR + 1), "group": "key"}
    ).json
    assert second_hour["totals"]["requests"] == 2
    to = datetime.fromtimestamp(HOUR + 3600, UTC).isoformat().replace("+00:00", "Z")
    iso = viewer.get(
        "/api/v1/usage", query_string={"to": to, "node_id": "node-2", "group": "key"}
    ).json
    assert {r["key"]: r["requests"] for r in iso["items"]} == {KEY_A: 4, KEY_B: 5}


def test_csv_export_has_the_json_columns(app: Flask, viewer: Caller) -> None:
    _record(app, "node-1", "b-1", [_entry(KEY_A, HOUR, 2, 8), _entry(KEY_B, HOUR, 1)])
    by_query = viewer.get("/api/v1/usage", query_string={"format": "csv", "group": "key"})
    by_accept = viewer.get(
        "/api/v1/usage", query_string={"group": "key"}, headers={"Accept": "text/csv"}
    )
    assert by_query.status_code == 200 and by_query.mimetype == "text/csv"
    assert by_accept.data == by_query.data
    rows = list(csv.DictReader(io.StringIO(by_query.data.decode())))
    assert [(r["key"], r["requests"], r["total_tokens"], r["node_id"]) for r in rows] == [
        (KEY_A, "2", "8", ""), (KEY_B, "1", "0", ""),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"group": "key,region"}, "query.group"),
        ({"from": "yesterday"}, "query.from"),
        ({"key": "sk-live-123"}, "query.key"),
        ({"format": "xml"}, "query.format"),
    ],
)
def test_bad_filters_are_named(viewer: Caller, query: dict[str, str], field: str) -> None:
    answer = viewer.get("/api/v1/usage", query_string=query)
    assert answer.status_code == 400
    assert field in answer.json["message"] or answer.json.get("field") == field, answer.json


def test_quotas_mark_keys_over_their_limit(app: Flask, operator: Caller, viewer: Caller) -> None:
    import time

    now = time.time()
    this_hour = period_start("hour", now)
    _record(app, "node-1", "q-1", [_entry(KEY_A, this_hour, 5, 50), _entry(KEY_B, this_hour, 1)])
    _record(app, "node-2", "q-1", [_entry(KEY_A, this_hour - 86400 * 40, 99)])  # old: ignored

    put = operator.call(
        "PUT", f"/api/v1/usage/quotas/{KEY_A}", json={"period": "day", "requests": 5}
    )
    assert put.status_code == 200, put.json
    assert put.json["requests"] == 5 and put.json["tokens"] is None
    operator.call("PUT", f"/api/v1/usage/quotas/{KEY_B}", json={"period": "month", "tokens": 10})
    with app.app_context():
        assert services().usage.over_quota(now) == (KEY_A,)
    # viewers read quotas but may not set them; a token is not a key
    assert viewer.get("/api/v1/usage/quotas").json["count"] == 2
    assert (
        viewer.call("PUT", f"/api/v1/usage/quotas/{KEY_A}", json={"period": "day"}).status_code
        == 403
    )
    bad = operator.call(
        "PUT", "/api/v1/usage/quotas/sk-live-abc", json={"period": "day", "requests": 1}
    )
    assert bad.status_code == 400
    none = operator.call("PUT", f"/api/v1/usage/quotas/{KEY_A}", json={"period": "day"})
    assert none.status_code == 400 and "at least one" in none.json["message"]

    raised = operator.call(
        "PUT", f"/api/v1/usage/quotas/{KEY_A}", json={"period": "day", "requests": 6}
    )
    assert raised.status_code == 200
    with app.app_context():
        assert services().usage.over_quota(now) == ()
    assert operator.call("DELETE", f"/api/v1/usage/quotas/{KEY_A}").status_code == 204
    assert operator.call("DELETE", f"/api/v1/usage/quotas/{KEY_A}").status_code == 404


def test_malformed_batches_store_nothing(app: Flask, viewer: Caller) -> None:
    from master_api.errors import BadRequest

    bad_batches = [
        [_entry(KEY_A, HOUR + 5, 1)],  # not an hour's start
        [_entry(KEY_A, HOUR, -1)],
        [_entry("", HOUR, 1)],
        [_entry(KEY_A, HOUR, 1), _entry(KEY_B, HOUR, 1, ttfb_seconds_sum=float("nan"))],
    ]
    for entries in bad_batches:
        with pytest.raises(BadRequest):
            _record(app, "node-1", "bad-1", entries)
    assert viewer.get("/api/v1/usage").json["count"] == 0


# --- through the AgentService -----------------------------------------------------------------


@pytest.fixture
def agents(app: Flask, settings: Any) -> Iterator[Any]:
    from tests.master.test_agent_service import serve_agents

    server = serve_agents(app, settings)
    yield server
    server.stop(grace=0.5)


async def test_heartbeats_store_a_batch_once_and_carry_the_over_quota_keys(
    app: Flask, agents: Any, operator: Caller, viewer: Caller
) -> None:
    import time

    import grpc.aio

    from relay.agent.rpc import auth_metadata, channel_options, make_stub, pb
    from tests.master.conftest import register

    node = register(operator, "edge-usage", "edge", "hk")
    metadata = auth_metadata(node["id"], node["token"])
    hour = period_start("hour", time.time())
    batch = pb.UsageBatch(
        batch_id="boot-1",
        entries=[pb.KeyUsage(key=KEY_A, hour=hour, requests=3, bytes_in=30, total_tokens=9)],
    )
    quota = {"period": "hour", "requests": 3}
    assert operator.call("PUT", f"/api/v1/usage/quotas/{KEY_A}", json=quota).status_code == 200
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{agents.port}", options=channel_options()
    ) as channel:
        stub = make_stub(channel)
        for _ in range(2):  # the second is the agent's retry: it never heard the first answer
            beat = await stub.Heartbeat(
                pb.HeartbeatRequest(usage=batch), metadata=metadata, timeout=5
            )
            assert beat.usage_acked == "boot-1" and beat.quotas_known
        bad = pb.UsageBatch(batch_id="boot-2", entries=[pb.KeyUsage(key=KEY_B, hour=hour + 7)])
        beat = await stub.Heartbeat(pb.HeartbeatRequest(usage=bad), metadata=metadata, timeout=5)
        assert beat.usage_acked == "boot-2"  # dropped, so that later batches still flow
        await asyncio.sleep(1.1)  # the over-quota list is reused for a heartbeat interval
        beat = await stub.Heartbeat(pb.HeartbeatRequest(), metadata=metadata, timeout=5)
        assert list(beat.over_quota_keys) == [KEY_A] and beat.usage_acked == ""
    rows = viewer.get("/api/v1/usage", query_string={"group": "key,node"}).json["items"]
    assert [(r["key"], r["node_id"], r["requests"], r["total_tokens"]) for r in rows] == [
        (KEY_A, node["id"], 3, 9)
    ]
