"""Autoscale from standby cores, driven by load reported in real gRPC heartbeats: high load for
a window activates a standby core through a real deployment (ansible-runner, the test
project's deploy playbook, with its health gate); the maximum, the cooldown and the minimum
hold; low load drains a core back to standby. Decisions and reasons are in the API and the
metrics. The autoscaler's clock is driven by the test; everything else is real."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from flask import Flask

from master_api.extensions import repos, services
from master_api.grpc import AgentGrpcServer
from master_api.leader import DeploymentWorker
from master_api.services.autoscale import Autoscaler
from master_api.settings import Settings
from relay.agent.rpc import AgentStub, auth_metadata, channel_options, make_stub, pb
from tests.master.conftest import Caller, draft, register
from tests.master.deployments_project import deploy_settings, local_node
from tests.master.helpers import wait_until
from tests.master.test_agent_service import serve_agents

WINDOW = 10.0
COOLDOWN = 30.0


@pytest.fixture
def settings(mongo_uri: str, tmp_path: Path) -> Settings:
    return deploy_settings(
        mongo_uri,
        tmp_path,
        autoscale_enabled=True,
        autoscale_window=WINDOW,
        autoscale_cooldown=COOLDOWN,
        autoscale_up_connections=100.0,
        autoscale_down_connections=20.0,
        autoscale_bounds=("core:cn=1-2",),
        autoscale_drain_time=60.0,
        heartbeat_interval=0.5,
        agent_snapshot_ttl=0.0,
    )


@pytest.fixture
def agents(app: Flask, settings: Settings) -> Iterator[AgentGrpcServer]:
    server = serve_agents(app, settings)
    yield server
    server.stop(grace=0.5)


@pytest.fixture
async def stub(agents: AgentGrpcServer) -> AsyncIterator[AgentStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{agents.port}", options=channel_options()
    ) as channel:
        yield make_stub(channel)


async def beat(stub: AgentStub, node: dict[str, Any], connections: int) -> None:
    """A heartbeat as an agent sends it, carrying the node's load."""
    await stub.Heartbeat(
        pb.HeartbeatRequest(metrics=pb.NodeMetrics(connections=connections)),
        metadata=auth_metadata(node["id"], node["token"]),
        timeout=5,
    )


def status(caller: Caller, node: dict[str, Any]) -> str:
    return str(caller.get(f"/api/v1/nodes/{node['id']}").json["status"])


@pytest.mark.slow
async def test_load_activates_a_standby_core_and_drains_it_back(
    app: Flask,
    operator: Caller,
    stub: AgentStub,
    worker: DeploymentWorker,
    tmp_path: Path,
) -> None:
    core1 = local_node(operator, tmp_path, "core-1", "core", "cn")
    core2 = local_node(operator, tmp_path, "core-2", "core", "cn")
    core3 = local_node(operator, tmp_path, "core-3", "core", "cn")
    for standby in (core2, core3):
        answer = operator.call(
            "PATCH", f"/api/v1/nodes/{standby['id']}", json={"status": "standby"}
        )
        assert answer.status_code == 200, answer.json
    edge = register(operator, "edge-1", "edge", "hk")
    version = draft(operator, "edge", params={"edge_password": "s3cret-pass", "listener": "tcp"})
    assert operator.post(f"/api/v1/configs/{version['version_id']}/publish").status_code == 200
    with app.app_context():
        scaler = Autoscaler(
            repos(), app.config["AICDN_SETTINGS"], services().configs, services().deployments,
            sleep=lambda _: None,
        )  # fmt: skip

    def desired() -> int:
        return int(operator.get(f"/api/v1/nodes/{edge['id']}").json["desired_version"])

    def watch(start: float, end: float) -> list[Any]:
        """Passes every 2 s of the autoscaler's clock from ``start`` to ``end``."""
        made: list[Any] = []
        at = start
        while at <= end:
            made += scaler.run_once(at)
            at += 2.0
        return made

    t0 = time.time()
    await beat(stub, core1, 150)  # one active core, 150 connections: above 100
    assert watch(t0, t0 + WINDOW - 1) == []  # not a full window yet
    (up,) = scaler.run_once(t0 + WINDOW + 1)
    assert (up.action, up.node_name, up.status) == ("scale_up", "core-2", "deploying")
    assert "> 100 connections per active node for 10s" in up.reason
    assert up.deployment_id

    # The deployment runs through the leader's worker (ansible-runner) and passes its gate.
    def deployed() -> bool:
        deployment = operator.get(f"/api/v1/deployments/{up.deployment_id}").json
        assert deployment["status"] in ("queued", "running", "successful"), deployment
        return bool(deployment["status"] == "successful")

    wait_until(deployed, 120, interval=0.2)
    assert (tmp_path / "hosts" / "core-2" / "done").exists()  # the playbook ran on it
    before = desired()
    assert scaler.run_once(t0 + WINDOW + 2) == []
    assert status(operator, core2) == "online" and status(operator, core3) == "standby"
    assert desired() > before  # edges re-render with the new core

    view = operator.get("/api/v1/autoscale").json
    assert view["enabled"] is True
    assert view["decisions"][0]["status"] == "active"
    assert view["decisions"][0]["reason"] == up.reason
    group = next(g for g in view["groups"] if g["node_type"] == "core")
    assert (group["active"], group["standby"], group["max_active"]) == (2, 1, 2)
    metrics = operator.client.get("/api/v1/metrics").data.decode()
    assert 'aicdn_master_autoscale_decisions{action="scale_up"} 1.0' in metrics

    # Still high, but at the maximum (2): no third core, whatever the window.
    await beat(stub, core1, 300)
    await beat(stub, core2, 300)
    assert watch(t0 + WINDOW + 2 + COOLDOWN, t0 + WINDOW + 2 + COOLDOWN + 2 * WINDOW) == []
    assert "maximum" in scaler.groups[("core", "cn")].last_reason

    # Load falls: after a full low window the least loaded core drains back to standby.
    await beat(stub, core1, 5)
    await beat(stub, core2, 3)
    start = t0 + 100
    made = watch(start, start + WINDOW + 2)
    assert [(d.action, d.node_name, d.status) for d in made] == [
        ("scale_down", "core-2", "draining")
    ]
    down = made[0]
    assert "< 20 connections per active node" in down.reason
    assert status(operator, core2) == "draining" and desired() in down.versions
    await beat(stub, core2, 0)  # its last streams ended
    assert scaler.run_once(down.at + 1.5) == []
    assert status(operator, core2) == "standby"
    assert operator.get("/api/v1/autoscale").json["decisions"][0]["status"] == "standby"

    # At the minimum (1 active core) low load changes nothing.
    assert watch(down.at + COOLDOWN + 1, down.at + COOLDOWN + 2 * WINDOW) == []
    assert "minimum" in scaler.groups[("core", "cn")].last_reason
    assert status(operator, core1) == "online"
