"""The agent plane end to end: a real master (``aicdn-master serve``), relay and agent processes
on loopback, on the test database. Heartbeats every 0.5 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from tests.conftest import core_mapping
from tests.helpers import chat, request
from tests.master.agent_processes import AgentProcess, MasterProcess, RelayUnderAgent
from tests.master.conftest import PASSWORD, Caller, register
from tests.master.helpers import http
from tests.processes import edge_and_core_config, free_port, port

INTERVAL = 0.5
TOKENS = 60


@pytest.fixture
def master(app: Flask, mongo_uri: str, tmp_path: Path) -> Iterator[MasterProcess]:
    """A master process on the test database (``app`` made it fresh and drops it after)."""
    process = MasterProcess(mongo_uri, tmp_path)
    yield process
    process.stop()


def publish(caller: Caller, config: dict[str, Any]) -> int:
    answer = caller.post(
        "/api/v1/configs", json={"node_type": "edge", "config_data": yaml.safe_dump(config)}
    )
    assert answer.status_code == 201, answer.json
    version: int = answer.json["version_id"]
    published = caller.post(f"/api/v1/configs/{version}/publish")
    assert published.status_code == 200, published.json
    return version


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held (polled every 20 ms)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def with_core_b(config: dict[str, Any], origin: int) -> dict[str, Any]:
    """The next version: a second core service, and the edge's chain pointed at it."""
    core_b = core_mapping("tcp", origin)["services"][0]
    core_b["name"] = "core-b"
    core_b["addr"] = f"127.0.0.1:{free_port()}"
    changed = yaml.safe_load(yaml.safe_dump(config))
    changed["services"].append(core_b)
    changed["chains"][0]["hops"][0]["nodes"][0]["addr"] = core_b["addr"]
    return changed


class Fleet:
    """One edge node: its relay, its agent, and the node on the master."""

    def __init__(
        self,
        master: MasterProcess,
        operator: Caller,
        origin: int,
        directory: Path,
        masters: list[str] | None = None,
    ) -> None:
        self.operator = operator
        self.origin = origin
        self.config = edge_and_core_config(origin)
        self.relay = RelayUnderAgent(self.config, directory)
        self.config = self.relay.config  # with its api and metrics addresses
        node = register(operator, "edge-1", "edge", "hk")
        self.node_id: str = node["id"]
        self.token: str = node["token"]
        self.agent = AgentProcess(
            directory, masters or [master.grpc_addr], self.node_id, self.token, self.relay
        )

    def node(self) -> dict[str, Any]:
        answer = self.operator.get(f"/api/v1/nodes/{self.node_id}")
        assert answer.status_code == 200
        node: dict[str, Any] = answer.json
        return node

    def relay_version(self) -> int:
        return int(self.relay.health()["version"])

    async def publish_and_wait(self, config: dict[str, Any]) -> tuple[int, float]:
        """Publish ``config``; (its version, seconds until the relay ran it)."""
        version = publish(self.operator, config)
        took = await eventually(lambda: self.relay_version() == version, 10, "relay update")
        return version, took

    def stop(self) -> tuple[str, str]:
        return self.agent.stop(), self.relay.stop()


@pytest.fixture
def fleet(
    master: MasterProcess,
    operator: Caller,
    origin_process: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Fleet]:
    """One node; ``@pytest.mark.dead_master_first``: agent.yaml lists a master that is down
    before the real one (the agent must fail over)."""
    masters = [master.grpc_addr]
    if request.node.get_closest_marker("dead_master_first"):
        masters.insert(0, f"127.0.0.1:{free_port()}")
    one = Fleet(master, operator, origin_process, tmp_path / "node", masters)
    yield one
    agent_log, relay_log = one.stop()
    assert "Traceback" not in agent_log, agent_log[-3000:]
    assert "Traceback" not in relay_log, relay_log[-3000:]


def login(master: MasterProcess, name: str = "operator") -> str:
    answer = http(
        "POST", f"{master.url}/api/v1/auth/login", {"username": name, "password": PASSWORD}
    )
    assert answer.status == 200, answer.body
    token: str = answer.json()["access_token"]
    return token


@pytest.mark.slow
async def test_published_version_reaches_the_relay_within_two_heartbeats(
    fleet: Fleet, master: MasterProcess
) -> None:
    v1, _ = await fleet.publish_and_wait(fleet.config)
    edge = port(fleet.config, "edge")
    stream = asyncio.create_task(
        request(edge, "POST", "/v1/chat/completions", chat(TOKENS, 50), timeout=60)
    )
    await asyncio.sleep(0.5)  # the stream is under way through the first core

    v2, took = await fleet.publish_and_wait(with_core_b(fleet.config, fleet.origin))
    # Two heartbeat intervals, plus the apply itself (validate, write, reload, health check).
    assert took < 2 * INTERVAL + 1.0, f"took {took:.2f}s"

    response = await stream
    assert response.status == 200 and response.complete
    assert len(response.events) == TOKENS + 2  # tokens, the stop chunk, [DONE]
    after = await request(edge, "POST", "/v1/chat/completions", chat(3, 1))
    assert after.status == 200 and after.complete

    await eventually(lambda: fleet.node()["applied_version"] == v2, 5, "applied_version")
    node = fleet.node()
    assert node["desired_version"] == v2 and node["config_error"] is None
    assert node["agent"]["version"] and node["metrics"]["config_version"] == v2
    assert fleet.operator.get("/api/v1/nodes/drift").json == {"items": [], "count": 0}
    previous = yaml.safe_load(Path(f"{fleet.relay.path}.previous").read_text())
    assert previous["version"] == v1


@pytest.mark.slow
async def test_a_version_the_node_refuses_leaves_the_relay_untouched(fleet: Fleet) -> None:
    v1, _ = await fleet.publish_and_wait(fleet.config)
    running = fleet.relay.path.read_bytes()
    broken = yaml.safe_load(yaml.safe_dump(fleet.config))
    broken["services"].append(
        {
            "name": "edge-tls",
            "addr": f"127.0.0.1:{free_port()}",
            "listener": {
                "type": "tls",
                # Passes the master's checks (files are not looked for there), not the node's.
                "tls": {"certFile": "tls/missing.pem", "keyFile": "tls/missing.key"},
            },
            "handler": {"type": "http", "chain": "to-core"},
        }
    )
    v2 = publish(fleet.operator, broken)

    def reported() -> bool:
        error = fleet.node()["config_error"]
        return error is not None and error["version"] == v2

    await eventually(reported, 5, "the error on the master")
    error = fleet.node()["config_error"]
    assert error["outcome"] == "rejected"
    assert any("missing.pem" in issue["message"] for issue in error["issues"]), error
    assert fleet.relay_version() == v1
    assert fleet.relay.path.read_bytes() == running
    drift = fleet.operator.get("/api/v1/nodes/drift").json["items"]
    assert [(d["name"], d["state"], d["desired_version"], d["applied_version"]) for d in drift] == [
        ("edge-1", "failed", v2, v1)
    ]
    # The agent does not retry an unchanged failing version every heartbeat.
    await asyncio.sleep(4 * INTERVAL)
    assert fleet.agent.log().count(f"config version {v2} rejected") == 1


@pytest.mark.slow
@pytest.mark.dead_master_first
async def test_agents_carry_on_after_a_master_restart(fleet: Fleet, master: MasterProcess) -> None:
    await fleet.publish_and_wait(fleet.config)
    master.stop()
    await asyncio.sleep(3 * INTERVAL)  # heartbeats fail meanwhile; the agent backs off
    stopped_at = time.time()
    master.start()

    def seen_since() -> bool:
        node = fleet.node()
        return node["agent"] is not None and node["agent"]["registered_at"] > _iso(stopped_at)

    await eventually(seen_since, 10, "re-registration")
    _, took = await fleet.publish_and_wait(with_core_b(fleet.config, fleet.origin))
    assert took < 2 * INTERVAL + 1.0, f"took {took:.2f}s"
    token = login(master)
    url = f"{master.url}/api/v1/nodes/{fleet.node_id}/commands"
    await eventually(
        lambda: http("POST", url, {"command": "status"}, token).status == 200,
        5,
        "the command stream back",
    )


@pytest.mark.slow
async def test_status_and_logs_commands_round_trip(fleet: Fleet, master: MasterProcess) -> None:
    v1, _ = await fleet.publish_and_wait(fleet.config)
    token = login(master)
    url = f"{master.url}/api/v1/nodes/{fleet.node_id}/commands"
    await eventually(
        lambda: http("POST", url, {"command": "status"}, token).status == 200, 5, "stream"
    )

    status = http("POST", url, {"command": "status"}, token)
    assert status.status == 200, status.body
    answer = status.json()
    assert answer["ok"] is True and answer["command"] == "status"
    state = json.loads(answer["output"])
    assert state["relay"]["version"] == v1 and state["agent"]["applied_version"] == v1
    assert state["agent"]["master"] == master.grpc_addr

    logs = http("POST", url, {"command": "logs", "lines": 50}, token).json()
    assert logs["ok"] is True
    assert "config reloaded (version" in logs["output"]
    assert len(logs["output"].splitlines()) <= 50

    reload = http("POST", url, {"command": "reload"}, token).json()
    assert reload["ok"] is True and f'"version": {v1}' in reload["output"]
    restart = http("POST", url, {"command": "restart"}, token).json()
    assert restart["ok"] is False and "systemd" in restart["error"]
    # viewers may not run commands
    assert http("POST", url, {"command": "status"}, login(master, "viewer")).status == 403


def _iso(ts: float) -> str:
    from master_api.models import iso

    value = iso(ts)
    assert value is not None
    return value
