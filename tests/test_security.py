"""Security properties of the relay (issue 10): never an open proxy on any transport, the admin
API needs its token, and dialers that skip certificate verification are loudly logged."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from relay.transports.quic import tunnel_pool
from tests.certs import CA, CertPair
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node
from tests.helpers import read_response, request_bytes

TRANSPORTS = ["tcp", "tls", "ws", "wss", "quic"]


@pytest.fixture(autouse=True)
async def _close_tunnels() -> Any:
    yield
    tunnel_pool().close()


def _core(transport: str, origin: int, cert: CertPair) -> dict[str, Any]:
    mapping = core_mapping(transport, origin, cert if transport in ("tls", "wss") else None)
    if transport == "quic":
        mapping["services"][0]["listener"]["tls"] = {
            "certFile": str(cert.cert_file),
            "keyFile": str(cert.key_file),
        }
    return mapping


def _hop(transport: str, port: int, ca: CA) -> dict[str, Any]:
    hop = hop_node("core-1", transport, port, ca if transport in ("tls", "wss") else None)
    if transport == "quic":
        hop["dialer"]["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost"}
    return hop


async def _forward_to(
    start_node: StartNode, core_port: int, transport: str, ca: CA, target: int
) -> int:
    """An edge port forward through the core to 127.0.0.1:``target``: the edge asks the core
    for that target in the relay header, as any tunnel client could."""
    mapping = edge_mapping([_hop(transport, core_port, ca)], handler="forward")
    mapping["services"][0]["forwarder"] = {
        "nodes": [{"name": "target", "addr": f"127.0.0.1:{target}"}]
    }
    edge = await start_node(mapping)
    return edge.bound_port("edge")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_core_is_never_an_open_proxy(
    start_node: StartNode, origin: int, ca: CA, server_cert: CertPair, transport: str
) -> None:
    core = await start_node(_core(transport, origin, server_cert))
    core_port = core.bound_port("core")
    outsider = socket.socket()
    outsider.bind(("127.0.0.1", 0))
    outsider.listen()
    outsider.setblocking(False)
    try:
        forbidden = await _forward_to(
            start_node, core_port, transport, ca, outsider.getsockname()[1]
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", forbidden)
        writer.write(request_bytes("GET", "/healthz"))
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer == b""  # the tunnel was refused: nothing came back, the edge closed
        with pytest.raises(BlockingIOError):
            outsider.accept()  # and nobody ever connected to the outsider
        assert core.runtime("core").stats.blocked.get("forbidden_target", 0) == 1

        # The same path to the forwarder's own target works: the refusal is about the target.
        allowed = await _forward_to(start_node, core_port, transport, ca, origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", allowed)
        writer.write(request_bytes("GET", "/healthz"))
        response = await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        assert response.status == 200
    finally:
        outsider.close()


async def _admin(port: int, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    writer.write(request_bytes(method, path, headers={**headers, "connection": "close"}))
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    return response.status, response.body


async def test_admin_api_refuses_calls_without_the_token(
    start_node: StartNode, origin: int
) -> None:
    mapping = core_mapping("tcp", origin)
    mapping["api"] = {"addr": "127.0.0.1:0", "auth": {"token": "admin-t0ken"}}
    node = await start_node(mapping)
    port = node.admin_port
    assert port is not None

    for method, path in (("GET", "/config"), ("POST", "/reload")):
        for token in (None, "wrong", "admin-t0ken " + "x", ""):
            status, body = await _admin(port, method, path, token)
            assert status == 401, (method, path, token)
            assert json.loads(body)["error"] == "unauthorized"
    status, body = await _admin(port, "GET", "/config", "admin-t0ken")
    assert status == 200
    assert b"admin-t0ken" not in body and b"s3cret" not in body  # served redacted
    status, _ = await _admin(port, "GET", "/healthz", None)  # liveness stays open
    assert status == 200


async def test_dialers_verify_unless_told_not_to_and_then_the_log_warns(
    start_node: StartNode, origin: int, server_cert: CertPair, caplog: pytest.LogCaptureFixture
) -> None:
    core = await start_node(_core("tls", origin, server_cert))
    port = core.bound_port("core")
    caplog.set_level(logging.WARNING, logger="relay")

    verifying = hop_node("core-1", "tcp", port)
    verifying["dialer"] = {"type": "tls"}  # no caFile: the system store, which fails
    edge = await start_node(edge_mapping([verifying]))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    writer.write(request_bytes("GET", "/healthz"))
    refused = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert refused.status == 502
    assert "insecureSkipVerify" not in caplog.text

    insecure = hop_node("core-1", "tcp", port)
    insecure["dialer"] = {"type": "tls", "tls": {"insecureSkipVerify": True}}
    edge = await start_node(edge_mapping([insecure]))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    writer.write(request_bytes("GET", "/healthz"))
    served = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert served.status == 200
    warnings = [r for r in caplog.records if "insecureSkipVerify" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "core-1" in warnings[0].getMessage() and "NOT verified" in warnings[0].getMessage()
