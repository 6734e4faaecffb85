"""The leader is killed (SIGKILL, no goodbye) while it runs a deployment (issue 10): another
master process takes the lead within the lease and the deployment ends ``interrupted``, its
nodes free again, never stuck ``running``. Two real ``aicdn-master serve`` processes, real
ansible-runner, a real play sleeping on a local-connection host."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from master_api.jobs.processes import find_processes
from master_api.settings import Settings
from tests.master.agent_processes import MasterProcess
from tests.master.conftest import Caller
from tests.master.deployments_project import deploy_settings, local_node
from tests.master.helpers import http, wait_until
from tests.master.test_deployments_runner import API, _create, pytestmark  # noqa: F401

TERMINAL = ("successful", "failed", "canceled", "rolled_back", "interrupted")


@pytest.fixture
def settings(mongo_uri: str, tmp_path: Path) -> Settings:
    return deploy_settings(mongo_uri, tmp_path)


def _env(settings: Settings) -> dict[str, str]:
    return {
        "AICDN_ANSIBLE_PLAYBOOK_DIR": settings.ansible_playbook_dir,
        "AICDN_ANSIBLE_CONFIG": settings.ansible_config,
        "AICDN_DEPLOY_WORK_DIR": str(settings.deploy_work_dir),
        "AICDN_DEPLOY_CONNECTIONS": "ssh,local",
        "AICDN_DEPLOY_POLL_INTERVAL": "0.1s",
        "AICDN_DEPLOY_EVENT_FLUSH": "0.1s",
    }


@pytest.fixture
def masters(
    app: Flask, settings: Settings, mongo_uri: str, tmp_path: Path
) -> Iterator[list[MasterProcess]]:
    """Two masters on the test database (``app`` made it fresh) running the test project."""
    started: list[MasterProcess] = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        started.append(MasterProcess(mongo_uri, tmp_path / name, **_env(settings)))
    yield started
    for master in started:
        master.stop()
    for pid in find_processes(str(settings.deploy_work_dir)):  # the killed leader's play
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _leader(masters: list[MasterProcess]) -> MasterProcess | None:
    for master in masters:
        if master.proc is not None and master.proc.poll() is None:
            answer = http("GET", f"{master.url}/api/v1/readyz", timeout=2)
            if answer.status == 200 and answer.json()["leader"]:
                return master
    return None


def test_a_killed_leader_leaves_its_deployment_interrupted_not_stuck(
    masters: list[MasterProcess], operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    wait_until(lambda: _leader(masters) is not None, timeout=20, interval=0.2)
    leader = _leader(masters)
    assert leader is not None
    node = local_node(operator, tmp_path, "slow", aicdn_sleep="120")
    created = _create(operator, playbook="deploy", selector={"nodes": ["slow"]})
    state: dict[str, Any] = {}

    def playing() -> bool:
        state.update(viewer.get(f"{API}/{created['id']}").json)
        events = viewer.get(f"{API}/{created['id']}/events?follow=false").text
        return state["status"] == "running" and "pause" in events

    wait_until(playing, timeout=90, interval=0.2)
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    survivor = next(m for m in masters if m is not leader)

    def ended() -> bool:
        state.update(viewer.get(f"{API}/{created['id']}").json)
        return state["status"] in TERMINAL

    wait_until(ended, timeout=30, interval=0.2)  # lease 2 s, then the next leader's reap
    assert state["status"] == "interrupted", state
    assert "stopped before the run ended" in state["error"]
    assert _leader([survivor]) is survivor
    # The node is free again: a new deployment on it is accepted.
    again = operator.post(API, json={"playbook": "deploy", "selector": {"nodes": ["slow"]}})
    assert again.status_code == 201, again.json
    operator.post(f"{API}/{again.json['id']}/cancel")
    assert node["prefix"].exists()
