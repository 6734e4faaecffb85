"""Shared fixtures: certificates made per session, the LLM-like origin, relay nodes on port 0."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relay.config import config_from_mapping
from relay.dev_origin import serve_origin
from relay.server import RelayNode
from tests.certs import CA, CertPair, issue, make_ca

AUTH = {"username": "edge-1", "password": "s3cret"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The relay runs on uvloop in production (``uvloop.run``), so the tests do too."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def server_cert(ca: CA) -> CertPair:
    return issue(ca, "localhost", ("localhost", "127.0.0.1"))


@pytest.fixture
async def origin() -> AsyncIterator[int]:
    server = await serve_origin("127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


@pytest.fixture
def origin_process() -> Iterator[int]:
    """The dev origin in its own process (for tests that run relays as processes)."""
    from tests.processes import RELAY, free_port, wait_http

    port = free_port()
    proc = subprocess.Popen([*RELAY, "dev-origin", "--listen", f"127.0.0.1:{port}"])
    wait_http(f"http://127.0.0.1:{port}/healthz")
    yield port
    proc.terminate()
    proc.wait(10)


StartNode = Callable[[dict[str, Any]], Awaitable[RelayNode]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """Start relay nodes from gost-style mappings; all are stopped at teardown."""
    nodes: list[RelayNode] = []

    async def start(mapping: dict[str, Any]) -> RelayNode:
        node = RelayNode(config_from_mapping(mapping, base_dir=str(tmp_path)))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop(0)


def core_mapping(
    transport: str, origin_port: int, cert: CertPair | None = None, **handler: Any
) -> dict[str, Any]:
    """A core node: a relay (tunnel server) service whose only target is the origin."""
    listener: dict[str, Any] = {"type": transport}
    if transport in ("tls", "wss", "mtls"):
        assert cert is not None
        listener["tls"] = {"certFile": str(cert.cert_file), "keyFile": str(cert.key_file)}
    if transport in ("ws", "wss"):
        listener["metadata"] = {"path": "/tunnel"}
    return {
        "services": [
            {
                "name": "core",
                "addr": "127.0.0.1:0",
                "listener": listener,
                "handler": {"type": "relay", "auth": dict(AUTH), **handler},
                "forwarder": {"nodes": [{"name": "origin", "addr": f"127.0.0.1:{origin_port}"}]},
            }
        ]
    }


def hop_node(
    name: str, transport: str, port: int, ca: CA | None = None, auth: dict[str, str] | None = None
) -> dict[str, Any]:
    dialer: dict[str, Any] = {"type": transport}
    if transport in ("tls", "wss", "mtls"):
        assert ca is not None
        dialer["tls"] = {"caFile": str(ca.cert_file), "serverName": "localhost"}
    if transport in ("ws", "wss"):
        dialer["metadata"] = {"path": "/tunnel"}
    return {
        "name": name,
        "addr": f"127.0.0.1:{port}",
        "connector": {"type": "relay", "auth": dict(auth or AUTH)},
        "dialer": dialer,
    }


def edge_mapping(
    nodes: list[dict[str, Any]],
    handler: str = "http",
    selector: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An edge node: one entry service chained to core nodes (one hop)."""
    hop: dict[str, Any] = {"name": "core", "nodes": nodes}
    if selector:
        hop["selector"] = selector
    service: dict[str, Any] = {
        "name": "edge",
        "addr": "127.0.0.1:0",
        "listener": {"type": "tcp"},
        "handler": {"type": handler, "chain": "to-core", "metadata": metadata or {}},
    }
    service.update(extra)
    return {"services": [service], "chains": [{"name": "to-core", "hops": [hop]}]}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
