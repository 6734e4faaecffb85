"""An LLM-like HTTP/1.1 origin for tests, demos and benchmarks.

It speaks just enough of the OpenAI HTTP API to stand in for a model server behind the relay, and
it is cheap enough in CPU that one process can drive ~10,000 concurrent token streams:

* ``POST /v1/chat/completions``: JSON ``{model, messages, stream, max_tokens}`` plus two test
  extensions, ``interval_ms`` (gap between tokens, default 20) and ``ttfb_ms`` (delay before the
  first response byte, default 0). With ``stream: true`` the answer is Server-Sent Events over
  chunked encoding: one ``chat.completion.chunk`` event per token, each its own HTTP chunk written
  at its own time and stamped with ``sent_at`` (``time.time()`` when written) and ``seq``; then a
  ``finish_reason: "stop"`` event, ``data: [DONE]`` and the terminating zero chunk. Otherwise a
  plain ``chat.completion`` JSON object with Content-Length (sent after ``ttfb_ms``).
* ``GET /v1/models``: a small model list. ``GET /healthz``: ``200 ok``.
* ``GET /bytes?n=N``: ``N`` body bytes with Content-Length, generated block by block and paced by
  transport flow control, so ``N`` may be several GiB. Byte ``k`` of the body is
  ``BYTES_ALPHABET[k % 64]``, so a reader can verify any slice without keeping the whole body.
* ``POST /echo``: ``{"method", "path", "query", "headers": {lowercased name: value}, "body"}``.

Connections are keep-alive, accept pipelined requests (answered strictly in order), and accept
chunked and Content-Length request bodies. Unparseable requests get ``400`` and the connection is
closed, as do bodies over ``MAX_REQUEST_BODY`` (``413``); unknown paths get a JSON ``404``; a known
path with the wrong method gets ``405``. Errors are OpenAI-style ``{"error": {"message", ...}}``.

Everything runs on asyncio ``Protocol`` callbacks with ``httptools`` parsing; there is no task per
connection or per stream. Token timing goes through ``_Ticker``, which coalesces all streams due in
the same millisecond into one loop timer (see its docstring for the CPU measurement behind that).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

import httptools
import uvloop

__all__ = ["BYTES_ALPHABET", "main", "serve_origin"]

#: ``/bytes`` body pattern: byte ``k`` of the body is ``BYTES_ALPHABET[k % len(BYTES_ALPHABET)]``.
BYTES_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
#: One shared, immutable block reused for every ``/bytes`` write; its length is a multiple of the
#: alphabet length so that consecutive full blocks continue the pattern seamlessly.
_BYTES_BLOCK = BYTES_ALPHABET * (256 * 1024 // len(BYTES_ALPHABET))
#: Bytes one ``/bytes`` producer may write per loop iteration before yielding; without a budget a
#: fast reader would let one multi-GiB response monopolise the event loop.
_BYTES_BUDGET_PER_ITERATION = 4 * len(_BYTES_BLOCK)

#: Request bodies above this are refused with 413: chat and echo bodies are small by nature.
MAX_REQUEST_BODY = 16 * 1024 * 1024
#: Parsed-but-unanswered pipelined requests at which we stop reading from the socket, so a client
#: pipelining without reading cannot grow our memory without bound.
_MAX_QUEUED_REQUESTS = 16

DEFAULT_MAX_TOKENS = 16
DEFAULT_INTERVAL_MS = 20.0
DEFAULT_MODEL = "dev-origin"
#: Upper bounds that keep a typo in a test from tying up the origin for hours.
_MAX_TOKENS_LIMIT = 10_000_000
_MAX_DELAY_MS = 3_600_000.0

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
}
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_SERVER_HEADER = b"Server: aicdn-dev-origin\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SSE_TAIL_CHUNKED = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
_SSE_TAIL_RAW = b"data: [DONE]\n\n"

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


class _Job(Protocol):
    """A response in progress that outlives the callback which started it."""

    def cancel(self) -> None:
        """Stop for good (connection lost); must not write afterwards."""

    def pause_writing(self) -> None:
        """The transport's buffer is above its high-water mark."""

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""


class _Tickable(Protocol):
    def tick(self) -> None:
        """Called by ``_Ticker`` at (or just after) the time it was scheduled for."""


class _Ticker:
    """Coalesces per-stream deadlines into one loop timer per millisecond slot.

    Why not ``loop.call_at`` per stream: each timer costs a handle allocation plus heap insert
    and removal in the loop, and 10,000 streams at 20 ms make that 500,000 timers a second.
    Streams started close together share slots here, so the loop sees at most one timer per
    millisecond however many streams there are. Measured (2 vCPU, uvloop, 2000 loopback streams,
    server-process CPU from /proc, two runs each): 150 tokens at 20 ms, per-stream ``call_at``
    6.8-7.2 CPU-s vs this ticker 5.7 (user time 2.9-3.5 vs 2.3); 60 tokens at 50 ms, 3.5-3.6 vs
    2.6-2.9. So ~20% less CPU overall, a third less user time; the rest is ``write`` syscalls.

    Deadlines are rounded *up* to the millisecond, so a stream never fires early; the lateness
    this adds is below 1 ms. Cancelled streams are not removed from their slot (that would be a
    linear search); they are expected to ignore ``tick`` once dead.
    """

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[_Tickable]] = {}

    def time(self) -> float:
        """The loop clock that ``call_at`` deadlines are expressed in."""
        return self._loop.time()

    def call_at(self, when: float, target: _Tickable) -> None:
        """Call ``target.tick()`` once, no earlier than loop time ``when``."""
        slot = math.ceil(when * 1000.0)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [target]
            self._loop.call_at(slot / 1000.0, self._fire, slot)
        else:
            bucket.append(target)

    def _fire(self, slot: int) -> None:
        # Pop first: a target rescheduling itself into this same slot (interval 0) must get a
        # fresh bucket and timer rather than extend the list we are iterating.
        for target in self._slots.pop(slot):
            target.tick()


class _Request:
    """One parsed request, as accumulated by the parser callbacks."""

    __slots__ = ("body", "error", "headers", "http11", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.method = ""
        self.http11 = True
        self.keep_alive = True
        #: Non-zero when the request must be refused with this status and the connection closed.
        self.error = 0

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class _HttpError(Exception):
    """A handler refuses the request; becomes a JSON error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_body(status: int, message: str) -> bytes:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def _head(status: int, headers: list[bytes], keep_alive: bool, http11: bool) -> bytes:
    """A response status line plus header block; ``headers`` are complete ``Name: v\\r\\n``."""
    version = b"HTTP/1.1" if http11 else b"HTTP/1.0"
    if not keep_alive:
        connection = b"Connection: close\r\n"
    elif not http11:
        connection = b"Connection: keep-alive\r\n"  # 1.0 closes by default: say we do not.
    else:
        connection = b""
    reason = _REASONS.get(status, "Unknown").encode()
    return b"%s %d %s\r\n%s%s%s\r\n" % (
        version,
        status,
        reason,
        _SERVER_HEADER,
        b"".join(headers),
        connection,
    )


class _OriginProtocol(asyncio.Protocol):
    """One client connection: parses requests, answers them one at a time, in order.

    Parsing runs ahead of answering (pipelining): completed requests wait in ``_queue`` while an
    earlier, possibly long, streamed response is in progress. After a parse error nothing more
    is parsed; the queued ``400`` is the last response on the connection.
    """

    def __init__(self, ticker: _Ticker) -> None:
        self._ticker = ticker
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._current: _Request | None = None
        self._queue: deque[_Request] = deque()
        self._busy = False
        self._pumping = False
        self._job: _Job | None = None
        self._parsing = True
        self._reading_paused = False
        #: Mirrors the transport's flow-control state, which a job started later must inherit:
        #: the transport signals a pause once, not again to each new job.
        self._writing_paused = False
        self._closed = False

    # --- transport callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport does not subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        if self._job is not None:
            self._job.cancel()
            self._job = None

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade / CONNECT: the request itself was queued by on_message_complete; we speak
            # no other protocol, so answer it and close instead of reading the tunnel bytes.
            self._parsing = False
            if self._queue:
                self._queue[-1].keep_alive = False
            else:
                self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)
        self._pump()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._job is not None:
            self._job.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._job is not None:
            self._job.resume_writing()

    # --- httptools parser callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request()

    def on_url(self, url: bytes) -> None:
        # May arrive in pieces when the request line straddles two reads.
        assert self._current is not None
        self._current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        request.method = self._parser.get_method().decode("ascii", "replace")
        request.http11 = self._parser.get_http_version() == "1.1"
        expect = request.header(b"expect")
        # Only when idle: a 100 written in the middle of an earlier response would corrupt it.
        # A client that pipelines behind an Expect simply waits out its own timeout.
        if expect is not None and expect.lower() == b"100-continue" and self._idle():
            assert self._transport is not None
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        if request.error:
            return
        if len(request.body) + len(body) > MAX_REQUEST_BODY:
            request.error = 413
            request.body = bytearray()
            return
        request.body += body

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
        request.keep_alive = self._parser.should_keep_alive() and not request.error
        self._queue.append(request)
        if len(self._queue) >= _MAX_QUEUED_REQUESTS and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    # --- answering, in order -----------------------------------------------------------------

    def _idle(self) -> bool:
        return not self._busy and not self._queue

    def _fail(self, status: int) -> None:
        """Queue a final error response; the connection closes once it is written."""
        self._parsing = False
        request = _Request()
        request.error = status
        request.keep_alive = False
        self._queue.append(request)

    def _pump(self) -> None:
        """Start queued requests until one of them leaves a response in progress.

        A loop rather than recursion through ``_finish``: a deep pipeline of synchronous answers
        must not grow the stack.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and not self._busy and not self._closed:
                self._busy = True
                self._dispatch(self._queue.popleft())
            if self._reading_paused and len(self._queue) < _MAX_QUEUED_REQUESTS // 2:
                self._reading_paused = False
                if not self._closed and self._transport is not None:
                    self._transport.resume_reading()
        finally:
            self._pumping = False

    def _finish(self, keep_alive: bool) -> None:
        """The current response is fully written: close, or go on to the next request."""
        self._busy = False
        self._job = None
        if self._closed:
            return
        if not keep_alive:
            self._closed = True
            self._queue.clear()
            assert self._transport is not None
            self._transport.close()  # Flushes what is buffered first.
            return
        self._pump()

    def _dispatch(self, request: _Request) -> None:
        if request.error:
            self._send_error(request, request.error, _REASONS[request.error])
            return
        try:
            url = httptools.parse_url(request.url)
        except httptools.HttpParserInvalidURLError:
            self._send_error(request, 400, "invalid request target")
            return
        path = url.path.decode("utf-8", "replace")
        query = (url.query or b"").decode("utf-8", "replace")
        route = _ROUTES.get(path)
        if route is None:
            self._send_error(request, 404, f"no route for {request.method} {path}")
            return
        method, handler = route
        if request.method != method:
            self._send_error(
                request, 405, f"{path} takes {method}", [b"Allow: %s\r\n" % method.encode()]
            )
            return
        try:
            handler(self, request, path, query)
        except _HttpError as exc:
            self._send_error(request, exc.status, exc.message)

    # --- response helpers used by the handlers -----------------------------------------------

    def send(
        self,
        request: _Request,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        extra: list[bytes] | None = None,
    ) -> None:
        """Write a complete Content-Length response and finish the request."""
        assert self._transport is not None
        headers = [b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body))]
        if extra:
            headers.extend(extra)
        self._transport.write(_head(status, headers, request.keep_alive, request.http11) + body)
        self._finish(request.keep_alive)

    def _send_error(
        self, request: _Request, status: int, message: str, extra: list[bytes] | None = None
    ) -> None:
        if status in (400, 413):
            request.keep_alive = False  # The byte stream may be out of sync: do not reuse it.
        self.send(request, status, _error_body(status, message), _JSON, extra)

    def start_job(self, job: _Job) -> None:
        """Register the response in progress that will call ``finish`` when it is done."""
        self._job = job
        if self._writing_paused:
            job.pause_writing()

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    @property
    def ticker(self) -> _Ticker:
        return self._ticker

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self, keep_alive: bool) -> None:
        """Called by a job when its response has been written completely."""
        self._finish(keep_alive)


# --- /v1/chat/completions ----------------------------------------------------------------------


class _ChatParams:
    """The validated fields of a chat completion request."""

    __slots__ = ("interval", "max_tokens", "model", "prompt_tokens", "stream", "ttfb")

    def __init__(self, body: bytes) -> None:
        """Parse and validate ``body``; raises ``_HttpError(400)`` on anything malformed."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _HttpError(400, f"request body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _HttpError(400, "request body must be a JSON object")
        model = doc.get("model", DEFAULT_MODEL)
        if not isinstance(model, str):
            raise _HttpError(400, "'model' must be a string")
        messages = doc.get("messages", [])
        if not isinstance(messages, list):
            raise _HttpError(400, "'messages' must be a list")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise _HttpError(400, "'stream' must be a boolean")
        self.model = model
        self.stream = stream
        self.prompt_tokens = sum(_count_words(m) for m in messages)
        self.max_tokens = int(
            _number(doc, "max_tokens", DEFAULT_MAX_TOKENS, _MAX_TOKENS_LIMIT, True)
        )
        self.interval = _number(doc, "interval_ms", DEFAULT_INTERVAL_MS, _MAX_DELAY_MS) / 1000.0
        self.ttfb = _number(doc, "ttfb_ms", 0.0, _MAX_DELAY_MS) / 1000.0


def _number(
    doc: dict[str, Any], key: str, default: float, limit: float, integer: bool = False
) -> float:
    """``doc[key]`` as a number in ``[0, limit]`` (``default`` when absent or null)."""
    value = doc.get(key)
    if value is None:
        return default
    # bool is an int subclass, but ``"max_tokens": true`` is a client bug, not 1.
    numeric = isinstance(value, int) or (isinstance(value, float) and not integer)
    if isinstance(value, bool) or not numeric or not 0 <= float(value) <= limit:
        kind = "an integer" if integer else "a number"
        raise _HttpError(400, f"'{key}' must be {kind} in [0, {limit:g}]")
    return float(value)


def _count_words(message: object) -> int:
    """A stand-in token count for ``usage``: whitespace-separated words of ``content``."""
    content = message.get("content") if isinstance(message, dict) else None
    return len(content.split()) if isinstance(content, str) else 0


def _completion_id() -> str:
    return f"chatcmpl-{_ID_PREFIX}{next(_ids):x}"


class _SseStream:
    """Writes one streamed chat completion, one token per ``_Ticker`` tick.

    Token ``i`` is due at ``first + i * interval``, ``first`` being when token 0 was actually
    written: absolute deadlines, so loop lateness never accumulates into drift, and no token is
    ever written earlier than ``i * interval`` after the first one. Per-token work is one
    byte-format, one ``time.time()`` and one ``transport.write``: the event text around the
    token is precomputed in ``_prefix``.

    Flow control is deliberately ignored: a model server keeps generating whatever the client's
    read speed, so a slow reader shows up as buffering here, which is what relay tests want.
    """

    __slots__ = (
        "_chunked",
        "_count",
        "_dead",
        "_first",
        "_interval",
        "_keep_alive",
        "_prefix",
        "_proto",
        "_seq",
        "_transport",
    )

    def __init__(self, proto: _OriginProtocol, request: _Request, params: _ChatParams) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._chunked = request.http11
        # HTTP/1.0 has no chunked encoding: the end of the stream is the end of the connection.
        self._keep_alive = request.keep_alive and request.http11
        self._count = params.max_tokens
        self._interval = params.interval
        self._seq = 0
        self._dead = False
        created = int(time.time())
        head = '{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":'
        self._prefix = (
            head % (json.dumps(_completion_id()), created, json.dumps(params.model))
        ).encode()
        self._first = proto.ticker.time() + params.ttfb
        proto.start_job(self)
        proto.ticker.call_at(self._first, self)

    def cancel(self) -> None:
        self._dead = True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def tick(self) -> None:
        if self._dead:
            return
        seq = self._seq
        if seq < self._count:
            payload = (
                b'data: %s[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],'
                b'"sent_at":%.6f,"seq":%d}\n\n' % (self._prefix, seq, time.time(), seq)
            )
            data = self._frame(payload)
            if seq == 0:
                data = self._headers() + data  # First byte of the response: at ttfb, not before.
                self._first = self._proto.ticker.time()  # Anchor on when it really went out.
            self._transport.write(data)
            self._seq = seq + 1
            self._proto.ticker.call_at(self._first + (seq + 1) * self._interval, self)
            return
        self._finish_stream()

    def _finish_stream(self) -> None:
        payload = (
            b'data: %s[{"index":0,"delta":{},"finish_reason":"stop"}],"sent_at":%.6f,"seq":%d}\n\n'
            % (self._prefix, time.time(), self._seq)
        )
        data = self._frame(payload)
        data += _SSE_TAIL_CHUNKED if self._chunked else _SSE_TAIL_RAW
        if self._seq == 0:
            data = self._headers() + data  # max_tokens == 0: headers go out with the stop event.
        self._dead = True
        self._transport.write(data)
        self._proto.finish(self._keep_alive)

    def _frame(self, payload: bytes) -> bytes:
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(payload), payload)
        return payload

    def _headers(self) -> bytes:
        headers = [b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"]
        if self._chunked:
            headers.append(b"Transfer-Encoding: chunked\r\n")
        return _head(200, headers, self._keep_alive, self._chunked)


class _DelayedResponse:
    """A complete response written after a delay (non-streamed completion with ``ttfb_ms``)."""

    __slots__ = ("_body", "_handle", "_proto", "_request")

    def __init__(
        self, proto: _OriginProtocol, request: _Request, body: bytes, delay: float
    ) -> None:
        self._proto = proto
        self._request = request
        self._body = body
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)
        proto.start_job(self)

    def cancel(self) -> None:
        self._handle.cancel()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def _fire(self) -> None:
        self._proto.send(self._request, 200, self._body)


def _handle_chat(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    params = _ChatParams(bytes(request.body))
    if params.stream:
        _SseStream(proto, request, params)
        return
    body = _completion_body(params)
    if params.ttfb > 0:
        _DelayedResponse(proto, request, body, params.ttfb)
    else:
        proto.send(request, 200, body)


def _completion_body(params: _ChatParams) -> bytes:
    content = "".join(f"tok{i} " for i in range(params.max_tokens))
    doc = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": params.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": params.prompt_tokens,
            "completion_tokens": params.max_tokens,
            "total_tokens": params.prompt_tokens + params.max_tokens,
        },
    }
    return json.dumps(doc).encode()


# --- /bytes ------------------------------------------------------------------------------------


class _BytesBody:
    """Writes ``n`` pattern bytes, only while the transport is below its high-water mark.

    ``transport.write`` calls ``pause_writing`` synchronously once the buffer fills, which ends
    the write loop; ``resume_writing`` restarts it. A per-iteration budget yields to the loop
    when the reader keeps up, so other connections are not starved.
    """

    __slots__ = (
        "_dead",
        "_keep_alive",
        "_loop",
        "_paused",
        "_proto",
        "_remaining",
        "_scheduled",
        "_transport",
    )

    def __init__(self, proto: _OriginProtocol, request: _Request, n: int) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._loop = asyncio.get_running_loop()
        self._keep_alive = request.keep_alive
        self._remaining = n
        self._paused = False
        self._scheduled = False
        self._dead = False
        head = _head(
            200,
            [b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n" % n],
            request.keep_alive,
            request.http11,
        )
        proto.start_job(self)
        self._transport.write(head)
        self._write_some()

    def cancel(self) -> None:
        self._dead = True

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._scheduled:
            self._write_some()

    def _continue(self) -> None:
        self._scheduled = False
        self._write_some()

    def _write_some(self) -> None:
        if self._dead:
            return
        budget = _BYTES_BUDGET_PER_ITERATION
        block = len(_BYTES_BLOCK)
        while self._remaining and not self._paused and budget > 0:
            n = min(self._remaining, block)
            self._transport.write(_BYTES_BLOCK if n == block else _BYTES_BLOCK[:n])
            self._remaining -= n
            budget -= n
        if not self._remaining:
            self._dead = True
            self._proto.finish(self._keep_alive)
        elif not self._paused:
            self._scheduled = True
            self._loop.call_soon(self._continue)


def _handle_bytes(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    values = parse_qs(query).get("n")
    if not values or not (values[0].isascii() and values[0].isdigit()):
        raise _HttpError(400, "'n' must be a non-negative integer")
    _BytesBody(proto, request, int(values[0]))


# --- small endpoints ---------------------------------------------------------------------------


def _handle_echo(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # Repeated headers fold into one comma-separated value, as RFC 9110 §5.3 allows.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    doc = {
        "method": request.method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": request.body.decode("utf-8", "replace"),
    }
    proto.send(request, 200, json.dumps(doc).encode())


_MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "aicdn"}],
    }
).encode()


def _handle_models(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    proto.send(request, 200, _MODELS_BODY)


def _handle_healthz(proto: _OriginProtocol, request: _Request, path: str, query: str) -> None:
    proto.send(request, 200, b"ok", _TEXT)


_Handler = Callable[[_OriginProtocol, _Request, str, str], None]
#: path -> (method, handler). A handler either answers synchronously via ``proto.send`` or
#: registers a ``_Job`` that calls ``proto.finish`` later; raising ``_HttpError`` answers with it.
_ROUTES: dict[str, tuple[str, _Handler]] = {
    "/v1/chat/completions": ("POST", _handle_chat),
    "/v1/models": ("GET", _handle_models),
    "/healthz": ("GET", _handle_healthz),
    "/bytes": ("GET", _handle_bytes),
    "/echo": ("POST", _handle_echo),
}


# --- entry points ------------------------------------------------------------------------------


async def serve_origin(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    backlog: int = 4096,
) -> asyncio.Server:
    """Start the dev origin on the running loop and return the listening server.

    ``port=0`` picks a free port: read it from ``server.sockets[0].getsockname()[1]``. The
    server is already accepting; stop it with ``server.close()`` (on Python 3.12+ a following
    ``await server.wait_closed()`` also waits for open client connections to end).
    ``ssl_context`` makes it an HTTPS origin. The large default ``backlog`` is for benchmarks that
    open thousands of connections at once (the kernel caps it at ``somaxconn``).
    """
    loop = asyncio.get_running_loop()
    ticker = _Ticker(loop)
    return await loop.create_server(
        lambda: _OriginProtocol(ticker), host, port, ssl=ssl_context, backlog=backlog
    )


def _parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; an empty host means all interfaces."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aicdn-relay dev-origin",
        description="LLM-like HTTP origin (OpenAI chat completions, SSE) for tests and benchmarks.",
    )
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8000)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    return parser


async def _run(host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
    server = await serve_origin(host, port, ssl_context=ssl_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    scheme = "https" if ssl_context else "http"
    print(
        f"dev-origin listening on {scheme}://{bound_host}:{bound_port}", file=sys.stderr, flush=True
    )
    try:
        await stop.wait()
    finally:
        # No wait_closed(): since Python 3.12 it also waits for every client connection to end,
        # and a benchmark client holding keep-alive connections would block shutdown.
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the dev origin until SIGINT/SIGTERM; returns the process exit status.

    Never calls ``sys.exit``: argparse's own exits (``--help``, usage errors) are turned into the
    returned status, so this can be embedded in another CLI.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("dev-origin: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    host, port = args.listen
    try:
        uvloop.run(_run(host, port, ssl_context))
    except OSError as exc:
        print(f"dev-origin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
