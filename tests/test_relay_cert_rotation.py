"""Certificate rotation without dropping streams: the files of a TLS listener are replaced and
the relay reloaded (SIGHUP); a stream in flight goes on to its end, new connections are served
the new certificate, and files that do not match are refused with the old ones kept."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.certs import CA, CertPair, client_ssl_context, issue
from tests.helpers import chat, request
from tests.processes import RelayProcess, edge_and_core_config, port, wait_http

TOKENS = 60


def _served_certificate(port_: int, ca: CA) -> bytes:
    context = client_ssl_context(ca)
    with (
        socket.create_connection(("127.0.0.1", port_), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(pair: CertPair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert_file.read_text())


def _install(pair: CertPair, directory: Path) -> None:
    shutil.copyfile(pair.cert_file, directory / "edge.pem")
    shutil.copyfile(pair.key_file, directory / "edge.key")


def _reload(relay: RelayProcess, config: dict[str, Any], version: int) -> None:
    relay.write(
        {
            **config,
            "version": version,
            "api": {"addr": f"127.0.0.1:{relay.api}"},
            "metrics": {"addr": f"127.0.0.1:{relay.metrics}"},
        }
    )
    relay.proc.send_signal(signal.SIGHUP)


def _version(relay: RelayProcess) -> int:
    import json

    return int(json.loads(wait_http(f"http://127.0.0.1:{relay.api}/healthz"))["version"])


@pytest.mark.slow
async def test_rotated_certificates_reach_new_connections_and_spare_streams(
    tmp_path: Path, origin_process: int, ca: CA
) -> None:
    old, new = issue(ca, "edge-old"), issue(ca, "edge-new")
    certs = tmp_path / "tls"
    certs.mkdir()
    _install(old, certs)
    config = edge_and_core_config(origin_process)
    config["services"][0]["listener"] = {
        "type": "tls",
        "tls": {"certFile": str(certs / "edge.pem"), "keyFile": str(certs / "edge.key")},
    }
    relay = RelayProcess(config, tmp_path)
    edge = port(config, "edge")
    try:
        assert _served_certificate(edge, ca) == _der(old)
        stream = asyncio.create_task(
            request(
                edge, "POST", "/v1/chat/completions", chat(TOKENS, 50),
                ssl_context=client_ssl_context(ca), timeout=60,
            )
        )  # fmt: skip
        await asyncio.sleep(0.5)  # the stream is under way

        _install(new, certs)
        _reload(relay, config, 2)
        for _ in range(100):
            if _version(relay) == 2:
                break
            await asyncio.sleep(0.05)
        assert _version(relay) == 2
        assert not stream.done()
        assert _served_certificate(edge, ca) == _der(new)

        # A key that does not match its certificate: the reload is refused, the new
        # certificate stays in service.
        shutil.copyfile(old.key_file, certs / "edge.key")
        _reload(relay, config, 3)
        await asyncio.sleep(1.0)
        assert _version(relay) == 2
        assert _served_certificate(edge, ca) == _der(new)

        response = await stream
        assert response.status == 200 and response.complete
        assert len(response.events) == TOKENS + 2  # every token, the stop chunk, [DONE]
    finally:
        log = relay.stop()
    assert "Traceback" not in log, log[-3000:]
