"""Health failover on the real store: an offline core is taken out of the edges' chains, a
degraded one moved to backup, both put back after the hold-down; hysteresis and the minimum
interval hold; every change is a history entry naming the version it produced, an audit entry
and an alert. (The process-level test is ``test_fleet_failover_e2e.py``.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from pymongo import MongoClient

from master_api import create_app
from master_api.extensions import StoreExtension, repos, services, settings
from master_api.services.failover import FailoverController
from master_api.services.monitor import Monitor
from tests.master.conftest import Caller, base_settings, draft, login, make_user, register

HOLD_DOWN = 30.0
MIN_INTERVAL = 10.0
OFFLINE_AFTER = 3.0  # heartbeat_interval 1s x 3 missed


@pytest.fixture
def fo_app(mongo_uri: str) -> Iterator[Flask]:
    values = base_settings(
        mongo_uri,
        failover_hold_down=HOLD_DOWN,
        failover_min_interval=MIN_INTERVAL,
        agent_snapshot_ttl=0.0,
    )
    MongoClient(mongo_uri).drop_database(values.mongo_db)
    app = create_app(values)
    yield app
    store = StoreExtension.get(app)[0]
    store.client.drop_database(values.mongo_db)
    store.close()


@pytest.fixture
def op(fo_app: Flask) -> Caller:
    make_user(fo_app, "op", "operator")
    return login(fo_app.test_client(), "op", "operator")


class World:
    """Two cores and an edge chaining to them (edge template: fifo, by name)."""

    def __init__(self, app: Flask, op: Caller) -> None:
        self.app = app
        self.op = op
        self.client: FlaskClient = app.test_client()
        self.core1 = register(op, "core-1", "core", "cn")
        self.core2 = register(op, "core-2", "core", "cn")
        self.edge = register(op, "edge-1", "edge", "hk")
        version = draft(op, "edge", params={"edge_password": "s3cret-pass", "listener": "tcp"})
        assert op.post(f"/api/v1/configs/{version['version_id']}/publish").status_code == 200
        self.v1: int = version["version_id"]
        with app.app_context():
            self.monitor = Monitor(repos(), settings())
            self.failover = FailoverController(
                repos(), settings(), services().configs, sleep=lambda _: None
            )
        for node in (self.core1, self.core2, self.edge):
            self.beat(node)

    def beat(self, node: dict[str, Any], **metrics: Any) -> None:
        answer = self.client.post(
            f"/api/v1/nodes/{node['id']}/heartbeat",
            json={"metrics": metrics},
            headers={"Authorization": f"Bearer {node['token']}"},
        )
        assert answer.status_code == 200, answer.json

    def chain(self) -> list[str]:
        """Core names in the edge's rendered chain, in preference order."""
        answer = self.op.get(f"/api/v1/nodes/{self.edge['id']}/config")
        assert answer.status_code == 200, answer.json
        config = yaml.safe_load(answer.data)
        return [n["name"] for n in config["chains"][0]["hops"][0]["nodes"]]

    def desired(self) -> int:
        return int(self.op.get(f"/api/v1/nodes/{self.edge['id']}").json["desired_version"])

    def node(self, node: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.op.get(f"/api/v1/nodes/{node['id']}").json
        return answer

    def history(self) -> list[tuple[str, int | None, str]]:
        items = self.op.get("/api/v1/configs/history?node_type=edge").json["items"]
        return [
            (h["action"], h["to_version"], h["actor"]) for h in items if h["action"] != "create"
        ]

    def active_alerts(self) -> list[tuple[str, str]]:
        items = self.op.get("/api/v1/alerts?status=active").json["items"]
        return sorted((a["name"], a["node_name"]) for a in items)


@pytest.fixture
def world(fo_app: Flask, op: Caller) -> World:
    return World(fo_app, op)


def test_an_offline_core_is_taken_out_and_returns_after_the_hold_down(world: World) -> None:
    assert world.chain() == ["core-1", "core-2"]
    now = time.time() + OFFLINE_AFTER + 1
    world.monitor.run_once(now)  # every node looks silent that far ahead ...
    world.beat(world.core2)  # ... but core-2 and the edge speak up before the failover pass
    world.beat(world.edge)
    assert world.node(world.core1)["status"] == "offline"

    changes = world.failover.run_once(now)
    assert [(c.node_name, c.from_state, c.to_state) for c in changes] == [("core-1", "in", "out")]
    (v2,) = changes[0].versions
    assert v2 > world.v1 and world.desired() == v2
    assert world.chain() == ["core-2"]
    assert world.history()[0] == ("failover", v2, "failover")
    assert ("NodeFailover", "core-1") in world.active_alerts()
    audit = world.op.get("/api/v1/audit?actor=failover")
    if audit.status_code == 403:  # the audit trail is admin-only
        make_user(world.app, "adm", "admin")
        admin = login(world.client, "adm", "admin")
        audit = admin.get("/api/v1/audit?actor=failover")
    entries = audit.json["items"]
    assert entries and f"version{'s'} {v2}" in entries[0]["target"]
    assert entries[0]["method"] == "FAILOVER"
    record = world.node(world.core1)["failover"]
    assert record["state"] == "out" and record["versions"] == [v2]
    assert world.failover.run_once(now + 1) == []  # no new version while nothing changes

    # It comes back: online at once, but the edges see it only after the hold-down.
    back = now + 5
    world.beat(world.core1)
    assert world.node(world.core1)["status"] == "online"
    assert world.failover.run_once(back) == []
    assert world.chain() == ["core-2"]
    assert world.failover.run_once(back + HOLD_DOWN - 1) == []
    assert world.chain() == ["core-2"] and world.desired() == v2
    changes = world.failover.run_once(back + HOLD_DOWN)
    assert [(c.node_name, c.to_state) for c in changes] == [("core-1", "in")]
    (v3,) = changes[0].versions
    assert world.desired() == v3 and world.chain() == ["core-1", "core-2"]
    assert world.history()[0] == ("failover", v3, "failover")
    assert ("NodeFailover", "core-1") not in world.active_alerts()


def test_a_degraded_core_moves_to_backup_with_hysteresis(world: World) -> None:
    # The monitor judges metrics at the real time; only the failover's clock jumps ahead.
    start = time.time()
    world.beat(world.core1, error_rate=0.2)  # HighErrorRate: threshold 1%
    world.monitor.run_once()
    assert world.node(world.core1)["status"] == "degraded"
    changes = world.failover.run_once(start)
    assert [(c.node_name, c.to_state) for c in changes] == [("core-1", "backup")]
    assert world.chain() == ["core-2", "core-1"]  # still there, but last

    # Under the alert threshold but above the recovery ratio (50% of it): the monitor clears
    # the alert, the failover does not count it as healthy.
    world.beat(world.core1, error_rate=0.008)
    world.monitor.run_once()
    assert world.node(world.core1)["status"] == "online"
    assert world.failover.run_once(start + 1) == []
    assert world.failover.run_once(start + 1 + HOLD_DOWN + 5) == []
    assert world.chain() == ["core-2", "core-1"]

    world.beat(world.core1, error_rate=0.001)
    healthy = start + HOLD_DOWN + 10
    assert world.failover.run_once(healthy) == []  # the hold-down starts now
    world.beat(world.core1, error_rate=0.02)  # a relapse restarts it
    world.monitor.run_once()
    assert world.failover.run_once(healthy + 1) == []
    world.beat(world.core1, error_rate=0.001)
    world.monitor.run_once()
    assert world.failover.run_once(healthy + 2) == []
    assert world.failover.run_once(healthy + 2 + HOLD_DOWN - 1) == []
    changes = world.failover.run_once(healthy + 2 + HOLD_DOWN)
    assert [(c.node_name, c.to_state) for c in changes] == [("core-1", "in")]
    assert world.chain() == ["core-1", "core-2"]
    (v_in,) = changes[0].versions

    # Degraded again right after returning: the minimum interval holds it in for a while.
    returned = healthy + 2 + HOLD_DOWN
    world.beat(world.core1, error_rate=0.2)
    world.monitor.run_once()
    assert world.failover.run_once(returned + 1) == []
    assert world.desired() == v_in  # nothing pushed
    changes = world.failover.run_once(returned + MIN_INTERVAL)
    assert [(c.node_name, c.to_state) for c in changes] == [("core-1", "backup")]


def test_the_failover_state_is_in_the_metrics(world: World) -> None:
    now = time.time() + OFFLINE_AFTER + 1
    world.monitor.run_once(now)  # both cores look silent that far ahead
    world.beat(world.core2)  # but core-2 speaks up before the failover pass
    world.failover.run_once(now)
    text = world.client.get("/api/v1/metrics").data.decode()
    assert 'aicdn_master_failover_nodes{state="out"} 1.0' in text
    assert 'aicdn_master_failover_nodes{state="backup"} 0.0' in text
