"""The gRPC AgentService in-process (``AgentGrpcServer`` on its thread, a real database): node
authentication, the heartbeat/push/report cycle, drift, command round trips, 504, TLS."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
import yaml
from flask import Flask

from master_api.grpc import AgentGrpcServer
from master_api.grpc.service import metrics_from_message
from master_api.settings import Settings
from relay.agent.rpc import AgentStub, auth_metadata, channel_options, make_stub, pb
from relay.config import Address
from tests.certs import CA, CertPair, issue
from tests.master.conftest import Caller, register
from tests.master.helpers import wait_until

EDGE_CONFIG = {
    "api": {"addr": "127.0.0.1:18080"},
    "services": [
        {
            "name": "entry",
            "addr": ":8080",
            "listener": {"type": "tcp"},
            "handler": {"type": "http"},
            "forwarder": {"nodes": [{"name": "origin", "addr": "127.0.0.1:8000"}]},
        }
    ],
}


def serve_agents(app: Flask, settings: Settings, **overrides: Any) -> AgentGrpcServer:
    """The AgentService of ``app`` on a free port; active versions read on every call."""
    values: dict[str, Any] = {
        "grpc_addr": Address("127.0.0.1", 0),
        "agent_snapshot_ttl": 0.0,
        **overrides,
    }
    server = AgentGrpcServer(app, settings.with_overrides(**values))
    server.start()
    return server


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


@pytest.fixture
def node(operator: Caller) -> dict[str, Any]:
    return register(operator, "edge-1", "edge", "hk")


def publish(caller: Caller, config: dict[str, Any]) -> int:
    answer = caller.post(
        "/api/v1/configs", json={"node_type": "edge", "config_data": yaml.safe_dump(config)}
    )
    assert answer.status_code == 201, answer.json
    version: int = answer.json["version_id"]
    assert caller.post(f"/api/v1/configs/{version}/publish").status_code == 200
    return version


async def test_a_wrong_token_is_refused_on_every_call(
    stub: AgentStub, node: dict[str, Any], operator: Caller
) -> None:
    wrong = [
        auth_metadata(node["id"], "not-the-token"),
        auth_metadata("no-such-node", node["token"]),
        (("aicdn-node-id", node["id"]),),
        (("aicdn-node-id", node["id"]), ("authorization", f"Basic {node['token']}")),
    ]
    for metadata in wrong:
        calls = [
            stub.Register(pb.RegisterRequest(), metadata=metadata, timeout=5),
            stub.Heartbeat(pb.HeartbeatRequest(), metadata=metadata, timeout=5),
            stub.PushConfig(pb.PushConfigRequest(), metadata=metadata, timeout=5),
            stub.GetStatus(pb.GetStatusRequest(), metadata=metadata, timeout=5),
            stub.ReportStatus(
                pb.ReportStatusRequest(version=1, outcome=pb.APPLIED), metadata=metadata, timeout=5
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = stub.ExecuteCommand(metadata=metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was recorded for the node.
    shown = operator.get(f"/api/v1/nodes/{node['id']}").json
    assert shown["last_seen"] is None and shown["agent"] is None


async def test_heartbeat_push_and_reports_drive_the_drift_list(
    stub: AgentStub, node: dict[str, Any], operator: Caller
) -> None:
    metadata = auth_metadata(node["id"], node["token"])
    registered = await stub.Register(
        pb.RegisterRequest(agent_version="9.9", hostname="host-1"), metadata=metadata, timeout=5
    )
    assert (registered.node_id, registered.name, registered.type) == (node["id"], "edge-1", "edge")
    assert not registered.HasField("desired_version")
    beat = await stub.Heartbeat(pb.HeartbeatRequest(), metadata=metadata, timeout=5)
    assert not beat.config_updated
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await stub.PushConfig(pb.PushConfigRequest(), metadata=metadata, timeout=5)
    assert nothing.value.code() == grpc.StatusCode.NOT_FOUND

    version = publish(operator, EDGE_CONFIG)
    beat = await stub.Heartbeat(
        pb.HeartbeatRequest(metrics=pb.NodeMetrics(connections=3, p99_latency_ms=12.5)),
        metadata=metadata,
        timeout=5,
    )
    assert beat.config_updated and beat.desired_version == version
    pushed = await stub.PushConfig(
        pb.PushConfigRequest(version=version), metadata=metadata, timeout=5
    )
    assert pushed.version == version
    assert pushed.checksum == hashlib.sha256(pushed.config_yaml.encode()).hexdigest()
    assert yaml.safe_load(pushed.config_yaml)["version"] == version

    await stub.ReportStatus(
        pb.ReportStatusRequest(
            version=version,
            outcome=pb.REJECTED,
            message="refused by the relay checker on this node (1 issue(s))",
            issues=[pb.ConfigIssue(path="services[0].listener.tls.certFile", message="missing")],
        ),
        metadata=metadata,
        timeout=5,
    )
    status = await stub.GetStatus(pb.GetStatusRequest(), metadata=metadata, timeout=5)
    assert status.desired_version == version and not status.HasField("applied_version")
    assert status.config_error.outcome == "rejected"
    assert status.config_error.issues[0].path == "services[0].listener.tls.certFile"
    shown = operator.get(f"/api/v1/nodes/{node['id']}").json
    assert shown["agent"]["hostname"] == "host-1" and shown["agent"]["version"] == "9.9"
    assert shown["metrics"]["connections"] == 3 and shown["metrics"]["p99_latency_ms"] == 12.5
    assert shown["config_error"]["issues"] == [
        {"path": "services[0].listener.tls.certFile", "message": "missing"}
    ]
    drift = operator.get("/api/v1/nodes/drift").json["items"]
    assert [(d["name"], d["state"]) for d in drift] == [("edge-1", "failed")]

    await stub.ReportStatus(
        pb.ReportStatusRequest(version=version, outcome=pb.APPLIED),
        metadata=metadata,
        timeout=5,
    )
    shown = operator.get(f"/api/v1/nodes/{node['id']}").json
    assert shown["applied_version"] == version and shown["config_error"] is None
    assert operator.get("/api/v1/nodes/drift").json["count"] == 0
    beat = await stub.Heartbeat(
        pb.HeartbeatRequest(applied_version=version), metadata=metadata, timeout=5
    )
    assert not beat.config_updated

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ReportStatus(pb.ReportStatusRequest(version=1), metadata=metadata, timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_drift_states(operator: Caller) -> None:
    quiet = register(operator, "edge-quiet", "edge", "hk")
    assert operator.get("/api/v1/nodes/drift").json["count"] == 0  # nothing active yet
    version = publish(operator, EDGE_CONFIG)
    items = operator.get("/api/v1/nodes/drift").json["items"]
    assert [(i["id"], i["state"], i["desired_version"]) for i in items] == [
        (quiet["id"], "unreachable", version)
    ]
    heartbeat = operator.client.post(
        f"/api/v1/nodes/{quiet['id']}/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {quiet['token']}"},
    )
    assert heartbeat.status_code == 200
    assert operator.get("/api/v1/nodes/drift").json["items"][0]["state"] == "pending"


def test_out_of_range_metrics_are_dropped() -> None:
    metrics = metrics_from_message(
        pb.NodeMetrics(connections=-1, error_rate=2.0, cpu_percent=float("nan"), memory_bytes=5)
    )
    assert metrics.connections is None and metrics.error_rate is None
    assert metrics.cpu_percent is None and metrics.memory_bytes == 5
    assert metrics.requests_total is None


async def _fake_agent(stub: AgentStub, metadata: Any, answer: bool, started: asyncio.Event) -> None:
    """Open the command stream; answer each command (``answer``) or stay silent."""
    call = stub.ExecuteCommand(metadata=metadata)
    await call.write(pb.AgentMessage(hello=pb.Hello(agent_version="test")))
    started.set()
    async for command in call:
        if answer:
            kind = pb.CommandType.Name(command.type).lower()
            await call.write(
                pb.AgentMessage(
                    result=pb.CommandResult(
                        id=command.id, ok=True, output=f"{kind} {dict(command.args)}"
                    )
                )
            )


@pytest.mark.parametrize("answer", [True, False])
async def test_commands_round_trip_or_time_out(
    stub: AgentStub,
    agents: AgentGrpcServer,
    node: dict[str, Any],
    operator: Caller,
    answer: bool,
) -> None:
    url = f"/api/v1/nodes/{node['id']}/commands"
    refused = operator.post(url, json={"command": "status"})
    assert refused.status_code == 409 and refused.json["error"] == "agent_not_connected"

    started = asyncio.Event()
    metadata = auth_metadata(node["id"], node["token"])
    fake = asyncio.create_task(_fake_agent(stub, metadata, answer, started))
    try:
        await started.wait()
        await asyncio.to_thread(wait_until, lambda: agents.hub.connected(node["id"]), 5)
        reply = await asyncio.to_thread(
            operator.post, url, json={"command": "logs", "lines": 7, "timeout": 0.5}
        )
    finally:
        fake.cancel()
        await asyncio.gather(fake, return_exceptions=True)
    if answer:
        assert reply.status_code == 200, reply.json
        assert reply.json["ok"] is True and reply.json["output"] == "logs {'lines': '7'}"
    else:
        assert reply.status_code == 504 and reply.json["error"] == "agent_timeout"
    bad = operator.post(url, json={"command": "format-disk"})
    assert bad.status_code == 400


def test_commands_need_the_agent_service(node: dict[str, Any], operator: Caller) -> None:
    answer = operator.post(f"/api/v1/nodes/{node['id']}/commands", json={"command": "status"})
    assert answer.status_code == 503 and answer.json["error"] == "agent_service_unavailable"
    missing = operator.post("/api/v1/nodes/nope/commands", json={"command": "status"})
    assert missing.status_code == 404


async def test_tls_when_configured(
    app: Flask, settings: Settings, ca: CA, server_cert: CertPair, node: dict[str, Any]
) -> None:
    server = serve_agents(
        app,
        settings,
        grpc_tls_cert_file=str(server_cert.cert_file),
        grpc_tls_key_file=str(server_cert.key_file),
    )
    metadata = auth_metadata(node["id"], node["token"])
    target = f"127.0.0.1:{server.port}"
    try:
        credentials = grpc.ssl_channel_credentials(ca.cert_file.read_bytes())
        async with grpc.aio.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            reply = await make_stub(channel).Register(
                pb.RegisterRequest(), metadata=metadata, timeout=5
            )
            assert reply.node_id == node["id"]
        async with grpc.aio.insecure_channel(target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await make_stub(plain).Register(pb.RegisterRequest(), metadata=metadata, timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        other_ca = issue(ca, "other")  # a leaf is no CA: verification must fail
        untrusted = grpc.ssl_channel_credentials(other_ca.cert_file.read_bytes())
        async with grpc.aio.secure_channel(target, untrusted) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await make_stub(channel).Register(
                    pb.RegisterRequest(), metadata=metadata, timeout=2
                )
    finally:
        server.stop(grace=0.5)


def test_a_taken_grpc_port_fails_start_up(app: Flask, settings: Settings) -> None:
    first = serve_agents(app, settings)
    try:
        assert first.port is not None
        second = AgentGrpcServer(
            app, settings.with_overrides(grpc_addr=Address("127.0.0.1", first.port))
        )
        with pytest.raises(OSError):
            second.start()
    finally:
        first.stop(grace=0.5)


def test_snapshots_share_reads_within_max_age() -> None:
    from master_api.services.snapshots import Snapshot, SnapshotMap

    now = [100.0]
    reads: list[int] = []

    def load() -> int:
        reads.append(1)
        return len(reads)

    snapshot = Snapshot(load, clock=lambda: now[0])
    assert snapshot.get(0) == 1 and snapshot.get(0) == 2  # max_age 0: always read
    assert snapshot.get(1.0) == 3 and snapshot.get(1.0) == 3
    now[0] += 1.5
    assert snapshot.get(1.0) == 4
    remembered: SnapshotMap[str, int] = SnapshotMap(clock=lambda: now[0])
    remembered.put("a", 1)
    assert remembered.get("a", 5.0) == 1 and remembered.get("b", 5.0) is None
    now[0] += 6
    assert remembered.get("a", 5.0) is None


def test_a_remembered_node_still_needs_its_token(
    app: Flask, node: dict[str, Any], operator: Caller
) -> None:
    from master_api.errors import Unauthorized
    from master_api.extensions import services

    with app.app_context():
        nodes = services().nodes
        assert nodes.authenticate(node["id"], node["token"], max_age=30).id == node["id"]
        with pytest.raises(Unauthorized):
            nodes.authenticate(node["id"], "wrong", max_age=30)
        assert nodes.authenticate(node["id"], node["token"], max_age=30).id == node["id"]
    # Deleting the node through the API forgets it at once.
    assert operator.call("DELETE", f"/api/v1/nodes/{node['id']}").status_code == 204
    with app.app_context(), pytest.raises(Unauthorized):
        services().nodes.authenticate(node["id"], node["token"], max_age=30)


async def test_client_certificates_when_a_client_ca_is_configured(
    app: Flask, settings: Settings, ca: CA, server_cert: CertPair, node: dict[str, Any]
) -> None:
    server = serve_agents(
        app,
        settings,
        grpc_tls_cert_file=str(server_cert.cert_file),
        grpc_tls_key_file=str(server_cert.key_file),
        grpc_tls_client_ca_file=str(ca.cert_file),
    )
    metadata = auth_metadata(node["id"], node["token"])
    target = f"127.0.0.1:{server.port}"
    options = [("grpc.ssl_target_name_override", "localhost")]
    client = issue(ca, "agent-edge-1")
    try:
        mutual = grpc.ssl_channel_credentials(
            ca.cert_file.read_bytes(), client.key_file.read_bytes(), client.cert_file.read_bytes()
        )
        async with grpc.aio.secure_channel(target, mutual, options=options) as channel:
            reply = await make_stub(channel).Register(
                pb.RegisterRequest(), metadata=metadata, timeout=5
            )
            assert reply.node_id == node["id"]
        anonymous = grpc.ssl_channel_credentials(ca.cert_file.read_bytes())
        async with grpc.aio.secure_channel(target, anonymous, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await make_stub(channel).Register(
                    pb.RegisterRequest(), metadata=metadata, timeout=2
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=0.5)
