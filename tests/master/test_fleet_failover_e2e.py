"""Health failover with real processes: a master, two cores and an edge (relay + agent each),
heartbeats every 0.5 s. Kill a core (relay and agent): the edge's running config drops it and
new streams go through the other core; bring it back: it returns after the hold-down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from tests.conftest import AUTH, core_mapping
from tests.helpers import chat, request
from tests.master.agent_processes import AgentProcess, MasterProcess, RelayUnderAgent
from tests.master.conftest import Caller
from tests.master.test_agent_plane import eventually
from tests.processes import free_port

HEARTBEAT = 0.5
HOLD_DOWN = 3.0


@pytest.fixture
def master(app: Flask, mongo_uri: str, tmp_path: Path) -> Iterator[MasterProcess]:
    process = MasterProcess(
        mongo_uri,
        tmp_path,
        AICDN_HEARTBEAT_INTERVAL=str(HEARTBEAT),
        AICDN_OFFLINE_AFTER_MISSED="2",
        AICDN_FAILOVER_HOLD_DOWN=str(HOLD_DOWN),
        AICDN_FAILOVER_MIN_INTERVAL="1",
    )
    yield process
    process.stop()


class Core:
    """A core node: relay (tunnel server to the origin) and its agent; ``kill`` is a host
    failure (both SIGKILLed), ``start`` brings it back on the same port."""

    def __init__(self, name: str, master: MasterProcess, op: Caller, origin: int, root: Path):
        self.name = name
        self.master = master
        self.root = root
        self.port = free_port()
        self.config = core_mapping("tcp", origin)
        self.config["services"][0]["addr"] = f"127.0.0.1:{self.port}"
        answer = op.post(
            "/api/v1/nodes",
            json={"name": name, "type": "core", "region": "cn", "addr": "127.0.0.1",
                  "port": self.port},
        )  # fmt: skip
        assert answer.status_code == 201, answer.json
        self.node_id: str = answer.json["id"]
        self.token: str = answer.json["token"]
        self.runs = 0
        self.start()

    def start(self) -> None:
        self.runs += 1
        directory = self.root / f"{self.name}-{self.runs}"
        self.relay = RelayUnderAgent(self.config, directory)
        self.agent = AgentProcess(
            directory, [self.master.grpc_addr], self.node_id, self.token, self.relay
        )

    def kill(self) -> None:
        for proc in (self.agent.proc, self.relay.proc):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def connections(self) -> float:
        """Connections the core's tunnel service has accepted (its metrics)."""
        url = f"http://127.0.0.1:{self.relay.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("aicdn_connections_total{")
        )

    def stop(self) -> None:
        self.agent.stop()
        self.relay.stop()


def edge_config(entry: int) -> dict[str, Any]:
    """The edge's config version: an HTTP entry chained through a ``peers`` hop to the cores
    (fifo: core-1 first by name, unless the failover says otherwise)."""
    return {
        "services": [
            {
                "name": "entry",
                "addr": f"127.0.0.1:{entry}",
                "listener": {"type": "tcp"},
                "handler": {"type": "http", "chain": "to-core"},
            }
        ],
        "chains": [
            {
                "name": "to-core",
                "hops": [
                    {
                        "name": "core",
                        "selector": {"strategy": "fifo", "maxFails": 1, "failTimeout": "10s"},
                        "peers": {
                            "type": "core",
                            "connector": {"type": "relay", "auth": dict(AUTH)},
                            "dialer": {"type": "tcp"},
                        },
                    }
                ],
            }
        ],
    }


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def running_chain(relay: RelayUnderAgent) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.api}/config", timeout=5) as answer:
        config = json.loads(answer.read())
    return [node["name"] for node in config["chains"][0]["hops"][0]["nodes"]]


@pytest.mark.slow
async def test_a_killed_core_is_failed_over_and_returns_after_the_hold_down(
    master: MasterProcess, operator: Caller, origin_process: int, tmp_path: Path
) -> None:
    cores = [Core(f"core-{i}", master, operator, origin_process, tmp_path) for i in (1, 2)]
    entry = free_port()
    bootstrap = edge_config(entry)
    hop = bootstrap["chains"][0]["hops"][0]
    peers = hop.pop("peers")
    hop["nodes"] = [
        {"name": "bootstrap", "addr": f"127.0.0.1:{cores[1].port}",
         "connector": peers["connector"], "dialer": peers["dialer"]}
    ]  # fmt: skip
    edge_relay = RelayUnderAgent(bootstrap, tmp_path / "edge")
    answer = operator.post(
        "/api/v1/nodes",
        json={"name": "edge-1", "type": "edge", "region": "hk", "addr": "127.0.0.1",
              "port": entry},
    )  # fmt: skip
    assert answer.status_code == 201
    edge_agent = AgentProcess(
        tmp_path / "edge", [master.grpc_addr], answer.json["id"], answer.json["token"], edge_relay
    )
    try:
        config = edge_relay.with_endpoints(edge_config(entry))
        created = operator.post(
            "/api/v1/configs", json={"node_type": "edge", "config_data": yaml.safe_dump(config)}
        )
        assert created.status_code == 201, created.json
        v1 = created.json["version_id"]
        assert operator.post(f"/api/v1/configs/{v1}/publish").status_code == 200
        await eventually(
            lambda: running_chain(edge_relay) == ["core-1", "core-2"], 15, "first version"
        )
        before = cores[0].connections()
        first = await request(entry, "POST", "/v1/chat/completions", chat(3, 1))
        assert first.status == 200 and first.complete
        assert cores[0].connections() > before  # fifo: core-1 carries it

        # Kill core-1: its heartbeats stop; the failover takes it out of the edge's chain.
        cores[0].kill()
        killed_at = time.monotonic()
        await eventually(lambda: running_chain(edge_relay) == ["core-2"], 20, "failover")
        took = time.monotonic() - killed_at
        # Offline after 2 missed beats (1 s), a leader pass (0.5 s), one edge heartbeat and the
        # apply: ~3 s here. The bound is generous for a loaded machine.
        assert took < 12, f"failover took {took:.1f}s"
        print(f"failover: the edge ran without core-1 {took:.2f}s after the kill")
        via_core2 = cores[1].connections()
        for _ in range(3):
            answer_ = await request(entry, "POST", "/v1/chat/completions", chat(3, 1))
            assert answer_.status == 200 and answer_.complete
        assert cores[1].connections() > via_core2  # (tunnels are pooled: not one per request)

        history = operator.get("/api/v1/configs/history?node_type=edge").json["items"]
        failover_entry = next(h for h in history if h["action"] == "failover")
        assert failover_entry["to_version"] > v1 and failover_entry["actor"] == "failover"
        alerts = operator.get("/api/v1/alerts?status=active&name=NodeFailover").json["items"]
        assert [a["node_name"] for a in alerts] == ["core-1"]
        assert str(failover_entry["to_version"]) in alerts[0]["message"]

        # Bring it back: online at once, chained to again only after the hold-down.
        cores[0].start()

        def online() -> bool:
            node = operator.get(f"/api/v1/nodes/{cores[0].node_id}").json
            return bool(node["status"] == "online")

        await eventually(online, 15, "core-1 back online")
        online_at = time.monotonic()
        await eventually(lambda: running_chain(edge_relay) == ["core-1", "core-2"], 20, "return")
        back_after = time.monotonic() - online_at
        print(f"return: core-1 chained to again {back_after:.2f}s after it was back online")
        record = operator.get(f"/api/v1/nodes/{cores[0].node_id}").json["failover"]
        assert record["state"] == "in"
        held = _epoch(record["changed_at"]) - _epoch(record["healthy_since"])
        assert held >= HOLD_DOWN, record  # the master's own clock: healthy that long first
        assert back_after >= HOLD_DOWN - 1.0, f"returned after {back_after:.2f}s"
        before = cores[0].connections()
        again = await request(entry, "POST", "/v1/chat/completions", chat(3, 1))
        assert again.status == 200 and again.complete
        assert cores[0].connections() > before
        assert not operator.get("/api/v1/alerts?status=active&name=NodeFailover").json["items"]
    finally:
        edge_agent.stop()
        edge_relay.stop()
        for core in cores:
            core.stop()
    assert "Traceback" not in master.log(), master.log()[-3000:]
    await asyncio.sleep(0)
