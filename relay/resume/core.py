"""Core side of resumable streams: the origin connection outlives the tunnel that carried it.

A ``CoreStream`` sits between the origin connection and the current tunnel transport. It
frames what the origin sends (``StreamEnd``) and keeps it until the edge acknowledges it. When
the tunnel is lost without a ``CLOSE`` it *parks*: the origin connection stays open and is
still read, into the replay buffer, until that is full (then the origin is paused), for the
resume window. A resume from the edge that opened it (token bound to its user) attaches a new
tunnel, over any transport the core listens on, and replays from the edge's offset. When the
window passes, the origin connection is closed and the stream forgotten: no memory is held.

One ``SessionTable`` per relay node, shared by its relay services, so a stream opened over the
QUIC listener can resume over the WSS one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from typing import cast

from relay.config.model import ResumeOptions
from relay.metrics import ResumeStats, ServiceStats
from relay.protocols import relay_v1
from relay.protocols.relay_v1 import Status
from relay.protocols.resume import (
    ACK_DELAY,
    STREAM_ID_LEN,
    Accept,
    CloseReceived,
    DataReceived,
    ResumeError,
    ResumeRequest,
    StreamEnd,
    encode_accept,
    stream_token,
)
from relay.transports.base import PendingProtocol

log = logging.getLogger(__name__)

#: Called once when an attached tunnel transport is gone (the relay connection's bookkeeping).
Detached = Callable[[Exception | None], None]


class SessionTable:
    """The resumable streams of one node, by stream id."""

    def __init__(self, stats: ResumeStats) -> None:
        self.stats = stats
        #: Per-process secret the resume tokens are bound to (never leaves the process).
        self._secret = os.urandom(32)
        self.streams: dict[bytes, CoreStream] = {}

    def __len__(self) -> int:
        return len(self.streams)

    def open(
        self,
        user: str,
        options: ResumeOptions,
        origin: asyncio.Transport,
        origin_pending: PendingProtocol,
        stats: ServiceStats,
    ) -> tuple[CoreStream, Accept]:
        """Register a new stream over ``origin``; returns it and the answer for the edge."""
        stream_id = os.urandom(STREAM_ID_LEN)
        stream = CoreStream(self, stream_id, options, origin, stats)
        self.streams[stream_id] = stream
        origin_pending.hand_over(stream.origin_end)
        token = stream_token(self._secret, stream_id, user)
        return stream, Accept(stream_id, token, 0)

    def resume(
        self,
        request: ResumeRequest,
        user: str,
        tunnel: asyncio.Transport,
        rest: bytes,
        detached: Detached,
    ) -> tuple[Status, CoreStream | None]:
        """Attach ``tunnel`` to the stream ``request`` names and replay what the edge lacks.

        Returns OK and the stream (the answer and the replay are written), or the status to
        refuse with (and None):
        UNAUTHORIZED for a token that is not this user's for this stream, HOST_UNREACHABLE
        for a stream this node does not hold (closed, expired, never here), BAD_REQUEST for
        an offset the stream no longer holds (the stream is then lost).
        """
        self.stats.attempts += 1
        stream = self.streams.get(request.stream_id)
        expected = stream_token(self._secret, request.stream_id, user)
        if not hmac.compare_digest(expected, request.token):
            self.stats.failures += 1
            return Status.UNAUTHORIZED, None
        if stream is None:
            self.stats.failures += 1
            return Status.HOST_UNREACHABLE, None
        try:
            stream.reattach(tunnel, request.received, rest, detached)
        except ResumeError as exc:
            log.warning("resume of a stream refused: %s", exc)
            self.stats.failures += 1
            stream.lose()
            return Status.BAD_REQUEST, None
        self.stats.successes += 1
        return Status.OK, stream

    def remove(self, stream: CoreStream) -> None:
        self.streams.pop(stream.stream_id, None)

    def close_all(self) -> None:
        """Node shutdown: every stream's origin connection is closed at once."""
        for stream in list(self.streams.values()):
            stream.lose(count=False)


class CoreStream:
    """One resumable stream: the origin connection, the current tunnel (or none: parked)."""

    def __init__(
        self,
        table: SessionTable,
        stream_id: bytes,
        options: ResumeOptions,
        origin: asyncio.Transport,
        stats: ServiceStats,
    ) -> None:
        self.table = table
        self.stream_id = stream_id
        self.options = options
        self.origin = origin
        self.stats = stats
        self.end = StreamEnd()
        self.origin_end = _OriginEnd(self)
        #: The current tunnel attachment; None while parked.
        self.attached: _TunnelEnd | None = None
        self.parked = False
        self.finished = False
        self._park_timer: asyncio.TimerHandle | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        #: Why the origin is not being read (tunnel backpressure, full replay buffer).
        self._origin_paused: set[str] = set()
        self._origin_gone = False

    # --- attachments ------------------------------------------------------------------------

    def attach(self, tunnel: asyncio.Transport, raw: int, early: bytes, detached: Detached) -> None:
        """First tunnel: ``raw`` bytes of the edge's data come unframed, then frames."""
        end = _TunnelEnd(self, tunnel, detached, raw)
        self.attached = end
        tunnel.set_protocol(end)
        if early:
            end.data_received(early)
        tunnel.resume_reading()

    def reattach(
        self, tunnel: asyncio.Transport, received: int, rest: bytes, detached: Detached
    ) -> None:
        """A resume: answer with our offset, replay from the edge's, carry on over ``tunnel``.

        Raises ``ResumeError`` when the edge's offset is not held any more."""
        buffer = self.end.buffer
        if not buffer.base <= received <= buffer.sent:
            raise ResumeError(f"edge resumes at {received}, holding {buffer.base}..{buffer.sent}")
        old = self.attached
        if old is not None:
            # The edge saw the break first; the old tunnel is dead or dying: drop it.
            self.attached = None
            old.transport.abort()
        self._unpark()
        self.end.lost()
        replay = self.end.replay(received)
        answer = relay_v1.encode_response(
            Status.OK, encode_accept(Accept(self.stream_id, b"\0" * 32, self.end.received))
        )
        self.table.stats.replayed_bytes += self.end.buffer.size
        end = _TunnelEnd(self, tunnel, detached, 0)
        self.attached = end
        tunnel.set_protocol(end)
        tunnel.write(answer + replay)
        self._update_origin_reading()
        if rest:
            end.data_received(rest)
        tunnel.resume_reading()

    def detach(self, end: _TunnelEnd) -> None:
        """``end``'s tunnel is gone without a CLOSE: park, unless the stream is over."""
        if self.attached is not end:
            return
        self.attached = None
        self._origin_paused.discard("tunnel")
        if self.finished:
            return
        self.end.lost()
        self.parked = True
        self.table.stats.parked += 1
        self.table.stats.buffered_bytes += self.end.buffer.size
        loop = asyncio.get_running_loop()
        self._park_timer = loop.call_later(self.options.window, self._expired)
        self._update_origin_reading()

    def _unpark(self) -> None:
        if self.parked:
            self.parked = False
            self.table.stats.parked -= 1
            self.table.stats.buffered_bytes -= self.end.buffer.size
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None

    def _expired(self) -> None:
        self._park_timer = None
        log.info("resumable stream not resumed within %gs: closed", self.options.window)
        self.lose()

    def lose(self, count: bool = True) -> None:
        """End the stream for good without its edge: close the origin, hold nothing."""
        if self.finished:
            return
        if count:
            self.table.stats.streams_lost += 1
        self._unpark()
        self._stop_ack_timer()
        self.finished = True
        self.table.remove(self)
        self.end.buffer.clear()
        attached, self.attached = self.attached, None
        if attached is not None:
            attached.transport.abort()
        self.origin.abort()

    def finish(self) -> None:
        """The edge closed the stream (``CLOSE``): answer it, close the origin, forget it."""
        if self.finished:
            return
        self.finished = True
        self._unpark()
        self._stop_ack_timer()
        self.table.remove(self)
        self.end.buffer.clear()
        attached = self.attached
        if attached is not None:
            if not self.end.closing:
                self._write(self.end.send_close())
            attached.transport.close()
        self.origin.close()

    # --- data -------------------------------------------------------------------------------

    def from_origin(self, data: bytes) -> None:
        # DANGER ZONE: one call per origin chunk (per SSE event).
        framed = self.end.send(data)
        attached = self.attached
        if attached is not None and not attached.transport.is_closing():
            attached.transport.write(framed)  # else kept for the replay after a resume
            self.stats.bytes_out += len(data)
        elif self.parked:
            self.table.stats.buffered_bytes += len(data)
        if self.end.buffer.size >= self.options.buffer:
            self._pause_origin("window")

    def origin_eof(self) -> None:
        self._write(self.end.send_eof())

    def origin_lost(self) -> None:
        """The origin closed: tell the edge (``CLOSE``); the stream ends with its answer, or
        stays parked with the tail until the edge resumes or the window passes."""
        self._origin_gone = True
        if self.finished:
            return
        self._write(self.end.send_close())

    def from_tunnel(self, data: bytes) -> None:
        events, reply = self.end.receive(data)
        origin = self.origin
        for event in events:
            if isinstance(event, DataReceived):
                if not self._origin_gone:
                    origin.write(event.data)
                self.stats.bytes_in += len(event.data)
            elif isinstance(event, CloseReceived):
                self.finish()
                return
            elif origin.can_write_eof() and not self._origin_gone:
                origin.write_eof()
        if reply:
            self._write(reply)
        else:
            self._schedule_ack()
        if "window" in self._origin_paused:
            self._update_origin_reading()

    def _write(self, data: bytes) -> None:
        """Write to the current tunnel, if any and open; a frame that could not go is
        replayed after a resume (payload and control frames are kept by ``StreamEnd``)."""
        attached = self.attached
        if attached is not None and not attached.transport.is_closing():
            attached.transport.write(data)

    def _schedule_ack(self) -> None:
        if self.end.unacked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._delayed_ack)

    def _delayed_ack(self) -> None:
        self._ack_timer = None
        attached = self.attached
        if attached is not None and not attached.transport.is_closing() and self.end.unacked:
            attached.transport.write(self.end.ack())

    def _stop_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def raw_from_tunnel(self, data: bytes) -> None:
        """The edge's first write, sent unframed with the relay header."""
        self.end.received += len(data)
        if not self._origin_gone:
            self.origin.write(data)
        self.stats.bytes_in += len(data)
        self._schedule_ack()

    # --- origin flow control ----------------------------------------------------------------

    def _pause_origin(self, why: str) -> None:
        if not self._origin_paused and not self._origin_gone:
            self.origin.pause_reading()
        self._origin_paused.add(why)

    def _resume_origin(self, why: str) -> None:
        if why in self._origin_paused:
            self._origin_paused.discard(why)
            if not self._origin_paused and not self._origin_gone:
                self.origin.resume_reading()

    def _update_origin_reading(self) -> None:
        if self.end.buffer.size >= self.options.buffer:
            self._pause_origin("window")
        else:
            self._resume_origin("window")

    def tunnel_paused(self, paused: bool) -> None:
        if paused:
            self._pause_origin("tunnel")
        else:
            self._resume_origin("tunnel")


class _OriginEnd(asyncio.Protocol):
    """The origin connection's protocol."""

    __slots__ = ("stream",)

    def __init__(self, stream: CoreStream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.stream.from_origin(data)

    def eof_received(self) -> bool:
        self.stream.origin_eof()
        return True  # the edge may still send; the stream's end closes us

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.origin_lost()

    def pause_writing(self) -> None:
        attached = self.stream.attached
        if attached is not None:
            attached.transport.pause_reading()

    def resume_writing(self) -> None:
        attached = self.stream.attached
        if attached is not None:
            attached.transport.resume_reading()


class _TunnelEnd(asyncio.Protocol):
    """One tunnel attachment of a stream (a new one per resume)."""

    def __init__(
        self, stream: CoreStream, transport: asyncio.Transport, detached: Detached, raw: int
    ) -> None:
        self.stream = stream
        self.transport = transport
        self._detached: Detached | None = detached
        #: Unframed bytes still to come (the edge's first write).
        self._raw = raw

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream.attached is not self:
            return  # a replaced tunnel's last words
        if self._raw:
            raw, data = data[: self._raw], data[self._raw :]
            self._raw -= len(raw)
            stream.raw_from_tunnel(raw)
            if not data:
                return
        try:
            stream.from_tunnel(data)
        except ResumeError as exc:
            log.warning("resumable stream: bad frame from the edge: %s", exc)
            stream.lose()

    def eof_received(self) -> bool:
        return False  # without a CLOSE this is a break: close, and park in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.detach(self)
        detached, self._detached = self._detached, None
        if detached is not None:
            detached(exc)

    def pause_writing(self) -> None:
        if self.stream.attached is self:
            self.stream.tunnel_paused(True)

    def resume_writing(self) -> None:
        if self.stream.attached is self:
            self.stream.tunnel_paused(False)
