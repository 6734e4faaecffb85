"""One HTTP exchange of the ``http`` handler: a request from its head to its response's end.

An ``Exchange`` owns what happens to one request: its body on the way up (kept for a retry
while it is small and no byte can have reached an origin), its timers (TTFB, idle, total),
and how it ends (complete, retry on another node, or failed with an answer the client sees).
The ``HttpConnection`` that parsed it serves exchanges one after another.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING

from relay.config.model import HTTPHandlerOptions
from relay.connector import RelayRefused
from relay.handlers.http_accounting import account
from relay.policy import Verdict
from relay.protocols import http1
from relay.usage import ANONYMOUS_KEY

if TYPE_CHECKING:
    from relay.handlers.http import HttpConnection
    from relay.handlers.http_upstream import UpstreamConnection

log = logging.getLogger(__name__)


#: Body chunks kept for the ``usage`` search: the final SSE event may arrive split over a few
#: reads, with ``data: [DONE]`` after it.
TAIL_CHUNKS = 8


class Outcome(Enum):
    COMPLETE = "complete"  # response delivered in full
    RETRY = "retry"  # nothing reached an origin; another node may serve it
    FAILED = "failed"  # answered with an error, or the response broke off


class Exchange:
    """One request/response pair, from the client's request head to the response's end."""

    # Slots: one object per request whose attributes the per-chunk path reads; past 30
    # attributes an instance dict loses CPython's shared-key layout and every lookup slows.
    __slots__ = (
        "_pending_body", "_pending_size", "_retained_size", "attempts", "body_bytes",
        "body_chunked", "body_done", "client", "client_keep_alive", "client_left", "conn",
        "first_byte_at", "head", "is_head", "json_body", "key", "last_activity",
        "method", "options", "outcome", "oversized", "refusal", "request_id", "response_begun",
        "response_bytes", "retained", "sent_at", "sse", "started_at", "status", "tail", "tried",
        "upstream",
    )  # fmt: skip

    def __init__(
        self,
        conn: HttpConnection,
        method: bytes,
        head: bytes,
        request_id: bytes,
        keep_alive: bool,
        body_chunked: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.is_head = method == b"HEAD"
        self.request_id = request_id
        self.client_keep_alive = keep_alive
        self.body_chunked = body_chunked
        self.options: HTTPHandlerOptions = conn.service.config.handler.http
        self.head = head
        self.body_done = False
        self.body_bytes = 0
        #: Body bytes read before an upstream was bound (None: none yet, as almost always).
        self._pending_body: list[bytes] | None = None
        self._pending_size = 0
        #: What has been sent upstream, kept for a retry until it outgrows ``retry_buffer``.
        self.retained: list[bytes] | None = [head]
        self._retained_size = len(head)
        self.upstream: UpstreamConnection | None = None
        #: How the exchange ended; None while it runs (``end`` sets it and tells the connection).
        self.outcome: Outcome | None = None
        #: Upstream attempts so far, and the nodes that refused it (a retry avoids them).
        self.attempts = 0
        self.tried: tuple[str, ...] = ()
        self.status = 0
        self.response_bytes = 0
        self.started_at = conn.loop.time()
        self.sent_at = 0.0
        self.first_byte_at = 0.0
        self.last_activity = 0.0
        self.response_begun = False
        self.client_left = False
        #: Set when a policy refused the request: it is answered 429 and never sent upstream.
        self.refusal: Verdict | None = None
        #: The body outgrew ``maxBodySize``: answered 413, the rest of it is never read.
        self.oversized = False
        #: The client (after trusted proxies) and its API key hash (``relay.usage.key_of``).
        self.client = ""
        self.key = ANONYMOUS_KEY
        #: The response is an SSE stream / a JSON body (set with the response head).
        self.sse = False
        self.json_body = False
        #: The last body chunks, kept (not copied) while usage is counted, for the ``usage``
        #: object the final SSE event or the JSON body carries; None: not kept.
        self.tail: list[bytes] | None = None

    # --- request body (from the client parser) ----------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.refusal is not None:
            return  # a refused request's body is read and dropped
        self._send_upstream(http1.chunk(data) if self.body_chunked else data)

    def end_body(self) -> None:
        self.body_done = True
        if self.body_chunked and self.refusal is None:
            self._send_upstream(http1.LAST_CHUNK)

    def _send_upstream(self, data: bytes) -> None:
        self.conn.service.stats.bytes_in += len(data)
        self._retain(data)
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            upstream.transport.write(data)
            return
        if self._pending_body is None:
            self._pending_body = []
        self._pending_body.append(data)
        self._pending_size += len(data)
        if self._pending_size > self.conn.service.config.buffer_size:
            self.conn.pause_reading_for_body()

    def _retain(self, data: bytes) -> None:
        if self.retained is None:
            return
        self._retained_size += len(data)
        if self._retained_size > self.options.retry_buffer:
            self.retained = None
        else:
            self.retained.append(data)

    # --- attaching an upstream --------------------------------------------------------------

    def bind(self, upstream: UpstreamConnection) -> None:
        """Send everything so far to ``upstream`` and start the response timers."""
        loop = self.conn.loop
        self.upstream = upstream
        upstream.attach(self)
        payload = b"".join(self.retained) if self.retained is not None else None
        if payload is None:
            payload = self.head + b"".join(self._pending_body or ())
        self._pending_body = None
        self._pending_size = 0
        upstream.transport.write(payload)
        self.conn.resume_reading_for_body()
        if self.conn.client_paused:
            upstream.transport.pause_reading()
        self.sent_at = loop.time()
        self.conn.wake_by(self._next_deadline())

    # --- timeouts ---------------------------------------------------------------------------
    # DANGER ZONE: no timer of its own. The connection's one wake-up (``relay.deadlines``)
    # comes for the earliest of its own deadlines (keep-alive, request head) and this
    # exchange's (``deadline``), and calls ``check_deadlines``. The per-chunk path only stores
    # ``last_activity``; three timers (TTFB, idle, total) would cost a TimerHandle per chunk,
    # and even one per exchange costs ~500 bytes for as long as a stream runs and two timer
    # operations per request.

    def deadline(self) -> float | None:
        """When the connection's timer must look at this exchange next; None: never."""
        if self.outcome is not None or not self.sent_at:
            return None  # ended, or not sent upstream yet (dialing has its own timeout)
        return self._next_deadline()

    def _next_deadline(self) -> float:
        options = self.options
        if self.first_byte_at:
            deadline = self.last_activity + options.idle_timeout
        else:
            # Wake at least every idleTimeout even before the first byte: a response that
            # starts while we sleep must have its idle deadline checked in time.
            now = self.conn.loop.time()
            deadline = min(self.sent_at + options.ttfb_timeout, now + options.idle_timeout)
        if options.total_timeout > 0:
            deadline = min(deadline, self.started_at + options.total_timeout)
        return deadline

    def check_deadlines(self, now: float) -> None:
        """End the exchange with a 504 (or a broken response) if one of its deadlines passed."""
        if self.outcome is not None or not self.sent_at:
            return
        options = self.options
        if options.total_timeout > 0 and now >= self.started_at + options.total_timeout:
            message = f"exchange exceeded totalTimeout ({options.total_timeout:g}s)"
            self._fail(504, "gateway_timeout", message, reason="total_timeout")
        elif not self.first_byte_at and now >= self.sent_at + options.ttfb_timeout:
            message = f"no response within ttfbTimeout ({options.ttfb_timeout:g}s)"
            self._fail(504, "gateway_timeout", message, reason="ttfb_timeout")
        elif self.first_byte_at and now >= self.last_activity + options.idle_timeout:
            message = f"upstream idle for {options.idle_timeout:g}s (idleTimeout)"
            self._fail(504, "gateway_timeout", message, reason="idle_timeout")

    # --- events from the upstream connection ------------------------------------------------

    def upstream_activity(self, nbytes: int) -> None:
        now = self.conn.loop.time()
        self.last_activity = now
        if not self.first_byte_at:
            self.first_byte_at = now
            self.conn.service.stats.ttfb.observe(now - self.sent_at)

    def response_started(self, status: int, head: bytes) -> None:
        self.status = status
        self.response_begun = True
        # No retry once a response began: the request kept for one can go (a long stream
        # would hold its prompt for as long as it runs).
        self.retained = None
        self.head = b""
        self.conn.write(head)

    def send_to_client(self, data: bytes) -> None:
        self.conn.write(data)

    def send_body(self, data: bytes, payload_bytes: int) -> None:
        """Forward ``data`` (the body as the client gets it, framing included) that carried
        ``payload_bytes`` of body; the payload itself went to ``tail`` if it is kept."""
        # DANGER ZONE: once per upstream read (per SSE event): one sum, at most one trim.
        self.response_bytes += payload_bytes
        tail = self.tail
        if tail is not None and len(tail) > TAIL_CHUNKS:
            # A list of a few beats a deque(maxlen=8): ~90 bytes, not ~600.
            if len(tail) == TAIL_CHUNKS + 1:
                del tail[0]
            else:
                del tail[:-TAIL_CHUNKS]
        if data:
            self.conn.write(data)

    def response_complete(self, reusable: bool) -> None:
        if self.outcome is not None:
            return
        assert self.upstream is not None
        self.upstream.reusable = reusable and self.body_done and not self.upstream.closed
        self.upstream.exchange = None
        self._record(self.status)
        self.end(Outcome.COMPLETE)

    def upstream_failed(self, message: str) -> None:
        self._fail(502, "bad_gateway", message, reason="protocol")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.outcome is not None:
            return
        if isinstance(exc, RelayRefused) and not self.response_begun:
            node = self.upstream.node if self.upstream else ""
            self.conn.service.metrics.upstream_error(self.conn.service.name, node, "refused")
            self.end(Outcome.RETRY)
            return
        message = (
            f"upstream closed the connection ({exc})" if exc else "upstream closed the connection"
        )
        self._fail(502, "bad_gateway", message, reason="reset")

    def pause_client_reading(self) -> None:
        self.conn.pause_reading_for_body()

    def resume_client_reading(self) -> None:
        self.conn.resume_reading_for_body()

    # --- endings ----------------------------------------------------------------------------

    def _fail(self, status: int, error: str, message: str, reason: str) -> None:
        """End the exchange with an error the client can see.

        Before the response began: a JSON error answer. After: the client connection is
        aborted, so the client sees a broken stream, never a clean (truncated) end.
        """
        if self.outcome is not None:
            return
        service = self.conn.service
        node = self.upstream.node if self.upstream else ""
        service.metrics.upstream_error(service.name, node, reason)
        log.warning("service %s request %s: %s", service.name, self.request_id.decode(), message)
        self._abandon(status, error, message)

    def body_too_large(self, limit: int) -> None:
        """End the exchange because the request body exceeds ``limit`` (``maxBodySize``):
        413 while no response has begun, else a broken response. The upstream, which saw
        only part of the body, is aborted; the client connection is not kept."""
        if self.outcome is not None:
            return
        log.info(
            "service %s request %s: body over %d bytes",
            self.conn.service.name,
            self.request_id.decode(),
            limit,
        )
        message = f"request body exceeds maxBodySize ({limit} bytes)"
        self._abandon(413, "payload_too_large", message)

    def _abandon(self, status: int, error: str, message: str) -> None:
        """Drop the upstream and end the exchange: with a JSON ``status`` answer while no
        response has begun, else by aborting the client connection (a broken stream)."""
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.transport.abort()
        if self.response_begun:
            self._record(self.status)
            self.conn.abort()
        else:
            self.conn.answer_error(self, status, error, message)
        if self.outcome is None:
            self.end(Outcome.FAILED)

    def client_gone(self) -> None:
        self.client_left = True
        if self.outcome is not None:
            return
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.transport.abort()
        self._record(499)
        self.end(Outcome.FAILED)

    def end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.conn.exchange_ended(self)

    def _record(self, status: int) -> None:
        stats = self.conn.service.stats
        stats.count_request(status)
        stats.request_duration.observe(self.conn.loop.time() - self.started_at)
        stats.request_size.observe(self.body_bytes)
        stats.response_size.observe(self.response_bytes)
        service = self.conn.service
        if service.usage is not None or service.access_log is not None:
            account(self, status, self.conn.loop.time())
