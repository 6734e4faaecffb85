"""The cost of usage accounting and access logging on the token path (issue 12).

Drives the ``http`` handler's response path in process, with in-memory transports: for each
request a fresh ``Exchange`` is bound to an ``UpstreamConnection`` that is fed an SSE
response of ``--events`` token events, each in its own read (as an origin streams them), then
the final ``usage`` chunk, ``data: [DONE]`` and the last chunk. What is timed is the relay's
work per token event: parse, re-chunk, write, and (when on) the tail kept for the ``usage``
search plus the per-request accounting and access log line, amortised over the stream.

Modes (interleaved, each repeated; the figure is the minimum of the repeats, the least
disturbed by other work on the machine):

* ``off``: the handler with usage and the access log not attached;
* ``usage``: usage counted, no access log;
* ``on``: usage counted and an access log written (its writer thread included in CPU).

``--relay-path DIR`` imports ``relay`` from DIR instead (e.g. an unpacked older commit:
``git archive <commit> relay | tar -x -C /tmp/base``) to measure "before" with the same
driver; modes that the older code lacks are skipped.

    .venv/bin/python -m bench.token_path                     # this tree
    .venv/bin/python -m bench.token_path --relay-path /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from typing import Any


class _Transport:
    """The least of an ``asyncio.Transport`` the handler uses; writes are counted, dropped."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _response(events: int) -> list[bytes]:
    """The upstream reads of one streamed completion (chunked), as the dev origin frames it."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )
    prefix = (
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    )
    reads = []
    for i in range(events):
        payload = (
            b'data: %s[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],'
            b'"sent_at":1764400000.000000,"seq":%d}\n\n' % (prefix, i, i)
        )
        frame = b"%x\r\n%s\r\n" % (len(payload), payload)
        reads.append(head + frame if i == 0 else frame)
    counts = b'{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}' % (
        events,
        events + 12,
    )
    usage = b'data: %s[],"usage":%s}\n\n' % (prefix, counts)
    done = b"data: [DONE]\n\n"
    reads.append(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(usage), usage, len(done), done))
    return reads


async def _run(mode: str, requests: int, reads: list[bytes], workdir: str) -> float:
    """Seconds of CPU (process time: the log writer thread included) for ``requests``."""
    from relay.config import config_from_mapping
    from relay.handlers.http import HttpConnection
    from relay.handlers.http_exchange import Exchange
    from relay.handlers.http_upstream import UpstreamConnection
    from relay.metrics import RelayMetrics
    from relay.service import ServiceRuntime

    mapping: dict[str, Any] = {
        "services": [
            {
                "name": "edge",
                "addr": "127.0.0.1:0",
                "listener": {"type": "tcp"},
                "handler": {"type": "http"},
                "forwarder": {"nodes": [{"name": "origin", "addr": "127.0.0.1:9"}]},
            }
        ]
    }
    if mode == "on":
        mapping["accessLog"] = {
            "file": os.path.join(workdir, "access.log"), "ratePerSecond": 10**6,
        }  # fmt: skip
    config = config_from_mapping(mapping)
    runtime = ServiceRuntime(config.services[0], None, RelayMetrics(), ".")
    access_log = None
    if mode in ("usage", "on"):
        from relay.usage import UsageMeter

        runtime.usage = UsageMeter()
    if mode == "on":
        from relay.access_log import AccessLog

        assert config.access_log is not None
        access_log = runtime.access_log = AccessLog(config.access_log, ".")
    conn = HttpConnection(runtime)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    # The collector would run at different points in different versions: its passes over every
    # object loaded so far would be charged to whichever version it happened to run in.
    gc.collect()
    gc.disable()
    started = time.process_time()
    for i in range(requests):
        exchange = Exchange(conn, b"POST", head, b"req-%d" % i, True, False)
        if hasattr(exchange, "key"):
            exchange.key = "0123456789abcdef0123456789abcdef"
        exchange.end_body()
        upstream = UpstreamConnection(_Transport(), "origin")  # type: ignore[arg-type]
        exchange.bind(upstream)
        for data in reads:
            upstream.data_received(data)
        # ``outcome`` since the callback-driven handler; older versions had a ``done`` future.
        ended = getattr(exchange, "outcome", None) is not None or getattr(exchange, "done", None)
        assert ended and (not hasattr(exchange, "done") or exchange.done.done())
    if access_log is not None:
        access_log.close()  # its writes are part of the cost
    elapsed = time.process_time() - started
    gc.enable()
    conn.connection_lost(None)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events", type=int, default=200, help="token events per stream")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--relay-path", help="import relay from this directory")
    parser.add_argument("--modes", nargs="+", choices=("off", "usage", "on"), help="default: all")
    args = parser.parse_args(argv)
    if args.relay_path:
        sys.path.insert(0, os.path.abspath(args.relay_path))
    import relay

    has_usage = os.path.exists(os.path.join(os.path.dirname(relay.__file__), "usage.py"))
    modes = [m for m in (args.modes or ["off", "usage", "on"]) if has_usage or m == "off"]
    reads = _response(args.events)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeats):
            for mode in modes:
                seconds = asyncio.run(_run(mode, args.requests, reads, workdir))
                best[mode] = min(best.get(mode, seconds), seconds)
    per_event = {
        mode: seconds / (args.requests * (args.events + 1)) * 1e9 for mode, seconds in best.items()
    }
    result = {
        "relay": os.path.dirname(relay.__file__),
        "requests": args.requests,
        "events_per_request": args.events,
        "repeats": args.repeats,
        "ns_per_event": {mode: round(ns, 1) for mode, ns in per_event.items()},
        "us_per_request": {
            mode: round(seconds / args.requests * 1e6, 1) for mode, seconds in best.items()
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
