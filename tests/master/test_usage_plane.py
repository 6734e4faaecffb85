"""Usage accounting end to end (issue 12): real master, relay and agent processes on loopback,
the embedded store. Clients stream chat completions through the edge with their API tokens;
the master's ``GET /api/v1/usage`` must show exactly what they sent and got, across an agent
restart and a master restart; a quota set on the master makes the edge refuse that key; the
``logs`` command returns the access log's tail. Heartbeats every 0.5 s."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers import chat, request
from tests.master.agent_processes import AgentProcess, MasterProcess, RelayUnderAgent
from tests.master.conftest import Caller, register
from tests.master.helpers import http
from tests.master.test_agent_plane import eventually, login
from tests.processes import edge_and_core_config, port

TOKENS = {"alice": "sk-alice-7f3c2a", "bob": "sk-bob-99e1d0"}
KEYS = {name: hashlib.sha256(t.encode()).hexdigest()[:32] for name, t in TOKENS.items()}


@pytest.fixture
def master(app: Flask, mongo_uri: str, tmp_path: Path) -> Iterator[MasterProcess]:
    process = MasterProcess(mongo_uri, tmp_path)
    yield process
    process.stop()


class Edge:
    """An edge relay (with an access log) and its agent, registered on the master."""

    def __init__(self, master: MasterProcess, operator: Caller, origin: int, directory: Path):
        config = edge_and_core_config(origin)
        config["accessLog"] = {"file": "access.log"}
        self.relay = RelayUnderAgent(config, directory)
        self.port = port(self.relay.config, "edge")
        node = register(operator, "edge-usage", "edge", "hk")
        self.node_id: str = node["id"]
        self.args = (directory, [master.grpc_addr], self.node_id, node["token"], self.relay)
        self.agent = AgentProcess(*self.args)
        #: What the clients sent and received, per key: the expected usage.
        self.expected: dict[str, dict[str, int]] = {
            key: dict.fromkeys(("requests", "bytes_in", "bytes_out", "total_tokens"), 0)
            for key in KEYS.values()
        }

    def restart_agent(self) -> None:
        assert "Traceback" not in self.agent.stop()
        self.agent = AgentProcess(*self.args)

    async def stream(self, who: str, tokens: int) -> int:
        """One streamed completion as ``who``; returns the status."""
        body = chat(tokens, 1, stream_options={"include_usage": True})
        auth = {"authorization": f"Bearer {TOKENS[who]}"}
        answer = await request(self.port, "POST", "/v1/chat/completions", body, auth)
        if answer.status == 200:
            assert answer.complete
            usage = answer.events[-2][1]["usage"]
            counts = self.expected[KEYS[who]]
            counts["requests"] += 1
            counts["bytes_in"] += len(json.dumps(body))
            counts["bytes_out"] += len(answer.body)
            counts["total_tokens"] += usage["total_tokens"]
        return answer.status

    def stop(self) -> tuple[str, str]:
        return self.agent.stop(), self.relay.stop()


@pytest.fixture
def edge(
    master: MasterProcess, operator: Caller, origin_process: int, tmp_path: Path
) -> Iterator[Edge]:
    one = Edge(master, operator, origin_process, tmp_path / "node")
    yield one
    agent_log, relay_log = one.stop()
    assert "Traceback" not in agent_log, agent_log[-3000:]
    assert "Traceback" not in relay_log, relay_log[-3000:]


def _usage(master: MasterProcess, token: str) -> dict[str, dict[str, Any]]:
    answer = http("GET", f"{master.url}/api/v1/usage?group=key", token=token)
    assert answer.status == 200, answer.body
    return {row["key"]: row for row in answer.json()["items"]}


async def _matches(master: MasterProcess, token: str, edge: Edge, timeout: float = 15) -> None:
    """Wait until the master's sums equal what the clients saw, exactly."""

    def same() -> bool:
        rows = _usage(master, token)
        return all(
            {name: rows.get(key, {}).get(name, 0) for name in want} == want
            for key, want in edge.expected.items()
        )

    try:
        await eventually(same, timeout, "usage on the master")
    except AssertionError:
        raise AssertionError(f"master {_usage(master, token)} != clients {edge.expected}") from None


@pytest.mark.slow
async def test_usage_is_exact_across_agent_and_master_restarts(
    edge: Edge, master: MasterProcess
) -> None:
    token = login(master, "viewer")
    for i in range(4):
        assert await edge.stream("alice", 5 + i) == 200
    assert await edge.stream("bob", 3) == 200
    await _matches(master, token, edge)

    # the agent goes away while clients keep streaming; its successor carries the counts
    assert "Traceback" not in edge.agent.stop()
    for _ in range(3):
        assert await edge.stream("alice", 4) == 200
    edge.agent = AgentProcess(*edge.args)
    await _matches(master, token, edge)

    # the master goes away: the relay keeps what was counted until a master acknowledges it
    master.stop()
    for _ in range(2):
        assert await edge.stream("bob", 6) == 200
    await asyncio.sleep(1.5)  # heartbeats fail meanwhile; the batch stays pending
    master.start()
    await _matches(master, login(master, "viewer"), edge, timeout=30)
    rows = _usage(master, login(master, "viewer"))
    assert rows[KEYS["alice"]]["streams"] == 7 and rows[KEYS["alice"]]["errors"] == 0
    assert TOKENS["alice"] not in json.dumps(rows)


@pytest.mark.slow
async def test_a_quota_set_on_the_master_makes_the_edge_refuse_the_key(
    edge: Edge, master: MasterProcess
) -> None:
    for _ in range(3):
        assert await edge.stream("bob", 2) == 200
    token = login(master, "operator")
    await _matches(master, token, edge)
    put = http(
        "PUT",
        f"{master.url}/api/v1/usage/quotas/{KEYS['bob']}",
        {"period": "day", "requests": 3},
        token,
    )
    assert put.status == 200, put.body

    async def refused() -> bool:
        return await edge.stream("bob", 2) == 429

    for _ in range(100):  # the next heartbeats carry the key to the edge (0.5 s apart)
        if await refused():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("bob was never refused")
    assert await edge.stream("alice", 2) == 200
    # lifting the quota lets bob in again
    assert (
        http("DELETE", f"{master.url}/api/v1/usage/quotas/{KEYS['bob']}", token=token).status == 204
    )
    for _ in range(100):
        if await edge.stream("bob", 2) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("bob stayed refused")

    # the access log has every request, the refusals with their reason; the master fetches it
    url = f"{master.url}/api/v1/nodes/{edge.node_id}/commands"
    await eventually(
        lambda: http("POST", url, {"command": "status"}, token).status == 200, 5, "stream"
    )
    await asyncio.sleep(0.5)  # the log's writer flushes every 0.2 s
    logs = http("POST", url, {"command": "logs", "source": "access", "lines": 500}, token).json()
    assert logs["ok"] is True, logs
    lines = [json.loads(line) for line in logs["output"].splitlines()]
    bob = [line for line in lines if line["key"] == KEYS["bob"]]
    assert any(line["status"] == 429 and line["block"] == "quota" for line in bob)
    assert sum(line["status"] == 200 for line in bob) == edge.expected[KEYS["bob"]]["requests"]
    assert TOKENS["bob"] not in logs["output"]
