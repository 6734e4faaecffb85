"""SSE client load generator: one worker process, many streams, minimal work per token.

Run by the bench as ``python -m bench.loadgen MODE ...`` in separate processes from the proxy
(several of them for large stream counts, so neither one core nor one fd table is the limit).

Per stream it writes one POST to ``/v1/chat/completions`` and, per read, only looks for
``"sent_at":`` and parses the float that follows: the per-token delay is arrival
``time.time()`` minus ``sent_at`` (the origin's ``time.time()`` when it wrote the token). There is
no HTTP body parser: chunk framing is skipped over, the header block is found once, and the end
of a stream is ``[DONE]`` followed by the terminating zero-length chunk.

Modes:

* ``sse``: ``--streams`` streams, ramped over ``--ramp`` seconds starting at ``--start-at``
  (a ``time.time()``, so several workers start together). Writes the delays (float64 seconds)
  to ``--out`` and prints a JSON summary line on stdout.
* ``idle``: ``--streams`` streams of one token each with a one-hour gap before the next event.
  Once every stream has its first token (or failed), prints ``ready OK FAILED`` and waits for a
  line on stdin, then closes everything and prints the JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections import Counter
from typing import Any

import uvloop

MARK = b'"sent_at":'
MARK_LEN = len(MARK)
TERMINATOR = b"\r\n0\r\n\r\n"
#: Bytes kept between reads so a marker, a number or the terminator split across reads is found.
KEEP = 40


class Worker:
    """Shared state of all streams of this process."""

    def __init__(self, port: int, streams: int, tokens: int, interval_ms: float) -> None:
        self.port = port
        self.total = streams
        body = json.dumps(
            {
                "model": "bench",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "max_tokens": tokens,
                "interval_ms": interval_ms,
            },
            separators=(",", ":"),
        ).encode()
        self.request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.delays = array("d")
        self.ttfb = array("d")
        self.events = 0
        self.bad_numbers = 0
        self.ok = 0
        self.first_event = 0
        self.errors: Counter[str] = Counter()
        self.streams: list[SseStream] = []
        self.first_start = 0.0
        self.last_arrival = 0.0
        self.all_done: asyncio.Future[None] | None = None
        self.all_ready: asyncio.Future[None] | None = None
        self.finished = 0

    def stream_finished(self) -> None:
        self.finished += 1
        if self.finished >= self.total and self.all_done and not self.all_done.done():
            self.all_done.set_result(None)
        self._check_ready()

    def stream_first_event(self) -> None:
        self.first_event += 1
        self._check_ready()

    def _check_ready(self) -> None:
        failed = self.finished - self.ok
        if self.first_event + failed >= self.total and self.all_ready and not self.all_ready.done():
            self.all_ready.set_result(None)


class SseStream(asyncio.Protocol):
    __slots__ = ("done", "got_first", "head_done", "seen_done", "started", "tail", "transport", "w")

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.transport: asyncio.Transport | None = None
        self.started = time.time()
        self.head_done = False
        self.seen_done = False
        self.got_first = False
        self.done = False
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.w.request)  # type: ignore[attr-defined]

    def fail(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        self.w.errors[why] += 1
        if self.transport is not None:
            self.transport.abort()
        self.w.stream_finished()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        w = self.w
        if not self.head_done:
            if not self.tail:
                w.ttfb.append(now - self.started)
            buf = self.tail + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.tail = buf
                if len(buf) > 65536:
                    self.fail("header too long")
                return
            status = buf[9:12]
            if status != b"200":
                self.fail(f"status {status.decode('latin-1')}")
                return
            self.head_done = True
            data = buf[end + 4 :]
            self.tail = b""
        buf = self.tail + data if self.tail else data
        append = w.delays.append
        pos = 0
        i = buf.find(MARK)
        while i >= 0:
            j = buf.find(b",", i + MARK_LEN)
            if j < 0:
                break
            try:
                append(now - float(buf[i + MARK_LEN : j]))
            except ValueError:
                w.bad_numbers += 1
            w.events += 1
            pos = j
            i = buf.find(MARK, j)
        if not self.got_first and pos:
            self.got_first = True
            w.stream_first_event()
        if i >= 0:
            self.tail = buf[i:]
        else:
            self.tail = buf[max(pos, len(buf) - KEEP) :]
        if not self.seen_done and b"[DONE]" in buf:
            self.seen_done = True
        if self.seen_done and buf.endswith(TERMINATOR):
            self.done = True
            w.ok += 1
            w.last_arrival = now
            assert self.transport is not None
            self.transport.close()
            w.stream_finished()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.fail(f"closed: {type(exc).__name__}" if exc else "closed early")


async def _open(worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
    stream = SseStream(worker)
    worker.streams.append(stream)
    try:
        await loop.create_connection(lambda: stream, "127.0.0.1", worker.port)
    except OSError as exc:
        stream.fail(f"connect: {exc.strerror or type(exc).__name__}")


async def _run_streams(worker: Worker, start_at: float, ramp: float) -> None:
    """Open ``worker.total`` streams spread over ``ramp`` s from ``start_at``; wait for the end."""
    loop = asyncio.get_running_loop()
    worker.all_done = loop.create_future()
    worker.all_ready = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()
    delay = max(0.0, start_at - time.time())
    await asyncio.sleep(delay)
    worker.first_start = time.time()
    base = loop.time()
    step = ramp / worker.total if worker.total else 0.0

    def launch() -> None:
        task = loop.create_task(_open(worker, loop))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for k in range(worker.total):
        loop.call_at(base + k * step, launch)
    if worker.total == 0:
        worker.all_done.set_result(None)
        worker.all_ready.set_result(None)


def _abort_unfinished(worker: Worker, why: str) -> None:
    for stream in worker.streams:
        if not stream.done:
            stream.fail(why)
    # Streams never launched (deadline before the ramp ended) count as failed too.
    missing = worker.total - len(worker.streams)
    if missing > 0:
        worker.errors[why] += missing
        worker.finished += missing


def _summary(worker: Worker, cpu0: float, wall0: float) -> dict[str, Any]:
    return {
        "streams": worker.total,
        "ok": worker.ok,
        "failed": worker.total - worker.ok,
        "errors": dict(worker.errors),
        "events": worker.events,
        "bad_numbers": worker.bad_numbers,
        "first_start": worker.first_start,
        "last_arrival": worker.last_arrival,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.monotonic() - wall0,
        "ttfb": list(worker.ttfb),
    }


async def sse_main(args: argparse.Namespace) -> dict[str, Any]:
    cpu0, wall0 = time.process_time(), time.monotonic()
    worker = Worker(args.port, args.streams, args.tokens, args.interval_ms)
    await _run_streams(worker, args.start_at, args.ramp)
    assert worker.all_done is not None
    remaining = max(1.0, args.start_at + args.deadline - time.time())
    try:
        await asyncio.wait_for(asyncio.shield(worker.all_done), remaining)
    except TimeoutError:
        _abort_unfinished(worker, "timeout")
    await asyncio.sleep(0)  # let aborted transports report connection_lost
    with open(args.out, "wb") as out:
        worker.delays.tofile(out)
    return _summary(worker, cpu0, wall0)


async def idle_main(args: argparse.Namespace) -> dict[str, Any]:
    cpu0, wall0 = time.process_time(), time.monotonic()
    worker = Worker(args.port, args.streams, 1, 3_600_000)
    await _run_streams(worker, args.start_at, args.ramp)
    assert worker.all_ready is not None
    remaining = max(1.0, args.start_at + args.deadline - time.time())
    try:
        await asyncio.wait_for(asyncio.shield(worker.all_ready), remaining)
    except TimeoutError:
        for stream in worker.streams:
            if not stream.got_first:
                stream.fail("timeout")
    print(f"ready {worker.first_event} {worker.total - worker.first_event}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    held = worker.first_event
    for stream in worker.streams:
        if stream.transport is not None and not stream.done:
            stream.done = True
            stream.transport.abort()
    summary = _summary(worker, cpu0, wall0)
    summary["held"] = held
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=("sse", "idle"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to open all streams")
    parser.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds after start-at")
    parser.add_argument("--out", default="/dev/null", help="sse: file for the float64 delays")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.start_at <= 0:
        args.start_at = time.time()
    runner = sse_main if args.mode == "sse" else idle_main
    summary = uvloop.run(runner(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
