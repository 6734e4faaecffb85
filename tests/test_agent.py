"""The agent without the real master: agent.yaml, the metrics sampler, the config applier
against a real relay process (applied, rejected, rolled back), the local commands, and the
whole agent against a fake master that misbehaves."""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import yaml

from relay.agent.apply import ConfigApplier, PushedConfig
from relay.agent.commands import CommandRunner
from relay.agent.config import agent_config_from_mapping, load_agent_config
from relay.agent.relay_api import RelayApi, RelayEndpoints, relay_endpoints
from relay.agent.rpc import add_servicer, pb
from relay.agent.sampling import MetricsSampler, quantile_from_buckets
from relay.config import Address, ConfigError
from tests.certs import CA, CertPair
from tests.processes import RelayProcess, edge_and_core_config, free_port

MINIMAL = {"masters": ["m1:50051"], "node_id": "n1", "token": "t", "relay_config": "relay.yaml"}


def test_agent_yaml_defaults_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "masters": ["m1:50051", "[::1]:50052"]}))
    config = load_agent_config(str(path))
    assert config.masters == (Address("m1", 50051), Address("::1", 50052))
    assert config.heartbeat_interval == 10.0 and config.tls is None
    assert config.relay_config == str(tmp_path / "relay.yaml")
    assert config.service_manager == "auto" and config.relay_service == "aicdn-relay"


def test_agent_yaml_is_strict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        agent_config_from_mapping(
            {
                "masters": ["no-port"],
                "node_id": "",
                "relay_config": "r.yaml",
                "heartbeat_interval": "-1s",
                "hartbeat": 3,
                "service_manager": "upstart",
                "tls": {"ca_file": "missing.pem", "cert_file": "c.pem"},
            },
            str(tmp_path),
        )
    paths = [issue.path for issue in refused.value.issues]
    assert paths == [
        "hartbeat",
        "masters",
        "node_id",
        "token",
        "heartbeat_interval",
        "tls.ca_file",
        "tls.cert_file",
        "tls",
        "service_manager",
    ]
    assert "unknown key" in str(refused.value)
    with pytest.raises(ConfigError):
        agent_config_from_mapping(["not", "a", "mapping"])


def test_quantile_from_buckets() -> None:
    assert quantile_from_buckets(0.99, {}) is None
    assert quantile_from_buckets(0.99, {0.1: 0, math.inf: 0}) is None
    # 100 observations, all in (0.1, 0.25]: p99 interpolates within that bucket.
    buckets = {0.1: 0.0, 0.25: 100.0, 0.5: 100.0, math.inf: 100.0}
    assert quantile_from_buckets(0.99, buckets) == pytest.approx(0.1 + 0.15 * 0.99)
    assert quantile_from_buckets(0.5, {0.1: 50.0, 0.25: 100.0, math.inf: 100.0}) == 0.1
    assert quantile_from_buckets(0.99, {0.1: 0.0, math.inf: 10.0}) == 0.1  # beyond the last


def _exposition(requests: int, errors: int, fast: int, slow: int, cpu: float) -> str:
    return f"""# TYPE aicdn_connections_active gauge
aicdn_connections_active{{service="edge",handler="http"}} 4.0
aicdn_connections_active{{service="core",handler="relay"}} 3.0
# TYPE aicdn_requests_total counter
aicdn_requests_total{{service="edge",code="200"}} {requests - errors}
aicdn_requests_total{{service="edge",code="502"}} {errors}
aicdn_requests_created{{service="edge",code="200"}} 1.7e9
# TYPE aicdn_time_to_first_byte_seconds histogram
aicdn_time_to_first_byte_seconds_bucket{{service="edge",le="0.05"}} {fast}
aicdn_time_to_first_byte_seconds_bucket{{service="edge",le="0.1"}} {fast + slow}
aicdn_time_to_first_byte_seconds_bucket{{service="edge",le="+Inf"}} {fast + slow}
aicdn_time_to_first_byte_seconds_count{{service="edge"}} {fast + slow}
aicdn_time_to_first_byte_seconds_sum{{service="edge"}} 1.0
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5.0e7
# TYPE aicdn_config_version gauge
aicdn_config_version 7.0
"""


def test_sampler_computes_interval_values() -> None:
    sampler = MetricsSampler()
    first = sampler.sample(_exposition(100, 0, 100, 0, 1.0), now=10.0)
    assert first.connections == 7 and first.requests_total == 100 and first.errors_total == 0
    assert first.error_rate is None and first.p99_latency_ms is None and first.cpu_percent is None
    assert first.memory_bytes == 50_000_000 and first.config_version == 7
    second = sampler.sample(_exposition(300, 20, 150, 150, 1.5), now=20.0)
    assert second.error_rate == pytest.approx(20 / 200)
    # 200 new: 50 under 50 ms, 150 in (50, 100] ms: p99 is in the second bucket.
    assert second.p99_latency_ms == pytest.approx((0.05 + 0.05 * (198 - 50) / 150) * 1000)
    assert second.cpu_percent == pytest.approx(5.0)
    restarted = sampler.sample(_exposition(5, 0, 5, 0, 0.1), now=30.0)
    assert restarted.error_rate is None and restarted.p99_latency_ms is None
    with pytest.raises(ValueError):
        MetricsSampler().sample("this is { not prometheus", now=1.0)


# --- the applier, against a relay process -----------------------------------------------------


@pytest.fixture
def relay(tmp_path: Path, origin_process: int) -> Iterator[RelayProcess]:
    config = edge_and_core_config(origin_process)
    config["version"] = 1
    process = RelayProcess(config, tmp_path)
    yield process
    assert "Traceback" not in process.stop()


def _current(relay: RelayProcess) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(relay.path.read_text())
    return data


def _pushed(config: dict[str, Any], version: int, checksum: str | None = None) -> PushedConfig:
    text = yaml.safe_dump({**config, "version": version})
    return PushedConfig(version, checksum or hashlib.sha256(text.encode()).hexdigest(), text)


def _applier(relay: RelayProcess) -> tuple[ConfigApplier, RelayApi]:
    api = RelayApi(RelayEndpoints(Address("127.0.0.1", relay.api), None, None), timeout=5)
    return ConfigApplier(str(relay.path), lambda: api, health_timeout=3), api


async def test_applier_applies_and_keeps_the_previous_file(relay: RelayProcess) -> None:
    applier, api = _applier(relay)
    before = relay.path.read_text()
    result = await applier.apply(_pushed(_current(relay), 2))
    assert (result.outcome, result.applied_version) == ("applied", 2)
    assert await api.running_version() == 2
    assert Path(f"{relay.path}.previous").read_text() == before


async def test_applier_rejects_a_bad_checksum_or_a_config_the_node_refuses(
    relay: RelayProcess,
) -> None:
    applier, api = _applier(relay)
    before = relay.path.read_bytes()
    tampered = await applier.apply(_pushed(_current(relay), 2, checksum="0" * 64))
    assert tampered.outcome == "rejected" and "checksum" in tampered.message
    config = _current(relay)
    config["services"][0]["listener"] = {
        "type": "tls",
        "tls": {"certFile": "nope.pem", "keyFile": "nope.key"},
    }
    refused = await applier.apply(_pushed(config, 3))
    assert refused.outcome == "rejected" and refused.applied_version == 1
    assert any("nope.pem" in issue.message for issue in refused.issues)
    wrong_version = _pushed(_current(relay), 4)
    mislabelled = await applier.apply(PushedConfig(5, wrong_version.checksum, wrong_version.yaml))
    assert mislabelled.outcome == "rejected" and mislabelled.issues[0].path == "version"
    assert relay.path.read_bytes() == before
    assert await api.running_version() == 1


async def test_applier_rolls_back_when_the_relay_cannot_take_it(relay: RelayProcess) -> None:
    """Valid everywhere but here: the new service's port is taken on this host."""
    applier, api = _applier(relay)
    before = relay.path.read_bytes()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        config = _current(relay)
        extra = dict(config["services"][0], name="edge-2")
        extra["addr"] = f"127.0.0.1:{squatter.getsockname()[1]}"
        config["services"].append(extra)
        result = await applier.apply(_pushed(config, 2))
    assert result.outcome == "rolled_back", result
    assert "previous config restored and reloaded" in result.message
    assert result.applied_version == 1 and await api.running_version() == 1
    assert relay.path.read_bytes() == before


async def test_endpoints_come_from_the_relay_config(relay: RelayProcess, tmp_path: Path) -> None:
    config = agent_config_from_mapping({**MINIMAL, "relay_config": str(relay.path)})
    endpoints = relay_endpoints(config)
    assert endpoints.api == Address("127.0.0.1", relay.api)
    assert endpoints.metrics == Address("127.0.0.1", relay.metrics)
    api = RelayApi(endpoints)
    sample = MetricsSampler().sample(await api.metrics_text(), now=1.0)
    assert sample.config_version == 1 and sample.memory_bytes


# --- commands without systemd -------------------------------------------------------------------


async def test_commands_without_systemd(relay: RelayProcess, tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    log.write_text("".join(f"line {i}\n" for i in range(300)))
    config = agent_config_from_mapping(
        {
            **MINIMAL,
            "relay_config": str(relay.path),
            "service_manager": "none",
            "relay_log_file": str(log),
        }
    )
    applier, api = _applier(relay)
    runner = CommandRunner(config, lambda: api, lambda: {"node_id": "n1"}, applier.lock)
    logs = await runner.run("logs", {"lines": "3"})
    assert logs.ok and logs.output == "line 297\nline 298\nline 299\n"
    assert not (await runner.run("logs", {"lines": "0"})).ok
    status = await runner.run("status", {})
    assert status.ok and '"version": 1' in status.output and '"node_id": "n1"' in status.output
    reload = await runner.run("reload", {})
    assert reload.ok and '"status": "reloaded"' in reload.output
    for command in ("restart", "stop"):
        outcome = await runner.run(command, {})
        assert not outcome.ok and "systemd" in outcome.error
    assert not (await runner.run("format", {})).ok
    down = RelayApi(RelayEndpoints(Address("127.0.0.1", free_port()), None, None), timeout=1)
    offline = CommandRunner(config, lambda: down, dict, applier.lock)
    assert not (await offline.run("status", {})).ok
    assert not (await offline.run("reload", {})).ok


# --- the agent against a master that misbehaves -------------------------------------------------


class _OddMaster:
    """An AgentService that refuses the first Register, pushes a version whose checksum is
    wrong, and sends a ``status`` command down the stream."""

    def __init__(self) -> None:
        self.registers = 0
        self.heartbeats = 0
        self.pushes = 0
        self.reports: list[pb.ReportStatusRequest] = []
        self.results: list[pb.CommandResult] = []

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        self.registers += 1
        if self.registers == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.RegisterResponse(node_id="n1", name="edge-1", type="edge", region="hk")

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        self.heartbeats += 1
        return pb.HeartbeatResponse(config_updated=True, desired_version=7)

    async def PushConfig(
        self, request: pb.PushConfigRequest, context: Any
    ) -> pb.PushConfigResponse:
        self.pushes += 1
        return pb.PushConfigResponse(version=7, checksum="not-a-digest", config_yaml="x: [")

    async def ReportStatus(
        self, request: pb.ReportStatusRequest, context: Any
    ) -> pb.ReportStatusResponse:
        self.reports.append(request)
        return pb.ReportStatusResponse()

    async def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.NodeStatus:
        return pb.NodeStatus()

    async def ExecuteCommand(self, requests: Any, context: Any) -> None:
        await context.write(pb.Command(id="c1", type=pb.STATUS))
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            if message.HasField("result"):
                self.results.append(message.result)


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_agent_survives_a_master_that_misbehaves(
    relay: RelayProcess, tls: bool, ca: CA, server_cert: CertPair
) -> None:
    from relay.agent.runner import Agent

    master = _OddMaster()
    server = grpc.aio.server()
    add_servicer(master, server)
    settings: dict[str, Any] = {
        "node_id": "n1",
        "token": "t",
        "relay_config": str(relay.path),
        "heartbeat_interval": "0.1s",
        "reconnect_initial": "0.05s",
        "reconnect_max": "0.2s",
        "service_manager": "none",
    }
    if tls:
        credentials = grpc.ssl_server_credentials(
            [(server_cert.key_file.read_bytes(), server_cert.cert_file.read_bytes())]
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        settings["tls"] = {"ca_file": str(ca.cert_file), "server_name": "localhost"}
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # The first master is down: the agent fails over to the second.
    settings["masters"] = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"]
    config = agent_config_from_mapping(settings)
    agent = Agent(config)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        for _ in range(200):
            if master.heartbeats >= 5 and master.results:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await server.stop(0)
    assert master.registers >= 2 and master.heartbeats >= 5
    # The bad version was refused once and not fetched again on every heartbeat.
    assert master.pushes == 1
    assert [(r.version, r.outcome) for r in master.reports] == [(7, pb.REJECTED)]
    assert "checksum mismatch" in master.reports[0].message
    assert master.reports[0].applied_version == 1
    assert master.results[0].id == "c1" and master.results[0].ok
    assert '"version": 1' in master.results[0].output
    assert relay.path.read_text() == yaml.safe_dump(_current(relay))  # untouched
