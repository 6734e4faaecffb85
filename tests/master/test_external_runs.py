"""Plain ansible-playbook runs report themselves to the real master (the aicdn_events callback,
DESIGN §6): registered as external deployments, their events stored and streamed, their stats
ending them; a run that goes silent is marked interrupted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from master_api.extensions import repos
from master_api.jobs.dispatch import DeploymentDispatcher
from tests.master.conftest import Caller, register
from tests.master.helpers import serve_in_thread

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
_PLAYBOOK_BIN = shutil.which("ansible-playbook", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
needs_ansible = pytest.mark.skipif(
    _PLAYBOOK_BIN is None and not os.environ.get("CI"),
    reason="ansible-playbook is not installed (the [ansible] extra: make venv-ansible)",
)

API = "/api/v1/deployments"

PLAYBOOK = """\
- name: A run by hand
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
    - name: Change something
      ansible.builtin.command: "true"
      changed_when: true
    - name: Keep a secret
      ansible.builtin.debug:
        msg: the secret
      no_log: true
    - name: Fail when told to
      ansible.builtin.fail:
        msg: told to fail
      when: fail_now | default(false) | bool
"""


def run_playbook(tmp_path: Path, base: str, token: str, *extra: str, **env: str) -> str:
    playbook = tmp_path / "by-hand.yml"
    playbook.write_text(PLAYBOOK)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AICDN_"))}
    environ.update(
        PATH=f"{BIN}{os.pathsep}{environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),  # enables aicdn.tunnel.aicdn_events
        ANSIBLE_NOCOLOR="1",
        AICDN_MASTER_URL=base,
        AICDN_MASTER_TOKEN=token,
        **env,
    )
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter={{ ansible_playbook_python }}", *extra, str(playbook)],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "aicdn_events: cannot" not in output, output  # the master took every report
    return output


def _only_deployment(caller: Caller) -> dict[str, Any]:
    [deployment] = caller.get(API).json["items"]
    return deployment  # type: ignore[no-any-return]


def _events(caller: Caller, deployment_id: str) -> list[dict[str, Any]]:
    events = []
    for line in caller.get(f"{API}/{deployment_id}/events?follow=false").text.splitlines():
        if line.startswith("data: ") and '"counter"' in line:
            events.append(json.loads(line[6:]))
    return events


@needs_ansible
@pytest.mark.slow
def test_a_run_by_hand_shows_up_with_its_events_and_result(
    app: Flask, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    with serve_in_thread(app) as base:
        run_playbook(tmp_path, base, operator.token)

    deployment = _only_deployment(viewer)
    assert deployment["external"] is True
    assert deployment["playbook"] == "by-hand.yml"
    assert deployment["status"] == "successful", deployment
    assert deployment["created_by"] == "operator"
    [host] = deployment["result"]["hosts"]
    assert host["host"] == "localhost" and host["changed"] == 1 and host["failures"] == 0

    events = _events(viewer, deployment["id"])
    names = [e["event"] for e in events]
    assert names[0] == "playbook_on_start" and names[-1] == "playbook_on_stats"
    assert [e["counter"] for e in events] == list(range(1, len(events) + 1))
    oks = {e["task"]: e for e in events if e["event"] == "runner_on_ok"}
    assert oks["Change something"]["data"]["changed"] is True
    assert oks["Say hello"]["host"] == "localhost"
    assert "msg" not in oks["Keep a secret"]["data"]  # no_log results carry no message


@needs_ansible
@pytest.mark.slow
def test_a_failed_run_ends_failed_and_an_existing_deployment_can_be_reused(
    app: Flask, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    created = operator.post(f"{API}/external", json={"playbook": "deploy.yml"})
    assert created.status_code == 201, created.json
    assert created.json["status"] == "running" and created.json["targets"] == []
    with serve_in_thread(app) as base:
        output = run_playbook(
            tmp_path, base, operator.token, "-e", "fail_now=true",
            AICDN_DEPLOYMENT_ID=created.json["id"],
        )  # fmt: skip
    assert "told to fail" in output
    deployment = _only_deployment(viewer)
    assert deployment["id"] == created.json["id"]
    assert deployment["status"] == "failed", deployment
    assert deployment["result"]["hosts"][0]["failures"] == 1


def test_events_are_refused_for_runs_of_the_master_and_ended_runs(
    operator: Caller, viewer: Caller
) -> None:
    register(operator, "edge-x", "edge", "hk")
    queued = operator.post(API, json={"playbook": "reload", "selector": {"nodes": ["edge-x"]}})
    batch = {"events": [{"event": "playbook_on_start", "counter": 1}]}
    refused = operator.post(f"{API}/{queued.json['id']}/events", json=batch)
    assert refused.status_code == 409 and refused.json["error"] == "not_external"

    external = operator.post(f"{API}/external", json={"playbook": "site.yml"}).json
    assert viewer.post(f"{API}/{external['id']}/events", json=batch).status_code == 403
    stats = {"event": "playbook_on_stats", "counter": 2,
             "data": {"status": "successful", "stats": [{"host": "edge-x", "ok": 3}]}}  # fmt: skip
    # A batch sent twice (a callback retrying) is stored once.
    for _ in range(2):
        assert operator.post(f"{API}/{external['id']}/events", json=batch).status_code == 202
    ended = operator.post(f"{API}/{external['id']}/events", json={"events": [stats]})
    assert ended.status_code == 202 and ended.json["status"] == "successful"
    assert ended.json["result"]["hosts"][0]["node_id"]  # the host is a known node
    late = operator.post(f"{API}/{external['id']}/events", json=batch)
    assert late.status_code == 409 and late.json["error"] == "ended"
    assert [e["counter"] for e in _events(viewer, external["id"])] == [1, 2]

    bad = operator.post(f"{API}/{external['id']}/events", json={"events": [{"event": "x"}]})
    assert bad.status_code == 400 and "counter" in bad.json["message"]


def test_a_run_that_stops_reporting_is_marked_interrupted(
    app: Flask, operator: Caller, viewer: Caller
) -> None:
    external = operator.post(f"{API}/external", json={"playbook": "deploy.yml"}).json
    settings = app.config["AICDN_SETTINGS"]
    now = time.time()
    quiet = DeploymentDispatcher(repos(app), settings, "m1", clock=lambda: now + 1)
    assert quiet.reap(running_here=()) == []  # reporting recently: alive
    later = DeploymentDispatcher(
        repos(app), settings, "m1", clock=lambda: now + settings.deploy_idle_timeout + 1
    )
    assert later.reap(running_here=()) == [external["id"]]
    got = viewer.get(f"{API}/{external['id']}").json
    assert got["status"] == "interrupted" and "stopped reporting" in got["error"]
