"""The http handler's failure answers: 502/504 as JSON, retries, broken streams stay broken."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from relay.protocols import http1
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node, wait_for
from tests.helpers import chat, read_response, request, request_bytes


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_no_reachable_core_gives_json_502(start_node: StartNode) -> None:
    edge = await start_node(edge_mapping([hop_node("core-1", "tcp", _free_port())]))

    response = await request(edge.bound_port("edge"), "GET", "/v1/models")

    assert response.status == 502
    body = json.loads(response.body)
    assert body["error"] == "bad_gateway"
    assert "core-1" in body["message"] or "no node reachable" in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


async def test_ttfb_timeout_gives_json_504(start_node: StartNode, origin: int) -> None:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping(
            [hop_node("core-1", "tcp", core.bound_port("core"))],
            metadata={"ttfbTimeout": "300ms"},
        )
    )
    loop = asyncio.get_running_loop()
    started = loop.time()

    response = await request(
        edge.bound_port("edge"), "POST", "/v1/chat/completions", chat(3, ttfb_ms=3000)
    )

    assert response.status == 504
    assert json.loads(response.body)["error"] == "gateway_timeout"
    assert "ttfbTimeout" in json.loads(response.body)["message"]
    assert loop.time() - started < 2.5


async def test_idle_timeout_breaks_the_stream_visibly(start_node: StartNode, origin: int) -> None:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping(
            [hop_node("core-1", "tcp", core.bound_port("core"))],
            metadata={"idleTimeout": "300ms"},
        )
    )

    response = await request(
        edge.bound_port("edge"), "POST", "/v1/chat/completions", chat(5, interval_ms=1500)
    )

    assert response.status == 200
    assert not response.complete  # no terminating chunk: the client knows it was cut
    assert len(response.events) < 5


async def test_refused_tunnel_is_retried_on_the_next_core(
    start_node: StartNode, origin: int
) -> None:
    """core-1 cannot reach its origin and refuses; no byte reached an origin, so core-2 serves."""
    broken = await start_node(core_mapping("tcp", _free_port()))
    healthy = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping(
            [
                hop_node("core-1", "tcp", broken.bound_port("core")),
                hop_node("core-2", "tcp", healthy.bound_port("core")),
            ],
            selector={"strategy": "fifo"},
        )
    )

    response = await request(edge.bound_port("edge"), "POST", "/echo", {"prompt": "x" * 5000})

    assert response.status == 200
    assert json.loads(json.loads(response.body)["body"]) == {"prompt": "x" * 5000}
    assert healthy.runtime("core").stats.connections_total == 1


async def _resetting_origin(chunks: int) -> asyncio.Server:
    """An origin that starts a chunked stream, then resets the connection mid-body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(chunks):
            event = b'data: {"seq": %d}\n\n' % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.02)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_origin_reset_mid_stream_reaches_the_client_as_an_error(
    start_node: StartNode,
) -> None:
    server = await _resetting_origin(3)
    try:
        core = await start_node(core_mapping("tcp", server.sockets[0].getsockname()[1]))
        edge = await start_node(edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))]))

        response = await request(edge.bound_port("edge"), "POST", "/v1/chat/completions", chat(3))

        assert response.status == 200
        assert [e["seq"] for _, e in response.events] == [0, 1, 2]
        assert not response.complete
        stats = edge.runtime("edge").stats
        await wait_for(lambda: stats.connections_active == 0)
    finally:
        server.close()


async def test_malformed_request_gets_400(start_node: StartNode, origin: int) -> None:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))]))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"error": "bad_request"' in answer


async def test_request_bodies_stream_upstream_chunked_and_large(
    start_node: StartNode, origin: int
) -> None:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))]))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))
    parts = [b'{"a": "', b"x" * 3000, b'", "b": ', b"1}"]
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in parts:  # arrives in pieces, as an SDK streaming its upload would send it
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\nx-upload-checksum: 1\r\n\r\n")  # with a trailer field
    chunked = await asyncio.wait_for(read_response(reader), 10)
    big = b'{"p": "' + b"y" * (3 << 20) + b'"}'  # larger than the retry buffer
    writer.write(request_bytes("POST", "/echo", big))
    large = await asyncio.wait_for(read_response(reader), 10)
    writer.close()

    assert chunked.status == 200
    assert json.loads(json.loads(chunked.body)["body"]) == {"a": "x" * 3000, "b": 1}
    assert large.status == 200
    assert len(json.loads(large.body)["body"]) == len(big)
    assert core.runtime("core").stats.connections_total == 1  # one upstream, kept alive
    assert http1.NO_HEADERS == []  # the trailer went nowhere, least of all into the shared list


async def test_new_client_connections_reuse_idle_tunnels(
    start_node: StartNode, origin: int
) -> None:
    """A stream that finds an idle tunnel starts at once: no TCP/TLS/relay set-up per client."""
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))]))

    for _ in range(5):  # five clients, one after the other, each on its own connection
        response = await request(edge.bound_port("edge"), "POST", "/v1/chat/completions", chat(3))
        assert response.status == 200 and response.complete

    assert edge.runtime("edge").stats.connections_total == 5
    assert core.runtime("core").stats.connections_total == 1


async def _dribbling_origin() -> tuple[asyncio.Server, list[int]]:
    """An origin that answers each request on a connection with a chunked SSE stream sent
    one byte per write (chunk extensions and a trailer included); counts its connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            head += b"transfer-encoding: chunked\r\n\r\n"
            events = [b'data: {"seq": %d}\n\n' % i for i in range(3)]
            body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in events)
            for byte in head + body + b"0\r\nx-checksum: 1\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


async def test_a_response_cut_into_single_bytes_streams_whole_and_its_upstream_is_reused(
    start_node: StartNode,
) -> None:
    server, connections = await _dribbling_origin()
    try:
        core = await start_node(core_mapping("tcp", server.sockets[0].getsockname()[1]))
        edge = await start_node(edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))]))
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.bound_port("edge"))

        body = json.dumps(chat(3)).encode()
        for _ in range(2):
            writer.write(request_bytes("POST", "/v1/chat/completions", body))
            response = await asyncio.wait_for(read_response(reader), 10)

            assert response.status == 200
            assert [e["seq"] for _, e in response.events] == [0, 1, 2]
            assert response.complete
            assert "x-checksum" not in response.headers  # the origin's trailer is not passed on

        assert len(connections) == 1  # the second request went over the pooled upstream
        writer.close()
    finally:
        server.close()
