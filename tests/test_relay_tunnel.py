"""The relay (tunnel server) handler and the forward handler, on real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from relay.protocols import relay_v1
from relay.protocols.relay_v1 import Request, Status
from tests.certs import CertPair, make_ca
from tests.conftest import AUTH, StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.helpers import read_response, request, request_bytes


async def _tunnel(port: int, request: Request, first: bytes) -> tuple[bytes, bytes]:
    """Open a raw tunnel: header plus first data in one write; return (status header, rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(relay_v1.encode_request(request) + first)
    try:
        head = await asyncio.wait_for(reader.readexactly(4), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return head, rest


async def test_authenticated_tunnel_reaches_default_target(
    start_node: StartNode, origin: int
) -> None:
    core = await start_node(core_mapping("tcp", origin))
    get = request_bytes("GET", "/healthz", headers={"connection": "close"})

    head, rest = await _tunnel(core.bound_port("core"), Request(**AUTH), get)

    assert head == relay_v1.encode_response(Status.OK)
    assert rest.startswith(b"HTTP/1.1 200")


async def _answer_to_a_silent_client(port: int) -> bytes:
    """What the core sends a client that sent its header and nothing else, within 1 s (the
    origin speaks only when spoken to)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(relay_v1.encode_request(Request(**AUTH)))
    try:
        return await asyncio.wait_for(reader.read(64), 1.0)
    except TimeoutError:
        return b""
    finally:
        writer.close()


async def test_ok_rides_with_the_targets_first_bytes_unless_nodelay(
    start_node: StartNode, origin: int
) -> None:
    # By default the OK waits for the target's first bytes (one write fewer per tunnel, as
    # gost's handler does); gost's ``nodelay`` handler metadata sends it at once, for clients
    # that read it before they send anything.
    lazy = await start_node(core_mapping("tcp", origin))
    eager = await start_node(core_mapping("tcp", origin, metadata={"nodelay": True}))

    assert await _answer_to_a_silent_client(lazy.bound_port("core")) == b""
    ok = relay_v1.encode_response(Status.OK)
    assert await _answer_to_a_silent_client(eager.bound_port("core")) == ok
    get = request_bytes("GET", "/healthz", headers={"connection": "close"})
    for core in (lazy, eager):
        head, rest = await _tunnel(core.bound_port("core"), Request(**AUTH), get)
        assert head == ok and rest.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("username", "password"), [("edge-1", "wrong"), ("intruder", "s3cret"), (None, None)]
)
async def test_unauthenticated_clients_are_refused(
    start_node: StartNode, origin: int, username: str | None, password: str | None
) -> None:
    core = await start_node(core_mapping("tcp", origin))

    head, rest = await _tunnel(
        core.bound_port("core"),
        Request(username=username, password=password),
        b"GET / HTTP/1.1\r\n\r\n",
    )

    assert head == relay_v1.encode_response(Status.UNAUTHORIZED)
    assert rest == b""
    assert core.runtime("core").stats.blocked["unauthorized"] == 1


async def test_targets_outside_the_forwarder_are_forbidden(
    start_node: StartNode, origin: int
) -> None:
    """Never an open proxy: only the forwarder's nodes may be reached."""
    core = await start_node(core_mapping("tcp", origin))
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        for target in [
            ("127.0.0.1", other.getsockname()[1]),
            ("localhost", origin),
            ("10.1.2.3", 22),
        ]:
            head, _ = await _tunnel(core.bound_port("core"), Request(**AUTH, target=target), b"x")
            assert head == relay_v1.encode_response(Status.FORBIDDEN), target
        get = request_bytes("GET", "/healthz", headers={"connection": "close"})
        allowed = Request(**AUTH, target=("127.0.0.1", origin))
        head, rest = await _tunnel(core.bound_port("core"), allowed, get)
        assert head == relay_v1.encode_response(Status.OK)
        assert rest.startswith(b"HTTP/1.1 200")
    finally:
        other.close()


async def test_garbage_header_gets_bad_request(start_node: StartNode, origin: int) -> None:
    core = await start_node(core_mapping("tcp", origin))
    reader, writer = await asyncio.open_connection("127.0.0.1", core.bound_port("core"))
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == relay_v1.encode_response(Status.BAD_REQUEST)
    writer.close()


async def test_unreachable_target_gets_service_unavailable(start_node: StartNode) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    core = await start_node(core_mapping("tcp", port))

    head, _ = await _tunnel(core.bound_port("core"), Request(**AUTH), b"x")

    assert head == relay_v1.encode_response(Status.SERVICE_UNAVAILABLE)


async def test_forward_handler_carries_l4_through_the_chain(
    start_node: StartNode, origin: int
) -> None:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))], handler="forward")
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    writer.write(request_bytes("GET", "/bytes?n=100000"))
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()

    assert response.status == 200
    assert len(response.body) == 100_000
    stats = edge.runtime("edge").stats
    assert stats.bytes_out >= 100_000
    await wait_for(lambda: stats.connections_active == 0)


async def test_dead_core_fails_over_and_is_retried_after_fail_timeout(
    start_node: StartNode, origin: int
) -> None:
    parked = socket.socket()  # reserve a port, then free it: nothing listens there
    parked.bind(("127.0.0.1", 0))
    dead_port = parked.getsockname()[1]
    parked.close()
    live = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping(
            [
                hop_node("core-1", "tcp", dead_port),
                hop_node("core-2", "tcp", live.bound_port("core")),
            ],
            selector={"strategy": "fifo", "maxFails": 1, "failTimeout": "1s"},
        )
    )
    port = edge.bound_port("edge")
    hop = edge.runtime("edge").chain.hops[0]  # type: ignore[union-attr]

    first = await request(port, "GET", "/healthz")
    assert first.status == 200
    assert hop.nodes[0].failed_until > 0  # core-1 benched
    second = await request(port, "GET", "/healthz")
    assert second.status == 200
    assert live.runtime("core").stats.connections_total == 1  # the idle tunnel served again

    # core-1 comes back on its port; after failTimeout it is first choice again (fifo).
    revived = await start_node(
        {
            **core_mapping("tcp", origin),
            "services": [
                {**core_mapping("tcp", origin)["services"][0], "addr": f"127.0.0.1:{dead_port}"}
            ],
        }
    )
    await asyncio.sleep(1.1)
    third = await request(port, "GET", "/healthz")
    assert third.status == 200
    assert revived.runtime("core").stats.connections_total == 1
    assert live.runtime("core").stats.connections_total == 1


async def test_dialer_verifies_the_core_certificate(
    start_node: StartNode, origin: int, server_cert: CertPair, tmp_path: Path
) -> None:
    """A core whose certificate the edge's CA did not sign is never trusted."""
    core = await start_node(core_mapping("tls", origin, server_cert))
    (tmp_path / "other").mkdir()
    stranger = make_ca(tmp_path / "other", "some other CA")
    edge = await start_node(
        edge_mapping([hop_node("core-1", "tls", core.bound_port("core"), stranger)])
    )

    response = await request(edge.bound_port("edge"), "GET", "/healthz")

    assert response.status == 502
    assert "CERTIFICATE_VERIFY_FAILED" in json.loads(response.body)["message"]
    assert core.runtime("core").stats.bytes_in == 0


async def test_active_probe_benches_a_dead_node_before_any_client_hits_it(
    start_node: StartNode, origin: int
) -> None:
    parked = socket.socket()
    parked.bind(("127.0.0.1", 0))
    dead_port = parked.getsockname()[1]
    parked.close()
    live = await start_node(core_mapping("tcp", origin))
    mapping = edge_mapping(
        [hop_node("core-1", "tcp", dead_port), hop_node("core-2", "tcp", live.bound_port("core"))],
        selector={"strategy": "fifo", "maxFails": 1, "failTimeout": "30s"},
    )
    mapping["chains"][0]["hops"][0]["probe"] = {"type": "tcp", "interval": "100ms", "timeout": "1s"}
    edge = await start_node(mapping)
    hop = edge.runtime("edge").chain.hops[0]  # type: ignore[union-attr]

    await wait_for(lambda: hop.nodes[0].failed_until > 0)

    assert hop.nodes[1].failed_until == 0
    assert [n.name for n in hop.candidates(asyncio.get_running_loop().time())] == [
        "core-1",
        "core-2",
    ][::-1]
