"""Test clients over raw sockets: HTTP/1.1 with chunked decoding, SSE events with arrival times."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    #: SSE events: (arrival time.time(), parsed JSON or the raw data string).
    events: list[tuple[float, Any]] = field(default_factory=list)
    #: Whether the body ended cleanly (last chunk / full length), not by a broken connection.
    complete: bool = True


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], on_chunk: Any = None
) -> tuple[bytes, bool]:
    """Read a body per its framing; returns (body, complete)."""
    parts: list[bytes] = []
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(parts), True
                data = await reader.readexactly(size + 2)
                parts.append(data[:-2])
                if on_chunk:
                    on_chunk(data[:-2])
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
            return data, True
        else:
            return await reader.read(), True
    except (asyncio.IncompleteReadError, ConnectionError):
        return b"".join(parts), False


def request_bytes(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    all_headers = {"content-type": "application/json", **(headers or {})}
    if body or method == "POST":
        all_headers.setdefault("content-length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def request(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request on a new connection; SSE bodies are parsed into timed events."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None
    )
    try:
        body = json.dumps(payload).encode() if payload is not None else b""
        writer.write(request_bytes(method, path, body, headers))
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> Response:
    status, headers = await read_head(reader)
    response = Response(status, headers)
    pending = b""

    def on_chunk(chunk: bytes) -> None:
        nonlocal pending
        now = time.time()
        pending += chunk
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:].decode()
                    try:
                        response.events.append((now, json.loads(data)))
                    except ValueError:
                        response.events.append((now, data))

    is_sse = headers.get("content-type", "").startswith("text/event-stream")
    response.body, response.complete = await read_body(
        reader, headers, on_chunk if is_sse else None
    )
    return response


def chat(tokens: int, interval_ms: float = 20, **extra: Any) -> dict[str, Any]:
    return {
        "model": "test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": tokens,
        "interval_ms": interval_ms,
        **extra,
    }
