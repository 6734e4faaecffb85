"""``_OriginProtocol``: one client connection. Parses requests with ``httptools``, queues
pipelined ones, answers them strictly in order by dispatching to the route's handler, and gives
handlers the means to answer (``send``) or to stream a response over time (``start_job``,
``finish``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast

import httptools

from relay.dev_origin.ticker import _Ticker
from relay.dev_origin.wire import (
    _JSON,
    _REASONS,
    _error_body,
    _head,
    _HttpError,
    _Job,
    _Request,
)

#: Request bodies above this are refused with 413: chat and echo bodies are small by nature.
MAX_REQUEST_BODY = 16 * 1024 * 1024
#: Parsed-but-unanswered pipelined requests at which we stop reading from the socket, so a client
#: pipelining without reading cannot grow our memory without bound.
_MAX_QUEUED_REQUESTS = 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _OriginProtocol(asyncio.Protocol):
    """One client connection: parses requests, answers them one at a time, in order.

    Parsing runs ahead of answering (pipelining): completed requests wait in ``_queue`` while an
    earlier, possibly long, streamed response is in progress. After a parse error nothing more
    is parsed; the queued ``400`` is the last response on the connection. ``routes`` maps each
    path to its method and handler (``endpoints._ROUTES``).
    """

    def __init__(self, ticker: _Ticker, routes: _Routes) -> None:
        self._ticker = ticker
        self._routes = routes
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
        route = self._routes.get(path)
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


#: A request handler, called as ``handler(proto, request, path, query)``.
_Handler = Callable[[_OriginProtocol, _Request, str, str], None]
#: path -> (method, handler).
_Routes = Mapping[str, tuple[str, _Handler]]
