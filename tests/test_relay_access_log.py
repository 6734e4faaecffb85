"""The JSON access log (issue 12): one line per request with what an operator needs, never the
token; rotation by size; a bounded rate under flood with the drops counted; the config's
errors; and ``aicdn-relay logs stats``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.access_log import AccessLog
from relay.config import ConfigError, config_from_mapping
from relay.config.model import AccessLogConfig
from relay.log_stats import summarise
from relay.server import RelayNode
from tests.conftest import StartNode, wait_for
from tests.helpers import chat, request
from tests.processes import RELAY

TOKEN = "sk-secret-access-log-token"
KEY = hashlib.sha256(TOKEN.encode()).hexdigest()[:32]


def _edge(origin: int, access_log: dict[str, Any], **service: Any) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "edge",
                "addr": "127.0.0.1:0",
                "listener": {"type": "tcp"},
                "handler": {"type": "http"},
                "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin}"}]},
                **service,
            }
        ],
        "accessLog": access_log,
        "metrics": {"addr": "127.0.0.1:0"},
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _flushed(node: RelayNode, path: Path, count: int) -> list[dict[str, Any]]:
    assert node.access_log is not None
    await wait_for(lambda: len(_lines(path)) >= count, 5)
    return _lines(path)


async def test_one_line_per_request_with_its_facts_and_never_the_token(
    start_node: StartNode, origin: int, tmp_path: Path
) -> None:
    path = tmp_path / "logs" / "access.log"
    node = await start_node(_edge(origin, {"file": str(path)}))
    port = node.bound_port("edge")
    auth = {"authorization": f"Bearer {TOKEN}", "x-request-id": "req-42"}
    body = chat(5, 1, ttfb_ms=30, stream_options={"include_usage": True})
    answer = await request(port, "POST", "/v1/chat/completions", body, auth)
    assert answer.status == 200
    missing = await request(port, "GET", "/no/such/path")
    (line, second) = await _flushed(node, path, 2)
    assert line["request_id"] == "req-42" and line["key"] == KEY and line["status"] == 200
    assert line["stream"] is True and line["tokens"] == 6 and line["upstream"] == "origin"
    # the origin waits 30 ms before its first byte (the loop clock has 1 ms steps)
    assert 28 <= line["ttfb_ms"] <= line["duration_ms"]
    assert line["bytes_out"] == len(answer.body) and line["block"] == ""
    assert second["status"] == missing.status and second["key"] == "-"
    assert TOKEN not in path.read_text()


async def test_refusals_name_their_reason(
    start_node: StartNode, origin: int, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    mapping = _edge(origin, {"file": str(path)}, rlimiter="one")
    mapping["rlimiters"] = [{"name": "one", "limits": ["$ 1"]}]
    node = await start_node(mapping)
    port = node.bound_port("edge")
    statuses = [(await request(port, "GET", "/v1/models")).status for _ in range(3)]
    assert statuses.count(429) >= 1
    lines = await _flushed(node, path, 3)
    assert {line["block"] for line in lines if line["status"] == 429} == {"rlimiter"}


def test_the_file_rotates_by_size_and_keeps_max_backups(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(str(path), max_size=4096, max_backups=2, rate_per_second=10**6))
    try:
        for batch in range(6):
            for i in range(40):
                assert log.write({"status": 200, "batch": batch, "i": i, "pad": "x" * 40})
            log._flush()  # what the writer thread does every FLUSH_INTERVAL
    finally:
        log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["access.log", "access.log.1", "access.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4096
    newest = _lines(path)
    assert newest[-1] == {"status": 200, "batch": 5, "i": 39, "pad": "x" * 40}
    assert log.written == 240 and log.dropped == 0


async def test_a_flood_is_cut_to_the_rate_and_the_drops_are_counted(
    start_node: StartNode, origin: int, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    node = await start_node(_edge(origin, {"file": str(path), "ratePerSecond": 5}))
    port = node.bound_port("edge")
    for _ in range(40):
        assert (await request(port, "GET", "/v1/models")).status == 200
    assert node.access_log is not None
    log = node.access_log
    await wait_for(lambda: log.written + log.dropped == 40 and not log._pending, 5)
    # burst of 5 plus 5 per second elapsed: 40 requests on loopback take well under 5 s
    assert log.dropped >= 10 and log.written == len(_lines(path)) < 30
    metrics = node.metrics.exposition().decode()
    assert f"aicdn_access_log_dropped_total {float(log.dropped)}" in metrics


@pytest.mark.parametrize(
    ("access_log", "message"),
    [
        ({"maxSize": "10MB"}, "accessLog.file: required"),
        ({"file": "a.log", "maxSize": "ten"}, "accessLog.maxSize: expected a size like"),
        ({"file": "a.log", "maxSize": 100}, "accessLog.maxSize: must be at least 4096"),
        ({"file": "a.log", "ratePerSecond": 0}, "accessLog.ratePerSecond: must be at least 1"),
        ({"file": "a.log", "maxBackup": 3}, "accessLog.maxBackup: unknown key"),
        ("access.log", "accessLog: expected a mapping"),
    ],
)
def test_bad_access_log_settings_are_named(access_log: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(_edge(9, access_log))  # type: ignore[arg-type]
    assert any(message in str(issue) for issue in caught.value.issues), caught.value.issues


def test_logs_stats_summarises_keys_errors_and_ttfb(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rows = [
        {"key": "a" * 32, "status": 200, "ttfb_ms": float(i), "tokens": 10} for i in range(1, 101)
    ]
    rows += [{"key": "b" * 32, "status": 502, "ttfb_ms": None}] * 4
    rows += [{"key": "b" * 32, "status": 429, "ttfb_ms": None, "block": "quota"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    stats = summarise(path.read_bytes().splitlines())
    assert stats.malformed == 1 and stats.requests == 105
    out = subprocess.run(
        [*RELAY, "logs", "stats", str(path), "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    assert report["ttfb_ms"] == {"count": 100, "p50": 50.0, "p99": 99.0}
    assert report["statuses"] == {"2xx": 100, "4xx": 1, "5xx": 4}
    assert report["blocked"] == {"quota": 1}
    top = report["top_keys"]
    assert top[0] == {"key": "a" * 32, "requests": 100, "error_rate": 0.0, "blocked": 0,
                      "tokens": 1000, "bytes_out": 0}  # fmt: skip
    assert top[1]["key"] == "b" * 32 and top[1]["error_rate"] == 0.8
    text = subprocess.run(
        [*RELAY, "logs", "stats", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "p50 50.0 ms, p99 99.0 ms" in text and "a" * 32 in text
    missing = subprocess.run(
        [*RELAY, "logs", "stats", str(tmp_path / "nope.log")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "cannot read" in missing.stderr


async def test_the_agent_logs_command_tails_the_access_log_of_every_worker(
    tmp_path: Path,
) -> None:
    import asyncio

    import yaml

    from relay.agent.commands import CommandRunner
    from relay.agent.config import AgentConfig
    from relay.config import Address

    relay_yaml = tmp_path / "relay.yaml"
    mapping = _edge(9, {"file": "access.log"})
    relay_yaml.write_text(yaml.safe_dump(mapping))
    config = AgentConfig(
        masters=(Address("127.0.0.1", 1),), node_id="n", token="t",
        relay_config=str(relay_yaml), service_manager="none",
    )  # fmt: skip

    def runner() -> CommandRunner:
        return CommandRunner(config, lambda: None, lambda: {}, asyncio.Lock())  # type: ignore[arg-type,return-value]

    (tmp_path / "access.log").write_text(
        "".join(json.dumps({"ts": t, "status": 200}) + "\n" for t in range(10))
    )
    one = await runner().run("logs", {"source": "access", "lines": "3"})
    assert one.ok and [json.loads(x)["ts"] for x in one.output.splitlines()] == [7, 8, 9]

    mapping["workers"] = 2
    relay_yaml.write_text(yaml.safe_dump(mapping))
    for worker, stamps in ((0, (1, 4, 5)), (1, (2, 3, 6))):
        (tmp_path / f"access-worker-{worker}.log").write_text(
            "".join(json.dumps({"ts": t}) + "\n" for t in stamps)
        )
    merged = await runner().run("logs", {"source": "access", "lines": "4"})
    assert merged.ok and [json.loads(x)["ts"] for x in merged.output.splitlines()] == [3, 4, 5, 6]
    wrong = await runner().run("logs", {"source": "nginx"})
    assert not wrong.ok and "source" in wrong.error
