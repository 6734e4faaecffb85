"""Slow and oversized clients of the http handler: slowloris heads, huge heads, huge bodies."""

from __future__ import annotations

import asyncio
import json

from relay.server import RelayNode
from tests.conftest import StartNode, core_mapping, edge_mapping, hop_node
from tests.helpers import read_response, request_bytes


async def _edge(start_node: StartNode, origin: int, **metadata: object) -> tuple[RelayNode, int]:
    core = await start_node(core_mapping("tcp", origin))
    edge = await start_node(
        edge_mapping([hop_node("core-1", "tcp", core.bound_port("core"))], metadata=metadata)
    )
    return core, edge.bound_port("edge")


async def test_slowloris_head_is_cut_off_by_the_header_timeout(
    start_node: StartNode, origin: int
) -> None:
    core, port = await _edge(start_node, origin, headerTimeout="600ms", keepaliveTimeout="30s")
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\n")

    async def dribble() -> None:
        for _ in range(300):  # one header byte every 50 ms: never a complete head
            writer.write(b"X")
            await asyncio.sleep(0.05)

    dribbler = asyncio.create_task(dribble())
    answer = await asyncio.wait_for(reader.read(), 10)
    elapsed = loop.time() - started
    dribbler.cancel()
    writer.close()

    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "request_timeout" and "headerTimeout" in body["message"]
    assert 0.5 <= elapsed < 5, elapsed  # cut off near 600 ms, far before the dribble ends
    assert core.runtime("core").stats.connections_total == 0  # nothing went upstream


async def test_idle_keep_alive_outlives_the_header_timeout(
    start_node: StartNode, origin: int
) -> None:
    """headerTimeout counts from a head's first byte, not from when the connection went idle."""
    _, port = await _edge(start_node, origin, headerTimeout="300ms", keepaliveTimeout="30s")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("GET", "/v1/models"))
    first = await asyncio.wait_for(read_response(reader), 10)
    await asyncio.sleep(1.0)  # idle for three header timeouts
    writer.write(request_bytes("GET", "/v1/models"))
    second = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert (first.status, second.status) == (200, 200)


async def test_oversized_head_gets_431(start_node: StartNode, origin: int) -> None:
    core, port = await _edge(start_node, origin, maxHeaderSize=4096)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("GET", "/v1/models", headers={"x-big": "a" * 8000}))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "header_too_large"
    assert core.runtime("core").stats.connections_total == 0


async def test_declared_oversized_body_gets_413_before_any_byte_goes_upstream(
    start_node: StartNode, origin: int
) -> None:
    core, port = await _edge(start_node, origin, maxBodySize=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Only the head: the relay must answer from Content-Length, not wait for 5000 bytes.
    writer.write(request_bytes("POST", "/echo", headers={"content-length": "5000"}))
    response = await asyncio.wait_for(read_response(reader), 10)
    rest = await asyncio.wait_for(reader.read(), 10)  # and then it closes the connection
    writer.close()
    assert response.status == 413
    body = json.loads(response.body)
    assert body["error"] == "payload_too_large" and "maxBodySize" in body["message"]
    assert response.headers["connection"] == "close" and rest == b""
    assert core.runtime("core").stats.connections_total == 0


async def test_chunked_body_growing_past_the_limit_gets_413(
    start_node: StartNode, origin: int
) -> None:
    _, port = await _edge(start_node, origin, maxBodySize=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(4):  # 4 x 400 bytes: over the limit at the third chunk
        writer.write(b"190\r\n" + b"z" * 400 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert response.status == 413
    assert json.loads(response.body)["error"] == "payload_too_large"


async def test_bodies_within_the_limit_pass(start_node: StartNode, origin: int) -> None:
    _, port = await _edge(start_node, origin, maxBodySize=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b'{"p": "' + b"k" * 900 + b'"}'
    writer.write(request_bytes("POST", "/echo", payload))
    response = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert response.status == 200
    assert json.loads(response.body)["body"] == payload.decode()
