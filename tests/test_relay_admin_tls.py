"""The relay's admin API and metrics endpoint over TLS 1.3 (mutual, with the fleet CA): the
agent's client verifies them and presents the node's certificate, plain HTTP and clients
without a certificate are refused, and a reload serves rotated certificate files."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.agent.config import agent_config_from_mapping
from relay.agent.relay_api import RelayApi, RelayApiError, relay_endpoints
from relay.agent.sampling import MetricsSampler
from tests.certs import CA, CertPair, client_ssl_context, issue
from tests.processes import RELAY, edge_and_core_config, free_port


def _install(pair: CertPair, directory: Path) -> None:
    shutil.copyfile(pair.key_file, directory / "node.key")
    shutil.copyfile(pair.cert_file, directory / "node.pem")


def _served(port: int, ca: CA, client: CertPair) -> bytes:
    context = client_ssl_context(ca, client)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.slow
async def test_admin_and_metrics_over_mutual_tls(
    tmp_path: Path, origin_process: int, ca: CA
) -> None:
    certs = tmp_path / "tls"
    certs.mkdir()
    first = issue(ca, "node-first", ("127.0.0.1", "localhost"))
    _install(first, certs)
    tls: dict[str, Any] = {
        "certFile": str(certs / "node.pem"),
        "keyFile": str(certs / "node.key"),
        "caFile": str(ca.cert_file),
    }
    api, metrics = free_port(), free_port()
    config = {
        **edge_and_core_config(origin_process),
        "api": {"addr": f"127.0.0.1:{api}", "tls": tls},
        "metrics": {"addr": f"127.0.0.1:{metrics}", "path": "/metrics", "tls": tls},
        "version": 1,
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*RELAY, "run", "-C", str(path)], stderr=subprocess.PIPE)
    try:
        endpoints = relay_endpoints(
            agent_config_from_mapping(
                {"masters": ["127.0.0.1:1"], "node_id": "n", "token": "t",
                 "relay_config": str(path)}
            )
        )  # fmt: skip
        assert endpoints.api_tls is not None and endpoints.metrics_tls is not None
        client = RelayApi(endpoints, timeout=5)
        for _ in range(100):
            try:
                health = await client.health()
                break
            except RelayApiError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the relay's admin API never answered over TLS")
        assert health["version"] == 1
        sample = MetricsSampler().sample(await client.metrics_text(), now=1.0)
        assert sample.config_version == 1

        # Plain HTTP, and TLS without a client certificate, get nothing.
        with socket.create_connection(("127.0.0.1", api), timeout=5) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(100).startswith(b"HTTP/1.1 200")
        anonymous = client_ssl_context(ca)
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            socket.create_connection(("127.0.0.1", metrics), timeout=5) as raw,
            anonymous.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(100) == b""
            raise ConnectionError("closed without an answer")

        # Rotation: new files, a reload; new connections get the new certificate.
        assert _served(api, ca, first) == ssl.PEM_cert_to_DER_cert(first.cert_file.read_text())
        second = issue(ca, "node-second", ("127.0.0.1", "localhost"))
        _install(second, certs)
        config["version"] = 2
        path.write_text(yaml.safe_dump(config))
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            try:
                if (await client.health())["version"] == 2:
                    break
            except RelayApiError:
                pass
            await asyncio.sleep(0.1)
        second_der = ssl.PEM_cert_to_DER_cert(second.cert_file.read_text())
        assert _served(api, ca, second) == second_der
        assert _served(metrics, ca, second) == second_der
        answer = await client.reload()
        assert answer.status == 200, answer.body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert b"Traceback" not in err, err[-3000:]
