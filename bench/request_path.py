"""The edge ``http`` handler's own work per request and per new stream, in process (issue 13).

The system benchmarks (``bench.run``) count everything a request costs: system calls, the
kernel's loopback, the event loop, the Python above them. This one counts the last part only,
repeatably, so a change to the handler can be judged in seconds: sockets are replaced by
in-memory transports (writes counted and dropped) and the loop is the real uvloop.

* ``pooled``: a small keep-alive request (``GET /v1/models``, JSON answer) on a client
  connection that stays open, served by an idle pooled upstream connection: parse, route, bind,
  response head, body, accounting, back to the pool.
* ``stream``: a new client connection with a chat completion request, a new tunnel dialled
  through the chain (relay header; the TCP connect itself is stubbed), the relay answer and a
  short SSE response (two events and ``[DONE]``), the connection closed.

Each figure is the minimum over ``--repeats`` interleaved runs of CPU time per item, minus
an empty run of the same loop turns (what the driver itself costs).

    .venv/bin/python -m bench.request_path
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.token_path import _Transport
from relay import chain as chain_module
from relay.chain import Chain
from relay.config import config_from_mapping
from relay.handlers.http import HttpConnection
from relay.handlers.http_upstream import UpstreamConnection
from relay.metrics import RelayMetrics
from relay.service import ServiceRuntime
from relay.transports.base import PendingProtocol
from relay.usage import UsageMeter

_MODELS = b'{"object":"list","data":[{"id":"dev-model","object":"model","created":1}]}'
_POOLED_REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
_POOLED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: keep-alive\r\n\r\n%s" % (len(_MODELS), _MODELS)
)
_CHAT = b'{"model":"dev-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'
_STREAM_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_CHAT), _CHAT)
)
_RELAY_OK = b"\x01\x00\x00\x00"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_EVENT = _chunk(b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"tok "}}]}\n\n')
_STREAM_FIRST = (
    _RELAY_OK + b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    + _EVENT
)
_STREAM_REST = _EVENT + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Stream(_Transport):
    """An in-memory transport that also carries a protocol and reports its own closing."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.closed = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


async def _stub_connect(*args: Any) -> asyncio.Transport:
    """Stands in for ``relay.chain._create_connection``: the connect without the socket."""
    transport = _Stream()
    pending = PendingProtocol()
    transport.set_protocol(pending)
    pending.connection_made(transport)  # type: ignore[arg-type]
    return transport  # type: ignore[return-value]


def _runtime(with_chain: bool) -> ServiceRuntime:
    handler: dict[str, Any] = {"type": "http"}
    service: dict[str, Any] = {
        "name": "edge", "addr": "127.0.0.1:0", "listener": {"type": "tcp"}, "handler": handler,
    }  # fmt: skip
    mapping: dict[str, Any] = {"services": [service]}
    if with_chain:
        handler["chain"] = "to-core"
        node = {
            "name": "core-1",
            "addr": "127.0.0.1:9",
            "connector": {"type": "relay", "auth": {"username": "edge", "password": "secret"}},
            "dialer": {"type": "tcp"},
        }
        mapping["chains"] = [{"name": "to-core", "hops": [{"name": "core", "nodes": [node]}]}]
    else:
        service["forwarder"] = {"nodes": [{"name": "origin", "addr": "127.0.0.1:9"}]}
    config = config_from_mapping(mapping)
    chain = Chain(config.chains[0], ".") if with_chain else None
    runtime = ServiceRuntime(config.services[0], chain, RelayMetrics(), ".")
    runtime.usage = UsageMeter()  # as on a node, where usage is always counted
    return runtime


async def _pooled(count: int, real: bool) -> float:
    runtime = _runtime(with_chain=False)
    conn = HttpConnection(runtime)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    route = runtime.route("127.0.0.1")
    upstream = UpstreamConnection(_Transport(), "origin", route.pool_key)  # type: ignore[arg-type]
    runtime.upstream_pool.put(route.pool_key, upstream, asyncio.get_running_loop().time())
    started = time.process_time()
    for _ in range(count):
        if real:
            conn.data_received(_POOLED_REQUEST)
        await asyncio.sleep(0)
        if real:
            assert upstream.exchange is not None, "the request was not sent upstream"
            upstream.data_received(_POOLED_RESPONSE)
        await asyncio.sleep(0)
    return time.process_time() - started


async def _stream(count: int, real: bool) -> float:
    runtime = _runtime(with_chain=True)
    runtime.upstream_pool.take = lambda *args: None  # type: ignore[method-assign]
    started = time.process_time()
    for _ in range(count):
        if real:
            client = _Stream()
            conn = HttpConnection(runtime)
            client.set_protocol(conn)
            conn.connection_made(client)  # type: ignore[arg-type]
            conn.data_received(_STREAM_REQUEST)
        for _turn in range(3):  # the dial task: start, connect, bind
            await asyncio.sleep(0)
        if real:
            exchange = conn._active
            assert exchange is not None and exchange.upstream is not None, "not dialled"
            inner = exchange.upstream.transport.inner  # type: ignore[attr-defined]
            inner.get_protocol().data_received(_STREAM_FIRST)
            inner.get_protocol().data_received(_STREAM_REST)
        await asyncio.sleep(0)
        if real:
            client.close()
            runtime.upstream_pool.close_all()
    return time.process_time() - started


async def _measure(run: Callable[[int, bool], Awaitable[float]], count: int, repeats: int) -> float:
    """µs per item: min over repeats of (real run - empty run)."""
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for real in (False, True):
            gc.collect()
            gc.disable()
            try:
                best[real] = min(best[real], await run(count, real))
            finally:
                gc.enable()
    return (best[True] - best[False]) / count * 1e6


async def _main(args: argparse.Namespace) -> None:
    original = chain_module._create_connection
    chain_module._create_connection = _stub_connect  # type: ignore[assignment]
    try:
        pooled = await _measure(_pooled, args.requests, args.repeats)
        stream = await _measure(_stream, args.streams, args.repeats)
    finally:
        chain_module._create_connection = original
    print(f"pooled keep-alive request: {pooled:6.1f} µs of handler CPU")
    print(f"new connection + stream:   {stream:6.1f} µs of handler CPU (connect stubbed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    uvloop.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
