"""Deployments without running a playbook: validation, overlap (409), cancel of a queued
deployment, the atomic claim, interrupted detection, event batching, and the job's build steps
on a real private data dir (STYLE Q6). Real nx-27017, no mocks."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from master_api.deployment_models import DeploymentEvent
from master_api.extensions import repos
from master_api.jobs import CancelCheck, DeploymentDispatcher, DeploymentJob, EventSink, JobError
from master_api.jobs.files import UnsafeText, load_marking_unsafe
from master_api.models import Member
from master_api.settings import Settings
from tests.master.conftest import Caller, draft
from tests.master.deployments_project import deploy_settings, local_node

API = "/api/v1/deployments"


@pytest.fixture
def settings(mongo_uri: str, tmp_path: Path) -> Settings:
    return deploy_settings(mongo_uri, tmp_path)


def _create(caller: Caller, status: int = 201, **body: Any) -> dict[str, Any]:
    answer = caller.post(API, json={"playbook": "deploy", **body})
    assert answer.status_code == status, answer.json
    result: dict[str, Any] = answer.json
    return result


def _on(*names: str) -> dict[str, Any]:
    return {"selector": {"nodes": list(names)}}


# -- validation ------------------------------------------------------------------------------


def test_creation_is_validated(operator: Caller, tmp_path: Path) -> None:
    local_node(operator, tmp_path, "edge-1")
    bad = [
        ({"playbook": "destroy"}, "body.playbook"),
        ({"playbook": "reload", "auto_rollback": True}, "body.auto_rollback"),
        ({"playbook": "deploy", "config_version": 999}, "body.config_version"),
        ({"playbook": "deploy", "release": "../etc"}, "body.release"),
        ({"playbook": "deploy", "selector": {"nodes": ["nope"]}}, "body.selector.nodes"),
        ({"playbook": "deploy", "selector": {"node_type": "core"}}, "body.selector"),
        ({"playbook": "deploy", "serial": 0}, "body.serial"),
        ({"playbook": "deploy", "selector": {"regions": ["hk"], "x": 1}}, "body.selector.x"),
    ]
    for body, field in bad:
        answer = operator.post(API, json=body)
        assert answer.status_code == 400, (body, answer.json)
        assert answer.json["field"] == field, (body, answer.json)


def test_created_deployment_is_queued_with_its_targets(
    operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    edge = local_node(operator, tmp_path, "edge-1", tags=("a",))
    local_node(operator, tmp_path, "edge-2", region="us")
    core = local_node(operator, tmp_path, "core-1", "core", "cn")
    version = draft(operator, "edge")["version_id"]
    created = _create(
        operator,
        config_version=version,
        release="1.2.3",
        selector={"regions": ["hk", "cn"]},
        serial=1,
        max_fail_percentage=0,
        auto_rollback=True,
    )
    assert created["status"] == "queued"
    assert {t["id"] for t in created["targets"]} == {edge["id"], core["id"]}
    assert created["created_by"] == "operator" and created["owner"] is None
    got = viewer.get(f"{API}/{created['id']}").json
    assert got == created
    listing = viewer.get(f"{API}?status=queued").json
    assert listing["total"] == 1 and listing["items"][0]["id"] == created["id"]
    assert viewer.get(f"{API}?status=running").json["total"] == 0


# -- overlap ---------------------------------------------------------------------------------


def test_overlapping_deployments_are_refused_until_the_first_ends(
    operator: Caller, tmp_path: Path
) -> None:
    local_node(operator, tmp_path, "n1")
    local_node(operator, tmp_path, "n2")
    first = _create(operator, **_on("n1"))
    refused = operator.post(API, json={"playbook": "reload", **_on("n1", "n2")})
    assert refused.status_code == 409
    assert refused.json["error"] == "deployment_overlap"
    assert "n1" in refused.json["message"] and first["id"] in refused.json["message"]
    other = _create(operator, **_on("n2"))  # a disjoint one may go ahead
    # The refused creation took no lock: canceling the first frees n1 for anyone.
    canceled = operator.post(f"{API}/{first['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json["status"] == "canceled"
    assert operator.post(f"{API}/{first['id']}/cancel").status_code == 409
    _create(operator, **_on("n1"))
    _create(operator, 409, **_on("n2"))
    assert operator.post(f"{API}/{other['id']}/cancel").status_code == 200


def test_concurrent_creations_on_one_node_let_exactly_one_through(
    app: Flask, operator: Caller, tmp_path: Path
) -> None:
    local_node(operator, tmp_path, "n1")
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        client = app.test_client()
        barrier.wait()
        answer = client.post(
            API,
            json={"playbook": "deploy", **_on("n1")},
            headers={"Authorization": f"Bearer {operator.token}"},
        )
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201, 409, 409, 409]


# -- claim and interrupted detection -----------------------------------------------------------


def test_a_queued_deployment_is_claimed_exactly_once(
    app: Flask, operator: Caller, tmp_path: Path
) -> None:
    local_node(operator, tmp_path, "n1")
    created = _create(operator, **_on("n1"))
    wins: list[str] = []
    barrier = threading.Barrier(3)

    def claim(member: str) -> None:
        dispatcher = DeploymentDispatcher(repos(app), app.config["AICDN_SETTINGS"], member)
        barrier.wait()
        claimed = dispatcher.claim_next()
        if claimed is not None:
            wins.append(member)

    threads = [threading.Thread(target=claim, args=(f"m{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(wins) == 1
    stored = repos(app).deployments.get(created["id"])
    assert stored is not None and stored.status == "running" and stored.owner == wins[0]
    assert stored.claimed_at is not None


def test_the_leader_marks_runs_of_dead_masters_interrupted(
    app: Flask, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    settings = app.config["AICDN_SETTINGS"]
    now = time.time()
    members = repos(app).election_members
    members.heartbeat(Member("alive", "h", 1, "a:1", now, now))
    members.heartbeat(Member("stale", "h", 2, "a:2", now - 60, now - 60))
    ids: dict[str, str] = {}
    for owner in ("alive", "stale", "ghost", "me"):
        local_node(operator, tmp_path, f"n-{owner}")
        ids[owner] = _create(operator, **_on(f"n-{owner}"))["id"]
        assert repos(app).deployments.claim(ids[owner], owner, now)

    marked = DeploymentDispatcher(repos(app), settings, "me").reap(running_here=set())
    assert sorted(marked) == sorted([ids["stale"], ids["ghost"], ids["me"]])
    assert viewer.get(f"{API}/{ids['alive']}").json["status"] == "running"
    for owner in ("stale", "ghost", "me"):
        got = viewer.get(f"{API}/{ids[owner]}").json
        assert got["status"] == "interrupted", got
        assert got["error"] and got["finished_at"]
        events = viewer.get(f"{API}/{ids[owner]}/events?follow=false")
        assert "event: deployment_finished" in events.text
        assert '"status":"interrupted"' in events.text
        _create(operator, **_on(f"n-{owner}"))  # its node is free again
    # The one this process runs is left alone.
    assert DeploymentDispatcher(repos(app), settings, "alive").reap({ids["alive"]}) == []


# -- events ----------------------------------------------------------------------------------


def test_the_sink_writes_in_batches_and_on_time(app: Flask) -> None:
    now = [0.0]
    repo = repos(app).deployment_events
    sink = EventSink(repo, "d1", 0, batch_size=3, flush_interval=0.5, clock=lambda: now[0])
    sink.emit("a", "deploy")
    sink.emit("b", "deploy")
    assert repo.last_counter("d1") == 0  # batched, not written per event
    sink.emit("c", "deploy")
    assert repo.last_counter("d1") == 3
    sink.emit("d", "deploy")
    now[0] = 0.6
    sink.flush_if_due()
    assert [e.counter for e in repo.since("d1", 0)] == [1, 2, 3, 4]
    # A batch written twice (a lost acknowledgement) stores each event once.
    repo.append(
        [DeploymentEvent("d1", 4, "d", "deploy", 1.0), DeploymentEvent("d1", 5, "e", "deploy", 1.0)]
    )
    assert [e.counter for e in repo.since("d1", 2)] == [3, 4, 5]


def test_events_replay_from_a_counter(
    app: Flask, viewer: Caller, operator: Caller, tmp_path: Path
) -> None:
    local_node(operator, tmp_path, "n1")
    created = _create(operator, **_on("n1"))
    sink = EventSink(repos(app).deployment_events, created["id"], 0, 100, 10.0)
    for i in range(5):
        sink.emit("runner_on_ok", "deploy", host="n1", task=f"t{i}", stdout=f"ok {i}")
    sink.flush()
    answer = viewer.get(f"{API}/{created['id']}/events?since=2&follow=false")
    assert answer.status_code == 200
    assert answer.mimetype == "text/event-stream"
    assert answer.headers["Cache-Control"] == "no-cache"
    ids = [int(line[4:]) for line in answer.text.splitlines() if line.startswith("id: ")]
    assert ids == [3, 4, 5]
    assert answer.text.rstrip().endswith('"last_counter":5}')
    resumed = viewer.get(
        f"{API}/{created['id']}/events?follow=false", headers={"Last-Event-ID": "4"}
    )
    assert [line for line in resumed.text.splitlines() if line.startswith("id: ")] == ["id: 5"]
    bad = viewer.get(f"{API}/{created['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400
    assert viewer.get(f"{API}/nope/events").status_code == 404


# -- the job's build steps on a real private data dir (STYLE Q6) ------------------------------


def _job(app: Flask, deployment_id: str, settings: Settings) -> DeploymentJob:
    deployment = repos(app).deployments.get(deployment_id)
    assert deployment is not None
    sink = EventSink(repos(app).deployment_events, deployment_id, 0, 50, 1.0)
    cancel = CancelCheck(repos(app), deployment_id, threading.Event())
    return DeploymentJob(deployment, repos(app), settings, sink, cancel)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _all_strings_unsafe(value: Any) -> bool:
    if isinstance(value, str):
        return isinstance(value, UnsafeText)
    if isinstance(value, dict):
        return all(_all_strings_unsafe(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_strings_unsafe(v) for v in value)
    return True


def test_build_steps_write_a_private_dir_with_unsafe_values(
    app: Flask, operator: Caller, tmp_path: Path
) -> None:
    settings = app.config["AICDN_SETTINGS"]
    local_node(
        operator, tmp_path, "edge-1", tags=("canary",), aicdn_note="{{ lookup('pipe', 'id') }}"
    )
    local_node(operator, tmp_path, "core-1", "core", "cn")
    created = _create(operator, release="2.0.0", serial=2, selector={})
    job = _job(app, created["id"], settings)
    pdd = job.build_private_data_dir()
    assert _mode(pdd) == 0o700 and pdd.parent == Path(settings.deploy_work_dir)
    nodes = job.build_nodes()
    inventory = job.build_inventory(pdd, nodes)
    extravars = job.build_extravars(pdd)
    env_settings = job.build_env_settings(pdd)
    envvars = job.build_envvars(pdd)
    for path in (inventory, extravars, env_settings, envvars):
        assert _mode(path) == 0o600, path
        assert _mode(path.parent) == 0o700, path.parent
    assert job.build_cmdline(pdd) is None

    document = load_marking_unsafe(inventory.read_text())
    hosts = document["all"]["hosts"]
    assert set(hosts) == {"edge-1", "core-1"}
    assert hosts["edge-1"]["aicdn_note"] == "{{ lookup('pipe', 'id') }}"
    assert _all_strings_unsafe(hosts)
    assert hosts["edge-1"]["ansible_connection"] == "local"
    groups = document["all"]["children"]
    assert set(groups["edge"]["hosts"]) == {"edge-1"} and set(groups["cn"]["hosts"]) == {"core-1"}
    assert set(groups["tag_canary"]["hosts"]) == {"edge-1"}

    variables = load_marking_unsafe(extravars.read_text())
    assert variables["relay_version"] == "2.0.0" and variables["aicdn_deploy_serial"] == 2
    assert variables["aicdn_deployment_id"] == created["id"]
    assert _all_strings_unsafe(variables)
    assert isinstance(variables["aicdn_deployment_id"], UnsafeText)

    runner_settings = load_marking_unsafe(env_settings.read_text())
    assert runner_settings["idle_timeout"] == 120 and runner_settings["job_timeout"] == 300
    env = load_marking_unsafe(envvars.read_text())
    assert env["ANSIBLE_CONFIG"] == str(Path(settings.ansible_config).resolve())


def test_node_variables_outside_the_allow_list_refuse_the_run(
    app: Flask, operator: Caller, tmp_path: Path
) -> None:
    settings = app.config["AICDN_SETTINGS"]
    local_node(operator, tmp_path, "n1", ansible_ssh_common_args="-o ProxyCommand=touch /tmp/x")
    job = _job(app, _create(operator, **_on("n1"))["id"], settings)
    with pytest.raises(JobError, match="ansible_ssh_common_args is not allowed"):
        job.build_inventory(job.build_private_data_dir(), job.build_nodes())
    strict = settings.with_overrides(deploy_connections=("ssh",))
    local_node(operator, tmp_path, "n2")
    job = _job(app, _create(operator, **_on("n2"))["id"], strict)
    with pytest.raises(JobError, match="ansible_connection 'local' is not allowed"):
        job.build_inventory(job.build_private_data_dir(), job.build_nodes())
    # A run that cannot be prepared ends "error" (no exception) and leaves no private dir.
    work = Path(settings.deploy_work_dir)
    before = set(work.iterdir())
    result = job.run()
    assert result.status == "error" and "not allowed" in (result.error or "")
    assert set(work.iterdir()) == before


def test_check_mode_runs_with_check_and_diff(app: Flask, operator: Caller, tmp_path: Path) -> None:
    local_node(operator, tmp_path, "n1")
    created = _create(operator, check_mode=True, **_on("n1"))
    job = _job(app, created["id"], app.config["AICDN_SETTINGS"])
    pdd = job.build_private_data_dir()
    cmdline = job.build_cmdline(pdd)
    assert cmdline is not None and cmdline.read_text() == "--check --diff"
    assert _mode(cmdline) == 0o600
    assert load_marking_unsafe(job.build_extravars(pdd).read_text())["aicdn_check_mode"] is True


def test_the_cancel_check_reads_the_flag_the_status_and_shutdown(
    app: Flask, operator: Caller, tmp_path: Path
) -> None:
    local_node(operator, tmp_path, "n1")
    local_node(operator, tmp_path, "n2")
    first = _create(operator, **_on("n1"))["id"]
    second = _create(operator, **_on("n2"))["id"]
    deployments = repos(app).deployments
    assert deployments.claim(first, "me", time.time())
    assert deployments.claim(second, "me", time.time())
    shutdown = threading.Event()
    check = CancelCheck(repos(app), first, shutdown, interval=0.0)
    assert check() is False
    operator.post(f"{API}/{first}/cancel")
    assert check() is True and check.reason == "canceled"
    # Taken for dead by another master's reaper: this run must stop too.
    lost = CancelCheck(repos(app), second, shutdown, interval=0.0)
    assert deployments.finish(second, "me", "interrupted", time.time(), "test")
    assert lost() is True and lost.reason == "lost"
    stopping = CancelCheck(repos(app), "nope", shutdown, interval=60.0)
    shutdown.set()
    assert stopping() is True and stopping.reason == "shutdown"


def test_nodes_record_releases_and_return_to_the_previous_one(
    app: Flask, operator: Caller, viewer: Caller, tmp_path: Path
) -> None:
    node_id = local_node(operator, tmp_path, "n1")["id"]
    nodes = repos(app).nodes
    assert nodes.record_release(node_id, "1.0.0", 3, time.time())
    assert nodes.record_release(node_id, "2.0.0", None, time.time())
    got = viewer.get(f"/api/v1/nodes/{node_id}").json
    assert got["release"] == "2.0.0" and got["applied_version"] == 3
    assert nodes.record_rollback(node_id, None, time.time())
    assert viewer.get(f"/api/v1/nodes/{node_id}").json["release"] == "1.0.0"
    assert nodes.record_rollback(node_id, "0.9.0", time.time())
    assert viewer.get(f"/api/v1/nodes/{node_id}").json["release"] == "0.9.0"
    assert not nodes.record_release("nope", "1", None, time.time())


def test_the_openapi_document_has_the_deployment_routes(app: Flask) -> None:
    """DESIGN §4.3: GET|POST /deployments, GET /deployments/{id}, its events (SSE), cancel."""
    paths = app.test_client().get("/api/v1/openapi.json").json["paths"]
    assert set(paths["/deployments"]) == {"get", "post"}
    assert set(paths["/deployments/{deployment_id}"]) == {"get"}
    events = paths["/deployments/{deployment_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert set(paths["/deployments/{deployment_id}/cancel"]) == {"post"}
    assert {"200", "202", "404", "409"} <= set(
        paths["/deployments/{deployment_id}/cancel"]["post"]["responses"]
    )
    assert "409" in paths["/deployments"]["post"]["responses"]
