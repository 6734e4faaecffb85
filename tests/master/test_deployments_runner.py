"""Deployments end to end through the real ansible-runner: the API queues, the leader's worker
claims and runs a tiny project's playbooks (tests.master.deployments_project) on
local-connection hosts, each with its own prefix; events stream live over real HTTP.

Covers: success (node versions recorded, Jinja in node variables stays literal, the private
data dir removed), a failing host with auto_rollback -> rolled_back, a failure without it ->
failed, and cancel of a long pause -> canceled."""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from flask import Flask

from master_api.extensions import repos
from master_api.jobs.processes import _alive, find_processes
from master_api.leader import DeploymentWorker
from master_api.settings import Settings
from tests.master.conftest import Caller, draft, register
from tests.master.deployments_project import deploy_settings, local_node
from tests.master.helpers import serve_in_thread, wait_until

_PLAYBOOK_BIN = shutil.which(
    "ansible-playbook",
    path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
)
# Without Ansible (a venv made by `make venv` only) these are skipped -- never in CI.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _PLAYBOOK_BIN is None and not os.environ.get("CI"),
        reason="ansible-playbook is not installed (the [ansible] extra: make venv-ansible)",
    ),
]

API = "/api/v1/deployments"
TERMINAL = ("successful", "failed", "canceled", "rolled_back", "interrupted")


@pytest.fixture
def settings(mongo_uri: str, tmp_path: Path) -> Settings:
    return deploy_settings(mongo_uri, tmp_path)


def _create(caller: Caller, **body: Any) -> dict[str, Any]:
    answer = caller.post(API, json=body)
    assert answer.status_code == 201, answer.json
    created: dict[str, Any] = answer.json
    return created


def _wait_end(caller: Caller, deployment_id: str, timeout: float = 90.0) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def ended() -> bool:
        state.update(caller.get(f"{API}/{deployment_id}").json)
        return state["status"] in TERMINAL

    wait_until(ended, timeout, interval=0.2)
    return state


def _events(caller: Caller, deployment_id: str) -> list[str]:
    text = caller.get(f"{API}/{deployment_id}/events?follow=false").text
    return [line[7:] for line in text.splitlines() if line.startswith("event: ")]


def _assert_no_leftovers(app: Flask) -> None:
    """No process of a stopped run survives it (Ansible's workers leave runner's process
    group; the job stops them)."""
    work = app.config["AICDN_SETTINGS"].deploy_work_dir
    alive = [pid for pid in find_processes(work) if _alive(pid)]
    assert alive == [], f"leftover processes: {alive}"


def read_sse(
    base: str, path: str, token: str, on_message: Callable[[dict[str, str]], None]
) -> list[dict[str, str]]:
    """Read an SSE stream over real HTTP until its ``end`` message; ``on_message`` sees each
    message as it arrives."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    connection.request(
        "GET", path, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    )
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    try:
        while True:
            raw = response.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(": ")
                current[key] = value
                continue
            if "event" in current:
                messages.append(current)
                on_message(current)
                if current["event"] == "end":
                    break
            current = {}
    finally:
        connection.close()
    return messages


def test_a_deploy_runs_streams_live_and_records_the_nodes(
    app: Flask,
    worker: DeploymentWorker,
    operator: Caller,
    viewer: Caller,
    tmp_path: Path,
) -> None:
    edge = local_node(operator, tmp_path, "edge-1", aicdn_note="{{ 6 * 7 }}", aicdn_sleep="2")
    # pause runs once per batch, with the first host's variables: both ask for it.
    core = local_node(operator, tmp_path, "core-1", "core", "cn", aicdn_sleep="2")
    # The edge gets the version the deployment names (a draft); the core the one active for it.
    version = draft(operator, "edge")["version_id"]
    core_version = draft(operator, "core")["version_id"]
    assert operator.post(f"/api/v1/configs/{core_version}/publish").status_code == 200
    started = time.monotonic()
    created = _create(operator, playbook="deploy", release="1.4.0", config_version=version)
    assert {t["name"] for t in created["targets"]} == {"edge-1", "core-1"}

    seen_while_running: list[str] = []

    def check_live(message: dict[str, str]) -> None:
        # A playbook event while the deployment is still running: the stream is live.
        if message["event"].startswith(("playbook_on_", "runner_on_")):
            status = viewer.get(f"{API}/{created['id']}").json["status"]
            if status == "running":
                seen_while_running.append(message["event"])

    with serve_in_thread(app) as base:
        messages = read_sse(base, f"{API}/{created['id']}/events", viewer.token, check_live)
    took = time.monotonic() - started

    assert seen_while_running, "no event arrived while the run was in progress"
    assert messages[-1]["event"] == "end" and '"status":"successful"' in messages[-1]["data"]
    counters = [int(m["id"]) for m in messages if "id" in m]
    assert counters == list(range(1, len(counters) + 1))
    names = [m["event"] for m in messages]
    for expected in ("deployment_started", "runner_on_ok", "playbook_on_stats"):
        assert expected in names
    assert names[-2] == "deployment_finished"

    got = viewer.get(f"{API}/{created['id']}").json
    assert got["status"] == "successful" and got["error"] is None, got
    assert got["owner"] == worker.dispatcher.member_id
    hosts = {h["host"]: h for h in got["result"]["hosts"]}
    assert set(hosts) == {"edge-1", "core-1"}
    assert all(h["status"] == "ok" and h["changed"] >= 2 for h in hosts.values())
    assert hosts["edge-1"]["node_id"] == edge["id"]
    assert set(got["result"]["touched"]) == {"edge-1", "core-1"}

    # The playbook ran with the deployment's variables; node variables were not templated.
    assert (edge["prefix"] / "release").read_text() == "1.4.0 {{ 6 * 7 }}\n"
    assert (edge["prefix"] / "done").read_text().strip() == str(version)
    assert (core["prefix"] / "done").read_text().strip() == str(core_version)
    # Each host got its config rendered by the master with the fleet as peers, exactly what
    # the master serves for the node.
    served = operator.get(f"/api/v1/nodes/{core['id']}/config")  # viewers see secrets redacted
    assert (core["prefix"] / "relay.yaml").read_text() == served.text
    edge_config = yaml.safe_load((edge["prefix"] / "relay.yaml").read_text())
    assert edge_config["version"] == version
    hop = edge_config["chains"][0]["hops"][0]
    assert [n["name"] for n in hop["nodes"]] == ["core-1"]
    for node, expected in ((edge, version), (core, core_version)):
        stored = viewer.get(f"/api/v1/nodes/{node['id']}").json
        assert stored["release"] == "1.4.0" and stored["applied_version"] == expected
    assert list(Path(app.config["AICDN_SETTINGS"].deploy_work_dir).iterdir()) == []
    assert repos(app).deployment_locks.held([edge["id"], core["id"]]) == []
    print(f"deploy of 2 hosts with a 2 s pause: {took:.1f}s")


def test_a_failed_host_with_auto_rollback_ends_rolled_back(
    worker: DeploymentWorker, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    nodes = [
        local_node(operator, tmp_path, "n1"),
        local_node(operator, tmp_path, "n2", aicdn_fail="true"),
        local_node(operator, tmp_path, "n3", "core", "cn"),
    ]
    created = _create(
        operator,
        playbook="deploy",
        release="2.0.0",
        auto_rollback=True,
        selector={"nodes": ["n1", "n2", "n3"]},
    )
    got = _wait_end(viewer, created["id"])
    assert got["status"] == "rolled_back", got
    assert got["result"]["status"] == "failed"
    failed = {h["host"] for h in got["result"]["hosts"] if h["status"] == "failed"}
    assert failed == {"n2"}
    assert got["rollback"]["status"] == "successful"
    assert set(got["rollback"]["touched"]) == {"n1", "n2", "n3"}
    assert "n2" in got["error"]
    for node in nodes:
        assert (node["prefix"] / "rolled_back").read_text() == f"{created['id']} previous\n"
        assert viewer.get(f"/api/v1/nodes/{node['id']}").json["release"] is None
    events = _events(viewer, created["id"])
    assert events.index("rollback_started") < events.index("deployment_finished")


def test_a_failed_deploy_without_auto_rollback_ends_failed(
    worker: DeploymentWorker, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    node = local_node(operator, tmp_path, "n1", aicdn_fail="yes")
    created = _create(operator, playbook="deploy", release="3.0.0", selector={"nodes": ["n1"]})
    got = _wait_end(viewer, created["id"])
    assert got["status"] == "failed" and got["rollback"] is None, got
    assert got["result"]["rc"] not in (0, None)
    assert "failed on n1" in got["error"]
    assert not (node["prefix"] / "rolled_back").exists()
    assert viewer.get(f"/api/v1/nodes/{node['id']}").json["release"] is None


def test_cancel_stops_a_long_running_play(
    app: Flask, worker: DeploymentWorker, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    node = local_node(operator, tmp_path, "slow", aicdn_sleep="60")
    created = _create(operator, playbook="deploy", release="4.0.0", selector={"nodes": ["slow"]})

    def pausing() -> bool:
        text = viewer.get(f"{API}/{created['id']}/events?follow=false").text
        return "Wait when told to" in text

    wait_until(pausing, 60.0, interval=0.2)
    asked = time.monotonic()
    answer = operator.post(f"{API}/{created['id']}/cancel")
    assert answer.status_code == 202 and answer.json["cancel_requested"], answer.json
    got = _wait_end(viewer, created["id"], timeout=30.0)
    took = time.monotonic() - asked
    assert got["status"] == "canceled", got
    assert got["canceled_by"] == "operator" and got["result"]["status"] == "canceled"
    assert took < 20.0, f"cancel took {took:.1f}s"
    assert not (node["prefix"] / "done").exists()
    assert operator.post(f"{API}/{created['id']}/cancel").status_code == 409
    assert repos(app).deployment_locks.held([node["id"]]) == []
    assert "runner_status" in _events(viewer, created["id"])
    _assert_no_leftovers(app)
    print(f"cancel took effect in {took:.1f}s")


def test_stopping_the_master_interrupts_a_running_play(
    app: Flask, worker: DeploymentWorker, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    node = local_node(operator, tmp_path, "slow", aicdn_sleep="60")
    created = _create(operator, playbook="deploy", selector={"nodes": ["slow"]})
    wait_until(lambda: created["id"] in worker.running, 30.0, interval=0.1)
    wait_until(
        lambda: "pause" in viewer.get(f"{API}/{created['id']}/events?follow=false").text,
        60.0,
        interval=0.2,
    )
    worker.stop(timeout=30.0)  # what SIGTERM does to a master
    got = viewer.get(f"{API}/{created['id']}").json
    assert got["status"] == "interrupted", got
    assert "shut down" in got["error"]
    assert repos(app).deployment_locks.held([node["id"]]) == []
    _assert_no_leftovers(app)


def test_a_reload_records_the_config_version(
    worker: DeploymentWorker, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    node = local_node(operator, tmp_path, "n1")
    version = draft(operator, "edge")["version_id"]
    body = {"playbook": "reload", "config_version": version, "selector": {"nodes": ["n1"]}}

    # No core to chain to: the master cannot render the edge's config, so nothing runs.
    refused = _wait_end(viewer, _create(operator, **body)["id"])
    assert refused["status"] == "failed", refused
    assert "n1" in refused["error"] and "no online core node" in refused["error"], refused
    assert not (node["prefix"] / "config").exists()

    register(operator, "core-x", "core", "cn")  # a peer, not a target of the reload
    got = _wait_end(viewer, _create(operator, **body)["id"])
    assert got["status"] == "successful", got
    assert (node["prefix"] / "config").read_text().strip() == str(version)
    stored = viewer.get(f"/api/v1/nodes/{node['id']}").json
    assert stored["applied_version"] == version and stored["release"] is None
