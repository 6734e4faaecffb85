"""TLS on the master's links: REST and gRPC serve TLS 1.3 with a certificate the agents verify;
the admin-allow check still sees the real client behind the TLS front; certificate files
replaced on disk are served to new connections while open ones carry on."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.certs import CA, CertPair, client_ssl_context, issue, make_ca
from tests.master.agent_processes import AgentProcess, MasterProcess, RelayUnderAgent
from tests.master.conftest import PASSWORD, Caller
from tests.master.helpers import wait_until
from tests.processes import edge_and_core_config


class TlsMaster(MasterProcess):
    """``aicdn-master serve`` with REST and gRPC on TLS (files under ``workdir/tls``)."""

    def __init__(self, mongo_uri: str, workdir: Path, ca: CA, **env: str) -> None:
        self.ca = ca
        self.tls_dir = workdir / "tls"
        super().__init__(
            mongo_uri,
            workdir,
            AICDN_HTTP_TLS_CERT_FILE=str(self.tls_dir / "master.pem"),
            AICDN_HTTP_TLS_KEY_FILE=str(self.tls_dir / "master.key"),
            AICDN_GRPC_TLS_CERT_FILE=str(self.tls_dir / "master.pem"),
            AICDN_GRPC_TLS_KEY_FILE=str(self.tls_dir / "master.key"),
            **env,
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        import subprocess
        import sys

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "master_api", "serve"],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self._healthy(), 30, 0.1)

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/api/v1/healthz")[0] == 200
        except OSError:
            return False

    def connection(self, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1",
            self.http_port,
            context=client_ssl_context(self.ca),
            timeout=10,
            source_address=(source, 0),
        )

    def request(
        self, method: str, path: str, body: Any = None, source: str = "127.0.0.1"
    ) -> tuple[int, Any]:
        conn = self.connection(source)
        try:
            return _call(conn, method, path, body)
        finally:
            conn.close()


def _call(
    conn: http.client.HTTPSConnection, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    raw = answer.read()
    return answer.status, json.loads(raw) if raw else None


def _install(pair: CertPair, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pair.cert_file, directory / "master.pem.tmp")
    shutil.copyfile(pair.key_file, directory / "master.key.tmp")
    # Key first, then certificate, each replaced atomically (what the tls role does).
    (directory / "master.key.tmp").replace(directory / "master.key")
    (directory / "master.pem.tmp").replace(directory / "master.pem")


def _served(port: int, ca: CA, alpn: list[str] | None = None) -> tuple[bytes, str]:
    context = client_ssl_context(ca)
    if alpn:
        context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        version = tls.version()
    assert der is not None and version is not None
    return der, version


def _der(pair: CertPair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_file.read_text())


@pytest.fixture
def pki(tmp_path: Path) -> CA:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_ca(directory)


@pytest.fixture
def master(app: Flask, mongo_uri: str, tmp_path: Path, pki: CA) -> Iterator[TlsMaster]:
    first = issue(pki, "master-1")
    _install(first, tmp_path / "tls")
    process = TlsMaster(mongo_uri, tmp_path, pki, AICDN_ADMIN_ALLOW="127.0.0.2/32")
    process.first_cert = first  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.mark.slow
def test_rest_and_grpc_serve_tls13_and_follow_rotated_files(
    master: TlsMaster, operator: Caller, origin_process: int, tmp_path: Path, pki: CA
) -> None:
    first: CertPair = master.first_cert  # type: ignore[attr-defined]
    assert _served(master.http_port, pki) == (_der(first), "TLSv1.3")
    assert _served(master.grpc_port, pki, ["h2"]) == (_der(first), "TLSv1.3")
    # A client that stops at TLS 1.2 is refused.
    old_client = client_ssl_context(pki)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", master.http_port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        old_client.wrap_socket(raw, server_hostname="localhost")

    # The admin-allow list (127.0.0.2 only) is checked against the client behind the front.
    login = {"username": "operator", "password": PASSWORD}
    assert master.request("POST", "/api/v1/auth/login", login, source="127.0.0.1")[0] == 403
    status, tokens = master.request("POST", "/api/v1/auth/login", login, source="127.0.0.2")
    assert status == 200, tokens

    # An agent verifying the master with the fleet CA registers and heartbeats over gRPC TLS;
    # one that trusts another CA never gets through.
    relay = RelayUnderAgent(edge_and_core_config(origin_process), tmp_path / "edge")
    node = operator.post(
        "/api/v1/nodes",
        json={"name": "edge-1", "type": "edge", "region": "hk", "addr": "127.0.0.1", "port": 443},
    ).json
    other = make_ca(tmp_path / "edge", "some other CA")
    stranger = AgentProcess(
        tmp_path / "edge", [master.grpc_addr], node["id"], node["token"], relay,
        tls={"ca_file": str(other.cert_file), "server_name": "localhost"},
    )  # fmt: skip
    time.sleep(2.0)
    assert operator.get(f"/api/v1/nodes/{node['id']}").json["last_seen"] is None
    stranger.stop()
    agent = AgentProcess(
        tmp_path / "edge", [master.grpc_addr], node["id"], node["token"], relay,
        tls={"ca_file": str(pki.cert_file), "server_name": "localhost"},
    )  # fmt: skip
    try:
        wait_until(lambda: operator.get(f"/api/v1/nodes/{node['id']}").json["last_seen"], 15)

        # Rotation: a keep-alive REST connection opened before it carries on after it.
        kept = master.connection(source="127.0.0.2")
        assert _call(kept, "GET", "/api/v1/healthz")[0] == 200
        second = issue(pki, "master-2")
        _install(second, master.tls_dir)
        time.sleep(1.2)  # the files are looked at once a second at most
        wait_until(lambda: _served(master.http_port, pki)[0] == _der(second), 10)
        wait_until(lambda: _served(master.grpc_port, pki, ["h2"])[0] == _der(second), 10)
        assert _call(kept, "GET", "/api/v1/healthz")[0] == 200
        kept.close()
        # The agent's channel (opened under the first certificate) keeps heartbeating.
        seen = operator.get(f"/api/v1/nodes/{node['id']}").json["last_seen"]
        wait_until(
            lambda: operator.get(f"/api/v1/nodes/{node['id']}").json["last_seen"] != seen, 10
        )
    finally:
        agent_log = agent.stop()
        relay.stop()
    assert "Traceback" not in agent_log, agent_log[-3000:]
    assert "Traceback" not in master.log(), master.log()[-3000:]
