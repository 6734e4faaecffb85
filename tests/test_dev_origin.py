"""The dev origin over real loopback sockets, with a minimal asyncio-streams HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.dev_origin import BYTES_ALPHABET, main, serve_origin
from tests.certs import client_ssl_context, issue, make_ca, server_ssl_context

#: How long after its ``sent_at`` an event may arrive on loopback. Generous next to the ~0.1 ms
#: it really takes, because CI machines are shared and noisy.
ARRIVAL_SLACK = 0.015


# --- a tiny HTTP/1.1 client ----------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def request_bytes(
    method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: origin.test"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def chat_request(**fields: Any) -> bytes:
    doc = {"model": "test-model", "messages": [{"role": "user", "content": "hi there"}]}
    doc.update(fields)
    return request_bytes("POST", "/v1/chat/completions", json.dumps(doc).encode())


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and lowercased headers; ``1xx`` interim responses are returned like any other."""
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")[:-2]
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


async def read_chunks(reader: asyncio.StreamReader) -> list[tuple[bytes, float]]:
    """Each chunk of a chunked body with its arrival time (``time.time()``), to the 0-chunk."""
    chunks: list[tuple[bytes, float]] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        arrived = time.time()
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert await reader.readexactly(2) == b"\r\n"  # No trailers.
            return chunks
        data = await reader.readexactly(size + 2)
        assert data.endswith(b"\r\n")
        chunks.append((data[:-2], arrived))


async def read_response(reader: asyncio.StreamReader) -> Response:
    status, headers = await read_head(reader)
    if headers.get("transfer-encoding") == "chunked":
        body = b"".join(chunk for chunk, _ in await read_chunks(reader))
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # Close-delimited.
    return Response(status, headers, body)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), timeout=2) == b""


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def origin() -> AsyncIterator[int]:
    server = await serve_origin()
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def conn(origin: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", origin)
    connection = Conn(reader, writer)
    yield connection
    await connection.close()


async def roundtrip(conn: Conn, raw: bytes) -> Response:
    conn.writer.write(raw)
    return await asyncio.wait_for(read_response(conn.reader), timeout=10)


# --- streaming -----------------------------------------------------------------------------------


async def test_stream_delivers_paced_events_then_done(conn: Conn) -> None:
    tokens, interval = 5, 0.04
    conn.writer.write(chat_request(stream=True, max_tokens=tokens, interval_ms=interval * 1000))
    status, headers = await read_head(conn.reader)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    chunks = await asyncio.wait_for(read_chunks(conn.reader), timeout=5)

    # One SSE event per HTTP chunk: the tokens, the stop event, then [DONE] last.
    assert len(chunks) == tokens + 2
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c, _ in chunks)
    assert chunks[-1][0] == b"data: [DONE]\n\n"
    events = [json.loads(c[len(b"data: ") :]) for c, _ in chunks[:-1]]
    for i, event in enumerate(events[:tokens]):
        assert event["object"] == "chat.completion.chunk"
        assert event["model"] == "test-model"
        assert event["seq"] == i
        assert event["choices"] == [
            {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
        ]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({e["id"] for e in events}) == 1

    sent = [e["sent_at"] for e in events]
    for (_, arrived), sent_at in zip(chunks, sent, strict=False):
        assert -0.002 <= arrived - sent_at <= ARRIVAL_SLACK
    # Event i is written no earlier than i intervals after the first (the schedule is absolute,
    # so a late event is followed by a shorter gap, never by drift); the 2 ms allow for rounding
    # between the loop's clock and time.time().
    for i, sent_at in enumerate(sent):
        assert sent_at - sent[0] >= i * interval - 0.002
    assert sum(b - a for a, b in itertools.pairwise(sent)) / tokens == pytest.approx(
        interval, abs=0.01
    )


async def test_stream_ttfb_delays_the_first_byte(conn: Conn) -> None:
    started = time.monotonic()
    conn.writer.write(chat_request(stream=True, max_tokens=1, ttfb_ms=150, interval_ms=1))
    status, _ = await asyncio.wait_for(read_head(conn.reader), timeout=5)
    assert status == 200
    assert time.monotonic() - started >= 0.148
    assert len(await read_chunks(conn.reader)) == 3


async def test_stream_with_zero_tokens_sends_stop_and_done(conn: Conn) -> None:
    response = await roundtrip(conn, chat_request(stream=True, max_tokens=0))
    assert response.status == 200
    assert response.body.count(b"data: ") == 2
    assert response.body.endswith(b"data: [DONE]\n\n")


async def test_http10_stream_is_close_delimited(origin: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", origin)
    body = json.dumps({"stream": True, "max_tokens": 2, "interval_ms": 1}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    response = await asyncio.wait_for(read_response(reader), timeout=5)
    assert response.status == 200
    assert "transfer-encoding" not in response.headers
    assert response.body.endswith(b"data: [DONE]\n\n")
    writer.close()


async def test_client_leaving_mid_stream_does_not_disturb_the_origin(origin: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", origin)
    writer.write(chat_request(stream=True, max_tokens=1000, interval_ms=5))
    await read_head(reader)
    await reader.readuntil(b"\n\n")
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)  # Ticks for the dead stream come and go.
    reader, writer = await asyncio.open_connection("127.0.0.1", origin)
    fresh = Conn(reader, writer)
    assert (await roundtrip(fresh, request_bytes("GET", "/healthz"))).body == b"ok"
    await fresh.close()


# --- non-streaming and small endpoints -----------------------------------------------------------


async def test_non_stream_completion(conn: Conn) -> None:
    response = await roundtrip(conn, chat_request(max_tokens=3))
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)
    doc = response.json()
    assert doc["object"] == "chat.completion"
    assert doc["model"] == "test-model"
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_non_stream_default_max_tokens_is_16(conn: Conn) -> None:
    doc = (await roundtrip(conn, chat_request())).json()
    assert doc["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"max_tokens": -1}',
        b'{"max_tokens": 1.5}',
        b'{"max_tokens": true}',
        b'{"stream": "yes"}',
        b'{"interval_ms": "fast"}',
        b'{"messages": {}}',
    ],
)
async def test_bad_chat_body_is_400(conn: Conn, body: bytes) -> None:
    response = await roundtrip(conn, request_bytes("POST", "/v1/chat/completions", body))
    assert response.status == 400
    assert response.json()["error"]["message"]


async def test_models_and_healthz(conn: Conn) -> None:
    models = await roundtrip(conn, request_bytes("GET", "/v1/models"))
    assert models.status == 200
    assert models.json()["object"] == "list"
    health = await roundtrip(conn, request_bytes("GET", "/healthz"))
    assert (health.status, health.body) == (200, b"ok")


async def test_unknown_path_is_json_404(conn: Conn) -> None:
    response = await roundtrip(conn, request_bytes("GET", "/nowhere"))
    assert response.status == 404
    assert response.json()["error"]["type"] == "not_found_error"
    # A 404 is an answer, not a protocol failure: the connection stays usable.
    assert (await roundtrip(conn, request_bytes("GET", "/healthz"))).status == 200


async def test_wrong_method_is_405(conn: Conn) -> None:
    response = await roundtrip(conn, request_bytes("GET", "/echo"))
    assert response.status == 405
    assert response.headers["allow"] == "POST"


# --- /echo ---------------------------------------------------------------------------------------


async def test_echo_returns_headers_and_content_length_body(conn: Conn) -> None:
    raw = request_bytes(
        "POST",
        "/echo?x=1",
        b'{"hello": "world"}',
        {"X-Forwarded-For": "10.0.0.1", "X-Request-ID": "req-42"},
    )
    doc = (await roundtrip(conn, raw)).json()
    assert doc["method"] == "POST"
    assert doc["path"] == "/echo"
    assert doc["query"] == "x=1"
    assert doc["body"] == '{"hello": "world"}'
    assert doc["headers"]["x-forwarded-for"] == "10.0.0.1"
    assert doc["headers"]["x-request-id"] == "req-42"
    assert doc["headers"]["host"] == "origin.test"


async def test_echo_decodes_chunked_body_and_folds_repeated_headers(conn: Conn) -> None:
    head = (
        b"POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n"
        b"X-Tag: a\r\nX-Tag: b\r\n\r\n"
    )
    conn.writer.write(head + b"5\r\nhello\r\n")
    await asyncio.sleep(0.01)  # The body arrives in pieces.
    conn.writer.write(b"6\r\n world\r\n0\r\n\r\n")
    doc = (await asyncio.wait_for(read_response(conn.reader), timeout=5)).json()
    assert doc["body"] == "hello world"
    assert doc["headers"]["x-tag"] == "a, b"


async def test_expect_100_continue(conn: Conn) -> None:
    body = b"x" * 2000
    conn.writer.write(
        b"POST /echo HTTP/1.1\r\nHost: o\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
        % len(body)
    )
    status, _ = await asyncio.wait_for(read_head(conn.reader), timeout=2)
    assert status == 100
    conn.writer.write(body)
    response = await asyncio.wait_for(read_response(conn.reader), timeout=5)
    assert response.json()["body"] == body.decode()


# --- /bytes --------------------------------------------------------------------------------------


def expected_bytes(start: int, length: int) -> bytes:
    """``length`` bytes of the /bytes pattern from body offset ``start``."""
    period = len(BYTES_ALPHABET)
    repeated = BYTES_ALPHABET * ((start % period + length) // period + 1)
    return repeated[start % period : start % period + length]


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 256 * 1024, 256 * 1024 + 1, 5 * 1024 * 1024 + 7])
async def test_bytes_sizes_are_exact(conn: Conn, n: int) -> None:
    response = await roundtrip(conn, request_bytes("GET", f"/bytes?n={n}"))
    assert response.status == 200
    assert int(response.headers["content-length"]) == n
    assert len(response.body) == n
    assert response.body == expected_bytes(0, n)
    # Still in sync afterwards: nothing beyond n bytes was written.
    assert (await roundtrip(conn, request_bytes("GET", "/healthz"))).body == b"ok"


async def test_bytes_to_a_slow_reader(conn: Conn) -> None:
    n = 8 * 1024 * 1024
    conn.writer.write(request_bytes("GET", f"/bytes?n={n}"))
    _, headers = await read_head(conn.reader)
    assert int(headers["content-length"]) == n
    await asyncio.sleep(0.2)  # The origin's buffer fills; it must wait, not fail or spin.
    offset = 0
    while offset < n:
        piece = await conn.reader.readexactly(min(1024 * 1024, n - offset))
        assert piece == expected_bytes(offset, len(piece))
        offset += len(piece)
        await asyncio.sleep(0.01)


async def test_pipelined_bytes_respect_flow_control(conn: Conn) -> None:
    n = 4 * 1024 * 1024
    conn.writer.write(request_bytes("GET", f"/bytes?n={n}") * 2)
    await asyncio.sleep(0.1)  # The first body fills the buffers; the second must inherit the pause.
    for _ in range(2):
        response = await asyncio.wait_for(read_response(conn.reader), timeout=10)
        assert response.body == expected_bytes(0, n)


@pytest.mark.parametrize("query", ["", "?n=", "?n=-1", "?n=abc", "?n=%C2%B2"])
async def test_bytes_bad_n_is_400(conn: Conn, query: str) -> None:
    assert (await roundtrip(conn, request_bytes("GET", f"/bytes{query}"))).status == 400


# --- connection handling -------------------------------------------------------------------------


async def test_garbage_is_400_and_closes(conn: Conn) -> None:
    response = await roundtrip(conn, b"THIS IS NOT HTTP\x00\r\n\r\n")
    assert response.status == 400
    assert response.headers["connection"] == "close"
    await assert_closed(conn.reader)


async def test_keep_alive_two_requests_on_one_connection(conn: Conn) -> None:
    first = await roundtrip(conn, chat_request(max_tokens=1))
    second = await roundtrip(conn, request_bytes("GET", "/healthz"))
    assert first.status == second.status == 200
    assert "connection" not in first.headers


async def test_pipelined_requests_answered_in_order(conn: Conn) -> None:
    conn.writer.write(
        chat_request(stream=True, max_tokens=3, interval_ms=10)
        + request_bytes("POST", "/echo", b"second")
        + request_bytes("GET", "/bytes?n=10")
    )
    stream = await asyncio.wait_for(read_response(conn.reader), timeout=5)
    assert stream.body.endswith(b"data: [DONE]\n\n")
    assert (await read_response(conn.reader)).json()["body"] == "second"
    assert (await read_response(conn.reader)).body == expected_bytes(0, 10)


async def test_connection_close_is_honoured(conn: Conn) -> None:
    raw = request_bytes("GET", "/healthz", headers={"Connection": "close"})
    response = await roundtrip(conn, raw)
    assert response.headers["connection"] == "close"
    await assert_closed(conn.reader)


async def test_oversized_body_is_413(conn: Conn) -> None:
    conn.writer.write(request_bytes("POST", "/echo", b"x" * (16 * 1024 * 1024 + 1)))
    response = await asyncio.wait_for(read_response(conn.reader), timeout=10)
    assert response.status == 413


async def test_tls_origin(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server = await serve_origin(ssl_context=server_ssl_context(issue(ca, "origin")))
    port = server.sockets[0].getsockname()[1]
    try:
        client: ssl.SSLContext = client_ssl_context(ca)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        tls = Conn(reader, writer)
        response = await roundtrip(tls, chat_request(stream=True, max_tokens=2, interval_ms=1))
        assert response.body.endswith(b"data: [DONE]\n\n")
        await tls.close()
    finally:
        server.close()
        await server.wait_closed()


# --- CLI -----------------------------------------------------------------------------------------


def test_main_returns_status_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--listen" in capsys.readouterr().out
    assert main(["--listen", "no-port"]) == 2
    assert main(["--tls-cert", "only.crt"]) == 2
