"""The leader's monitor: missed heartbeats -> offline + NodeOffline; reported metrics over the
seed §8.2 thresholds -> HighLatency / HighErrorRate / ConnectionExhaustion (node degraded);
recovery resolves them; the optional webhook is notified."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from master_api.extensions import repos, settings
from master_api.services.monitor import Monitor
from master_api.services.notify import WebhookNotifier
from tests.master.conftest import Caller, register
from tests.master.helpers import wait_until


def _beat(client: FlaskClient, node: dict[str, Any], **metrics: Any) -> None:
    answer = client.post(
        f"/api/v1/nodes/{node['id']}/heartbeat",
        json={"metrics": metrics},
        headers={"Authorization": f"Bearer {node['token']}"},
    )
    assert answer.status_code == 200, answer.json


def _monitor(app: Flask, notifier: Any = None) -> Monitor:
    with app.app_context():
        return Monitor(repos(), settings(), notifier)


def _alerts(caller: Caller, status: str) -> list[tuple[str, str]]:
    items = caller.get(f"/api/v1/alerts?status={status}").json["items"]
    return sorted((a["name"], a["node_name"]) for a in items)


def _status(caller: Caller, node: dict[str, Any]) -> str:
    return str(caller.get(f"/api/v1/nodes/{node['id']}").json["status"])


def test_missed_heartbeats_take_a_node_offline_and_back(
    app: Flask, client: FlaskClient, operator: Caller
) -> None:
    node = register(operator, "edge-1", "edge", "hk")
    silent = register(operator, "edge-2", "edge", "hk")  # never heartbeats: not judged
    _beat(client, node, connections=1)
    monitor = _monitor(app)
    offline_after = 3.0  # heartbeat_interval 1s x 3 missed beats in the test settings
    assert monitor.run_once(time.time() + offline_after / 2).went_offline == ()
    report = monitor.run_once(time.time() + offline_after + 1)
    assert report.went_offline == (node["id"],)
    assert _status(operator, node) == "offline"
    assert _status(operator, silent) == "online"
    assert _alerts(operator, "active") == [("NodeOffline", "edge-1")]
    # Another pass does not duplicate the alert.
    monitor.run_once(time.time() + offline_after + 2)
    assert _alerts(operator, "active") == [("NodeOffline", "edge-1")]

    _beat(client, node, connections=1)
    assert _status(operator, node) == "online"
    report = monitor.run_once()
    assert report.resolved == (f"NodeOffline/{node['id']}",)
    assert _alerts(operator, "active") == []
    assert _alerts(operator, "resolved") == [("NodeOffline", "edge-1")]


def test_metric_alerts_use_the_default_thresholds(
    app: Flask, client: FlaskClient, operator: Caller
) -> None:
    node = register(operator, "core-1", "core", "cn")
    fine = register(operator, "core-2", "core", "cn")
    _beat(client, fine, p99_latency_ms=99.0, error_rate=0.01, connections=90, max_connections=100)
    _beat(client, node, p99_latency_ms=150.0, error_rate=0.02, connections=95, max_connections=100)
    monitor = _monitor(app)
    report = monitor.run_once()
    assert sorted(report.fired) == sorted(
        f"{name}/{node['id']}" for name in ("HighLatency", "HighErrorRate", "ConnectionExhaustion")
    )
    assert _status(operator, node) == "degraded"
    assert _status(operator, fine) == "online"
    alerts = operator.get("/api/v1/alerts?status=active&name=HighLatency").json["items"]
    assert alerts[0]["value"] == 150.0 and alerts[0]["threshold"] == 100.0
    assert alerts[0]["severity"] == "warning"

    _beat(client, node, p99_latency_ms=20.0, error_rate=0.0, connections=5, max_connections=100)
    report = monitor.run_once()
    assert len(report.resolved) == 3
    assert _status(operator, node) == "online"
    assert _alerts(operator, "active") == []


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_is_notified(
    app: Flask, client: FlaskClient, operator: Caller, webhook: str
) -> None:
    notifier = WebhookNotifier(webhook, timeout=2.0)
    node = register(operator, "edge-1", "edge", "hk")
    _beat(client, node, error_rate=0.5)
    monitor = _monitor(app, notifier)
    monitor.run_once()
    _beat(client, node, error_rate=0.0)
    monitor.run_once()
    wait_until(lambda: len(_Hook.received) == 2, timeout=5)
    notifier.close()
    assert [(e["event"], e["alert"]["name"]) for e in _Hook.received] == [
        ("fired", "HighErrorRate"),
        ("resolved", "HighErrorRate"),
    ]
