"""The loop with TLS on every link: master REST and gRPC on TLS 1.3 (agents verify the fleet
CA), an edge whose client entry, tunnel to the core, admin API and metrics are all TLS (the
admin API and metrics mutual), configured by the master (a ``peers`` hop dialling the core over
TLS), and a streamed completion through edge -> core -> origin. Mid-stream, every node
certificate is rotated and the relays reloaded through the master's command API (master ->
agent over gRPC TLS -> relay admin API over mutual TLS): the stream goes on to its last token
and new connections get the new certificates."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from tests.certs import CA, CertPair, client_ssl_context, issue, make_ca
from tests.conftest import AUTH
from tests.helpers import chat, request
from tests.master.agent_processes import AgentProcess
from tests.master.conftest import PASSWORD, Caller
from tests.master.helpers import wait_until
from tests.master.test_master_tls import TlsMaster, _install
from tests.processes import RELAY, free_port

TOKENS = 80


@pytest.fixture
def pki(tmp_path: Path) -> CA:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_ca(directory, "fleet CA")


@pytest.fixture
def master(app: Flask, mongo_uri: str, tmp_path: Path, pki: CA) -> Iterator[TlsMaster]:
    _install(issue(pki, "master"), tmp_path / "tls")
    process = TlsMaster(mongo_uri, tmp_path, pki, AICDN_HEARTBEAT_INTERVAL="0.5")
    yield process
    process.stop()


class TlsRelay:
    """A relay process whose node certificate is ``<dir>/tls/node.pem|key``, its admin API
    and metrics on mutual TLS with the fleet CA."""

    def __init__(self, name: str, directory: Path, pki: CA, config: dict[str, Any]) -> None:
        self.name = name
        self.pki = pki
        self.dir = directory
        self.tls_dir = directory / "tls"
        self.tls_dir.mkdir(parents=True)
        self.rotate()
        self.api, self.metrics = free_port(), free_port()
        self.path = directory / "relay.yaml"
        self.log_path = directory / "relay.log"
        self.config = self.with_endpoints(config)
        self.path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*RELAY, "run", "-C", str(self.path)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._healthy, 15, 0.1)

    @property
    def node_tls(self) -> dict[str, str]:
        return {
            "certFile": str(self.tls_dir / "node.pem"),
            "keyFile": str(self.tls_dir / "node.key"),
            "caFile": str(self.pki.cert_file),
        }

    def with_endpoints(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            **config,
            "api": {"addr": f"127.0.0.1:{self.api}", "tls": self.node_tls},
            "metrics": {"addr": f"127.0.0.1:{self.metrics}", "path": "/metrics",
                        "tls": self.node_tls},
        }  # fmt: skip

    def rotate(self) -> CertPair:
        """A new node certificate from the fleet CA, installed key first (as the tls role)."""
        pair = issue(self.pki, f"{self.name}-{time.monotonic_ns()}", ("127.0.0.1", "localhost"))
        for source, target in ((pair.key_file, "node.key"), (pair.cert_file, "node.pem")):
            shutil.copyfile(source, self.tls_dir / f"{target}.tmp")
            (self.tls_dir / f"{target}.tmp").replace(self.tls_dir / target)
        self.current = pair
        return pair

    def admin(self, path: str) -> dict[str, Any]:
        context = client_ssl_context(self.pki, self.current)
        with (
            socket.create_connection(("127.0.0.1", self.api), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        answer: dict[str, Any] = json.loads(body)
        return answer

    def _healthy(self) -> bool:
        try:
            return bool(self.admin("/healthz"))
        except (OSError, AssertionError):
            return False

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        return self.log_path.read_text(errors="replace")


def listener_tls(directory: Path) -> dict[str, str]:
    """The node certificate's files, as a listener's ``tls``."""
    return {"certFile": str(directory / "tls" / "node.pem"),
            "keyFile": str(directory / "tls" / "node.key")}  # fmt: skip


def served(port: int, pki: CA) -> bytes:
    context = client_ssl_context(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        assert conn.version() == "TLSv1.3"
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pair: CertPair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_file.read_text())


def register(op: Caller, name: str, type_: str, port: int) -> dict[str, Any]:
    answer = op.post(
        "/api/v1/nodes",
        json={"name": name, "type": type_, "region": "hk", "addr": "127.0.0.1", "port": port},
    )
    assert answer.status_code == 201, answer.json
    node: dict[str, Any] = answer.json
    return node


@pytest.mark.slow
async def test_tls_everywhere_and_rotation_under_a_live_stream(
    master: TlsMaster, operator: Caller, origin_process: int, tmp_path: Path, pki: CA
) -> None:
    core_port, entry = free_port(), free_port()
    core_cfg: dict[str, Any] = {
        "services": [{
            "name": "tunnel", "addr": f"127.0.0.1:{core_port}",
            "listener": {"type": "tls", "tls": listener_tls(tmp_path / "core")},
            "handler": {"type": "relay", "auth": dict(AUTH)},
            "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin_process}"}]},
        }],
    }  # fmt: skip
    core = TlsRelay("core-1", tmp_path / "core", pki, core_cfg)

    def edge_cfg(hop: dict[str, Any]) -> dict[str, Any]:
        return {
            "services": [{
                "name": "entry", "addr": f"127.0.0.1:{entry}",
                "listener": {"type": "tls", "tls": listener_tls(tmp_path / "edge")},
                "handler": {"type": "http", "chain": "to-core"},
            }],
            "chains": [{"name": "to-core", "hops": [hop]}],
        }  # fmt: skip

    dialer = {"type": "tls", "tls": {"caFile": str(pki.cert_file)}}
    connector = {"type": "relay", "auth": dict(AUTH)}
    bootstrap = edge_cfg({"name": "core", "nodes": [
        {"name": "bootstrap", "addr": f"127.0.0.1:{core_port}", "connector": connector,
         "dialer": {"type": "tls", "tls": {"caFile": str(pki.cert_file),
                                            "serverName": "127.0.0.1"}}}]})  # fmt: skip
    edge = TlsRelay("edge-1", tmp_path / "edge", pki, bootstrap)

    agent_tls = {"ca_file": str(pki.cert_file), "server_name": "localhost"}
    nodes = {"core-1": register(operator, "core-1", "core", core_port),
             "edge-1": register(operator, "edge-1", "edge", entry)}  # fmt: skip
    agents = [
        AgentProcess(relay.dir, [master.grpc_addr], nodes[relay.name]["id"],
                     nodes[relay.name]["token"], relay, tls=agent_tls)  # type: ignore[arg-type]
        for relay in (core, edge)
    ]  # fmt: skip
    try:
        version = edge.with_endpoints(
            edge_cfg({"name": "core", "peers": {"type": "core", "connector": connector,
                                                "dialer": dialer}})
        )  # fmt: skip
        created = operator.post(
            "/api/v1/configs", json={"node_type": "edge", "config_data": yaml.safe_dump(version)}
        )
        assert created.status_code == 201, created.json
        v1 = created.json["version_id"]
        assert operator.post(f"/api/v1/configs/{v1}/publish").status_code == 200
        wait_until(lambda: edge.admin("/healthz")["version"] == v1, 20, 0.2)
        running = edge.admin("/config")
        assert running["chains"][0]["hops"][0]["nodes"][0]["name"] == "core-1"

        client = client_ssl_context(pki)
        first = await request(entry, "POST", "/v1/chat/completions", chat(3, 1),
                              ssl_context=client)  # fmt: skip
        assert first.status == 200 and first.complete
        stream = asyncio.create_task(
            request(entry, "POST", "/v1/chat/completions", chat(TOKENS, 50),
                    ssl_context=client, timeout=60)
        )  # fmt: skip
        await asyncio.sleep(0.8)  # under way through edge and core, both over TLS

        # Rotate every node certificate; reload the relays through the master.
        status, tokens = master.request(
            "POST", "/api/v1/auth/login", {"username": "operator", "password": PASSWORD}
        )
        assert status == 200, tokens
        new = {relay.name: relay.rotate() for relay in (core, edge)}
        for name in ("core-1", "edge-1"):
            conn = master.connection()
            try:
                path = f"/api/v1/nodes/{nodes[name]['id']}/commands"
                data = json.dumps({"command": "reload"}).encode()
                conn.request("POST", path, body=data, headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {tokens['access_token']}"})  # fmt: skip
                answer = conn.getresponse()
                result = json.loads(answer.read())
            finally:
                conn.close()
            assert answer.status == 200 and result["ok"] is True, result
        assert not stream.done()
        assert served(entry, pki) == der(new["edge-1"])
        assert served(core_port, pki) == der(new["core-1"])
        assert edge.admin("/healthz")["version"] == v1  # reachable with the new pair too

        response = await stream
        assert response.status == 200 and response.complete
        assert len(response.events) == TOKENS + 2  # every token, the stop chunk, [DONE]
        after = await request(entry, "POST", "/v1/chat/completions", chat(3, 1),
                              ssl_context=client)  # fmt: skip
        assert after.status == 200 and after.complete
        node = operator.get(f"/api/v1/nodes/{nodes['edge-1']['id']}").json
        assert node["applied_version"] == v1 and node["metrics"]["config_version"] == v1
    finally:
        logs = [agent.stop() for agent in agents] + [edge.stop(), core.stop()]
    for log in logs:
        assert "Traceback" not in log, log[-3000:]
