"""``http`` handler: HTTP/1.1 reverse proxy for LLM APIs (DESIGN §3.2).

One ``HttpConnection`` per client connection parses requests with httptools; each request is
an ``Exchange``, served from loop callbacks: it is bound to an idle pooled upstream connection
or to one dialled through the chain (the only task), sends the head and streams the body, and
``UpstreamConnection`` streams the response back read by read. A request is retried on
another node only while no byte of it can have reached an origin: the dial failed, or the
relay server refused the tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import cast

import httptools

from relay import deadlines
from relay.chain import DialError
from relay.handlers.http_exchange import Exchange, Outcome
from relay.handlers.http_upstream import UpstreamConnection
from relay.policy import Verdict
from relay.pool import UpstreamPool
from relay.protocols import http1
from relay.service import Route, ServiceRuntime
from relay.usage import key_of

log = logging.getLogger(__name__)

#: Pipelined requests queued behind the one in flight before the client is paused.
MAX_QUEUED_REQUESTS = 16
#: Nodes tried for one request before answering 502.
MAX_ATTEMPTS = 3


#: Request headers the handler looks at or drops; any other passes as it is.
_REQUEST_SPECIAL = http1.HOP_BY_HOP | {
    b"content-length", b"x-request-id", b"x-forwarded-for", b"authorization", b"x-api-key",
}  # fmt: skip


#: Key hashes of the credentials seen lately (see ``_key``); cleared when it reaches its bound.
_KEYS: dict[tuple[bytes, bytes], str] = {}
_KEYS_MAX = 4096


def _key(authorization: bytes, api_key: bytes) -> str:
    """The request's API key hash (``relay.usage.key_of``). A service sees few distinct
    credentials, sent again on every request and every new connection: each is hashed once."""
    credentials = (authorization, api_key)
    key = _KEYS.get(credentials)
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        key = _KEYS[credentials] = key_of(authorization, api_key)
    return key


class HttpConnection(asyncio.Protocol):
    # Slots: one object per client connection, held for as long as it stays open (idle
    # keep-alive connections and long streams): a dict of 27 attributes would be ~1 KiB more.
    __slots__ = (
        "_active", "_admitted", "_advance_due", "_advance_handle", "_between_requests", "_closing",
        "_corked", "_current", "_deadlines", "_dialing", "_head_bytes", "_head_started",
        "_headers", "_idle_since", "_opened_at", "_parser", "_pool", "_queue", "_reading_paused",
        "_refusal", "_url", "_wake_slot", "client_paused", "loop", "options", "peer_ip", "service",
        "transport",
    )  # fmt: skip

    def __init__(self, service: ServiceRuntime) -> None:
        self.service = service
        self.options = service.config.handler.http
        self.loop = asyncio.get_running_loop()
        self._pool: UpstreamPool[UpstreamConnection] = service.upstream_pool
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.client_paused = False
        #: None between keep-alive requests: made again when the next bytes arrive, so a
        #: connection holding a long stream does not hold a parser (~900 bytes) it cannot use.
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        #: The last request parsed is complete and allows another: the parser can go.
        self._between_requests = False
        self._url = b""
        self._headers = http1.NO_HEADERS
        self._head_bytes = 0
        #: When the first byte of the request head being parsed arrived (headerTimeout).
        self._head_started: float | None = None
        self._current: Exchange | None = None  # being parsed
        #: Parsed requests waiting to be served (pipelining); a list: almost always 0 or 1.
        self._queue: list[Exchange] = []
        self._active: Exchange | None = None  # being served
        self._advance_handle: asyncio.Handle | None = None
        #: ``_advance`` is owed at the end of the callback running now (see ``exchange_ended``).
        self._advance_due = False
        #: The dial of the active exchange's upstream, while it runs.
        self._dialing: asyncio.Task[None] | None = None
        #: Why reading the client is paused (body backpressure, queue, oversized); None: never.
        self._reading_paused: set[str] | None = None
        #: The connection's one wake-up (keep-alive, request head and the active exchange's
        #: deadlines; see ``on_deadline``): its slot in the loop's deadlines, 0 when none.
        self._deadlines = deadlines.for_loop(self.loop)
        self._wake_slot = 0
        #: When the connection last became idle; None while a request is in progress.
        self._idle_since: float | None = None
        self._closing = False
        self._corked: list[bytes] | None = None
        self._opened_at = 0.0
        #: Admitted by the connection policies: owes them one release at the end.
        self._admitted = False
        #: A connection-level refusal (shield block, climiter) answers every request with it.
        self._refusal: Verdict | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self._opened_at = self.loop.time()
        self.transport.set_write_buffer_limits(high=self.service.config.buffer_size)
        self.service.opened(self)
        verdict = self.service.admit_connection(self.peer_ip, self._opened_at)
        if verdict.allowed:
            self._admitted = True
        elif verdict.reason in ("admission", "shield_blacklist"):
            self._closing = True  # never a word to those
            self.transport.abort()
            return
        else:
            self._refusal = verdict
        self._arm_keepalive()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "not_implemented", "protocol upgrades are not supported here")
            return
        except httptools.HttpParserError as exc:
            self._reject(400, "bad_request", f"malformed request: {exc}")
            return
        if self._head_bytes > self.options.max_header_size:
            self._reject(431, "header_too_large", "request head too large")
            return
        if self._between_requests:
            self._parser = None
        if self._advance_due:  # a request head came in: serve it now that the read is parsed
            self._advance_due = False
            self._advance()

    def eof_received(self) -> bool:
        # Half-closed client: finish the exchange in flight, then close.
        self._closing = True
        return self._active is not None or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._admitted:
            self._admitted = False
            self.service.release_connection(self.peer_ip)
        if self._wake_slot:
            self._deadlines.remove(self, self._wake_slot)
            self._wake_slot = 0
        if self._active is not None:
            self._active.client_gone()
        for exchange in self._queue:
            exchange.client_gone()
        self._queue.clear()
        self.service.closed(self, self.loop.time() - self._opened_at)

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading the upstream.
        self.client_paused = True
        if self._active is not None and self._active.upstream is not None:
            self._active.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_paused = False
        if self._active is not None and self._active.upstream is not None:
            self._active.upstream.transport.resume_reading()

    def close(self) -> None:
        """Close now if idle; otherwise after the exchange in flight (used when draining)."""
        self._closing = True
        if self._active is None and not self._queue and self.transport is not None:
            self.transport.close()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between_requests = False
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if headers is http1.NO_HEADERS:
            return  # a trailer field of a chunked request body: not forwarded
        headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._idle_since = None  # busy until the exchange is done
        self._head_started = None
        if self._head_bytes > self.options.max_header_size:
            return  # answered with 431 once feed_data returns
        parser = self._parser
        assert parser is not None
        method = parser.get_method()
        request_id = b""
        forwarded = b""
        authorization = api_key = b""
        chunked = False
        declared_length = 0
        # One pass over the client's headers (once per request): the head that goes upstream
        # is built as it goes, and what we need to know of them is picked up on the way. Most
        # headers are no business of ours: one set lookup each.
        drop = http1.connection_named(self._headers)
        lines = [method + b" " + self._url + b" HTTP/1.1"]
        for name, value in self._headers:
            lower = name.lower()
            if lower not in _REQUEST_SPECIAL:
                if drop is None or lower not in drop:
                    lines.append(name + b": " + value)
                continue
            if lower == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
            elif lower == b"content-length":
                # httptools checked it already
                declared_length = int(value) if value.strip().isdigit() else 0
            elif lower == b"x-request-id":
                if http1.valid_request_id(value):
                    request_id = value
                continue
            elif lower == b"x-forwarded-for":
                forwarded = value
                continue
            elif lower == b"authorization":
                authorization = value
            elif lower == b"x-api-key":
                api_key = value
            if lower in http1.HOP_BY_HOP or (drop is not None and lower in drop):
                continue
            lines.append(name + b": " + value)
        if not request_id:
            request_id = http1.new_request_id()
        client_ip = self.peer_ip.encode()
        lines.append(
            b"X-Forwarded-For: " + (forwarded + b", " + client_ip if forwarded else client_ip)
        )
        lines.append(b"X-Request-ID: " + request_id)
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"Connection: keep-alive\r\n\r\n")
        head = b"\r\n".join(lines)
        self._headers = http1.NO_HEADERS  # not kept for as long as the exchange runs
        self._url = b""
        exchange = Exchange(self, method, head, request_id, parser.should_keep_alive(), chunked)
        if not chunked and declared_length > self.options.max_body_size > 0:
            self._body_too_large(exchange)
        client = self.service.client_ip(self.peer_ip, forwarded)
        exchange.client = client
        exchange.key = _key(authorization, api_key)
        verdict = self._refusal or self.service.admit_request(client, self.loop.time())
        if verdict.allowed and self.service.usage is not None:
            verdict = self.service.usage_verdict(exchange.key)
        if not verdict.allowed:
            exchange.refusal = verdict
        self._current = exchange
        self._queue.append(exchange)
        if len(self._queue) > MAX_QUEUED_REQUESTS:
            self.pause_reading_for_body("queue")
        if self._active is None:
            self._advance_due = True  # at the end of data_received, with the body read so far

    def on_body(self, body: bytes) -> None:
        exchange = self._current
        if exchange is None or exchange.oversized:
            return
        limit = self.options.max_body_size
        if limit and exchange.body_bytes + len(body) > limit:
            self._body_too_large(exchange)
            return
        exchange.feed_body(body)

    def _body_too_large(self, exchange: Exchange) -> None:
        """The request body exceeds ``maxBodySize``: stop reading the client and answer 413
        (the exchange, or ``_serve`` once it gets to it), then close: the rest of the body is
        never read."""
        exchange.oversized = True
        self.service.block("body_too_large")
        self.pause_reading_for_body("oversized")
        if exchange is self._active and exchange.upstream is not None:
            exchange.body_too_large(self.options.max_body_size)

    def on_message_complete(self) -> None:
        # After a request that closes the connection the parser stays: it refuses more bytes.
        assert self._parser is not None
        self._between_requests = self._parser.should_keep_alive()
        if self._current is not None:
            self._current.end_body()
            self._current = None

    # --- serving ----------------------------------------------------------------------------
    # DANGER ZONE: runs once per request. A request that finds an idle upstream connection is
    # served from loop callbacks alone: ``_advance`` (scheduled with call_soon once the
    # request head is parsed) binds it, and its end comes back through ``exchange_ended``,
    # which schedules ``_advance`` again. No task, future or event per request: those cost
    # several loop iterations and ~20 µs each time. Only dialing a new tunnel runs as a task.

    def exchange_ended(self, exchange: Exchange) -> None:
        """Called by ``exchange`` once its outcome is set. The rest happens in ``_advance``,
        outside the parser callback that ended it: at the end of the upstream read that ended
        it (``uncork``), else in a loop callback of its own."""
        if exchange is self._active:
            if self._corked is not None:
                self._advance_due = True
            else:
                self._schedule_advance()

    def _schedule_advance(self) -> None:
        if self._advance_handle is None:
            self._advance_handle = self.loop.call_soon(self._advance_soon)

    def _advance_soon(self) -> None:
        self._advance_handle = None
        self._advance()

    def _advance(self) -> None:
        """Conclude the exchange that ended, then start the next queued one, go idle, or close."""
        try:
            active = self._active
            if active is not None:
                if active.outcome is None or not self._conclude(active):
                    return  # still running, or retried on another node
                self._active = None
                if self._closing and not self._queue:
                    self._close_transport()
                    return
                self._arm_keepalive()
            if self._queue:
                self._start(self._queue.pop(0))
            elif self._closing:
                self._close_transport()
        except Exception:  # a bug, not a client's doing: log it with context and drop the client
            log.exception(
                "service %s: http connection from %s failed", self.service.name, self.peer_ip
            )
            self._closing = True
            self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        if len(self._queue) <= MAX_QUEUED_REQUESTS:
            self.resume_reading_for_body("queue")
        if exchange.refusal is not None:
            self._refuse(exchange, exchange.refusal)
        elif exchange.oversized:
            exchange.body_too_large(self.options.max_body_size)
        else:
            self._attempt(exchange)

    def _attempt(self, exchange: Exchange) -> None:
        """Send ``exchange`` to an idle pooled connection, else dial one (a task)."""
        exchange.attempts += 1
        route = self.service.route(self.peer_ip)
        if not exchange.tried:
            upstream = self._pool.take(route.pool_key, self.loop.time())
            if upstream is not None:
                exchange.bind(upstream)
                return
        self._dialing = self.loop.create_task(self._dial(exchange, route))

    async def _dial(self, exchange: Exchange, route: Route) -> None:
        try:
            await self._dial_and_bind(exchange, route)
        except Exception:  # a bug: log it with context and drop the client
            log.exception(
                "service %s: http connection from %s failed", self.service.name, self.peer_ip
            )
            self.abort()
        finally:
            self._dialing = None

    async def _dial_and_bind(self, exchange: Exchange, route: Route) -> None:
        try:
            dialed = await self.service.connect_upstream(
                key=self.peer_ip, exclude=frozenset(exchange.tried), route=route
            )
        except DialError as exc:
            if not exchange.client_left:
                self.service.metrics.upstream_error(self.service.name, exc.node, "connect")
                self.answer_error(exchange, 502, "bad_gateway", str(exc))
            return
        if exchange.client_left or exchange.oversized or exchange.outcome is not None:
            dialed.transport.close()
            if exchange.oversized:
                exchange.body_too_large(self.options.max_body_size)
            return
        # Pooled under where it really leads: failover may have picked another node.
        pool_key = (dialed.node, route.target_text)
        upstream = UpstreamConnection(dialed.transport, dialed.node, pool_key)
        dialed.pending.hand_over(upstream)
        exchange.bind(upstream)

    def _conclude(self, exchange: Exchange) -> bool:
        """Act on how ``exchange`` ended; False when it was sent to another node instead."""
        outcome = exchange.outcome
        upstream = exchange.upstream
        if outcome is Outcome.COMPLETE:
            assert upstream is not None
            if upstream.reusable and not self.service.draining:
                self._pool.put(upstream.pool_key, upstream, self.loop.time())
            else:
                upstream.transport.close()
            keep_going = True
        elif outcome is Outcome.RETRY and exchange.retained is not None:
            assert upstream is not None
            exchange.tried += (upstream.node,)
            if exchange.attempts < MAX_ATTEMPTS:
                log.info(
                    "service %s: retrying %s on another node",
                    self.service.name,
                    exchange.request_id.decode(),
                )
                exchange.outcome = None
                self._attempt(exchange)
                return False
            self.answer_error(exchange, 502, "bad_gateway", "no upstream accepted the request")
            keep_going = False
        elif outcome is Outcome.RETRY:
            self.answer_error(exchange, 502, "bad_gateway", "upstream refused the request")
            keep_going = True
        else:  # FAILED: the connection carries on only if the answer was a whole one
            keep_going = not exchange.response_begun and exchange.body_done
        if exchange.oversized or self._refusal is not None:
            keep_going = False  # the rest of the body is unread / every request is refused
        if not keep_going or not exchange.client_keep_alive:
            self._closing = True
        return True

    # --- helpers used by Exchange -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.service.stats.bytes_out += len(data)

    def cork(self) -> None:
        """Collect writes until ``uncork``: what one upstream read produces (response head,
        body, last chunk) leaves in one system call instead of three. Nothing waits longer:
        ``uncork`` runs at the end of the same callback."""
        self._corked = []

    def uncork(self) -> None:
        chunks, self._corked = self._corked, None
        if chunks:
            self.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self._advance_due:  # the exchange ended in this read: conclude it now
            self._advance_due = False
            self._advance()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, exchange: Exchange, verdict: Verdict) -> None:
        """429 with ``Retry-After`` for a request a policy refused."""
        extra: http1.Headers = []
        if verdict.retry_after > 0:
            extra.append((b"retry-after", b"%d" % math.ceil(verdict.retry_after)))
        if verdict.reason == "quota":
            self.answer_error(
                exchange, 429, "quota_exceeded", "this API key is over its quota", extra
            )
            return
        self.answer_error(exchange, 429, "too_many_requests", f"refused by {verdict.reason}", extra)

    def answer_error(
        self,
        exchange: Exchange,
        status: int,
        error: str,
        message: str,
        extra: http1.Headers | None = None,
    ) -> None:
        keep_alive = exchange.client_keep_alive and exchange.body_done and not self._closing
        self.write(http1.json_error(status, error, message, exchange.request_id, keep_alive, extra))
        if exchange.outcome is None:
            exchange._record(status)
            exchange.end(Outcome.FAILED)
        if not keep_alive:
            self._closing = True

    def pause_reading_for_body(self, why: str = "body") -> None:
        paused = self._reading_paused
        if not paused and self.transport is not None:
            self.transport.pause_reading()
        if paused is None:
            self._reading_paused = {why}
        else:
            paused.add(why)

    def resume_reading_for_body(self, why: str = "body") -> None:
        paused = self._reading_paused
        if paused and why in paused:
            paused.discard(why)
            if not paused and self.transport is not None:
                self.transport.resume_reading()

    def _reject(self, status: int, error: str, message: str) -> None:
        """Answer a request we could not even parse, then close."""
        self._closing = True
        assert self.transport is not None
        body = http1.json_error(status, error, message, http1.new_request_id(), False)
        if self._active is None:
            self.transport.write(body)
        self.service.stats.count_request(status)
        self.transport.close()

    def _arm_keepalive(self) -> None:
        """The connection is idle from now on. One lazily re-armed wake-up per connection
        closes it after ``keepaliveTimeout`` idle, and a request head after ``headerTimeout``;
        requests only store timestamps."""
        self._idle_since = self.loop.time()
        if not self._wake_slot:
            self._wake_at(self._next_wake())

    def wake_by(self, deadline: float) -> None:
        """Make the wake-up come no later than ``deadline`` (an exchange's next deadline)."""
        slot = self._wake_slot
        if slot:
            if slot * deadlines.GRAIN <= deadline:
                return
            self._deadlines.remove(self, slot)
        self._wake_at(deadline)

    def _wake_at(self, when: float) -> None:
        self._wake_slot = self._deadlines.add(self, when)

    def _next_wake(self) -> float:
        # Wake at least every headerTimeout: a head that starts arriving in between is seen at
        # the next wake, which is before its deadline, and the timer then sleeps until exactly
        # that deadline. No timer operation per request; a wake per headerTimeout per connection.
        now = self.loop.time()
        options = self.options
        if self._head_started is not None:
            wake = self._head_started + options.header_timeout
        elif self._idle_since is None:  # busy: only a pipelined head can be due
            wake = now + min(options.keepalive_timeout, options.header_timeout)
        else:
            wake = min(self._idle_since + options.keepalive_timeout, now + options.header_timeout)
        deadline = self._active.deadline() if self._active is not None else None
        return wake if deadline is None else min(wake, deadline)

    def on_deadline(self) -> None:
        self._wake_slot = 0
        now = self.loop.time()
        active = self._active
        if active is not None:
            active.check_deadlines(now)
        if self._closing:
            # Only the exchange in flight (a half-closed client's) still has deadlines.
            deadline = active.deadline() if active is not None else None
            if deadline is not None and self.transport is not None:
                self._wake_at(deadline)
            return
        options = self.options
        started = self._head_started
        if started is not None and now >= started + options.header_timeout:
            message = (
                f"request head not complete within headerTimeout ({options.header_timeout:g}s)"
            )
            self.service.block("header_timeout")
            self._reject(408, "request_timeout", message)
            return
        since = self._idle_since
        if started is None and since is not None and now >= since + options.keepalive_timeout:
            self.close()
            return
        self._wake_at(self._next_wake())
