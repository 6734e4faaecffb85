"""``QuicLink``: one QUIC connection driven over the event loop's UDP transport.

The link feeds received datagrams to aioquic, dispatches its events to the stream transports,
sends what aioquic has to send once per loop iteration (not once per datagram or write: a burst
of SSE tokens on many streams leaves in few packets), keeps aioquic's timer, sends keepalive
PINGs while the connection is in use, and counts un-acknowledged bytes (``SendBudget``) so
writers pause before aioquic's buffers grow without bound (aioquic#328, #250).

Clients own their UDP socket (connected, so ICMP errors surface during the handshake); server
links share the listening socket of aioquic's ``QuicServer``, which demultiplexes datagrams by
connection ID and calls the ``_connection_id_*``/``_connection_terminated`` handlers below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from relay.transports.base import HandshakeError, TransportError
from relay.transports.quic.budget import SendBudget
from relay.transports.quic.engine import TunnelQuicConnection
from relay.transports.quic.options import QuicOptions
from relay.transports.quic.stream import QuicStreamTransport
from relay.transports.tls import TUNNEL_ALPN

log = logging.getLogger(__name__)

#: Probe timeouts in a row without an acknowledgement after which the peer counts as gone
#: (a crashed core, a NAT that dropped the binding): 31 probe timeouts in all, under a second
#: on a LAN, seconds on a WAN. The idle timeout would take far longer.
DEAD_AFTER_PROBES = 5

#: aioquic's clock. Not ``loop.time()``: uvloop's has millisecond resolution, and with it every
#: loopback or LAN round trip measures 0 or 1 ms, which makes aioquic declare packets lost that
#: are merely 1 ms old and shrink its congestion window over and over (3 MB/s on loopback).
now_ = time.monotonic
#: Timers due within this many seconds run now: uvloop rounds delays to whole milliseconds, so a
#: shorter one would fire at once, early, and spin until due.
TIMER_SLACK = 0.0005

_ping_ids = itertools.count(1)


class QuicConnectionLost(TransportError):
    """The QUIC connection carrying a stream closed, timed out or stopped answering."""


def _ignore_cid(cid: bytes) -> None:
    pass


def _nothing() -> None:
    pass


def _plain_address(addr: Any) -> Any:
    """``('::ffff:1.2.3.4', port, 0, 0)`` from a dual-stack socket as ``('1.2.3.4', port)``."""
    if isinstance(addr, tuple) and isinstance(addr[0], str) and addr[0].startswith("::ffff:"):
        return (addr[0][7:], addr[1])
    return addr


class QuicLink(asyncio.DatagramProtocol):
    """Drives one ``TunnelQuicConnection`` (see the module docstring).

    ``on_stream`` (servers) receives each stream the peer opens, before its first bytes: it
    must set the stream's protocol and call ``connection_made``. Only bidirectional streams,
    unless ``accept_uni`` (HTTP/3 runs its control and QPACK streams one way): a protocol on a
    unidirectional stream must keep it open on EOF (``eof_received`` true), as a stream we
    cannot send on must not be closed (that would send a FIN).
    """

    def __init__(
        self,
        quic: TunnelQuicConnection,
        options: QuicOptions,
        on_stream: Callable[[QuicStreamTransport], None] | None = None,
        accept_uni: bool = False,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.quic = quic
        self.options = options
        self._on_stream = on_stream
        #: Stream ID bits that make a peer's stream unwanted: server-initiated ones (bit 0)
        #: always, unidirectional ones (bit 1) unless asked for.
        self._reject_bits = 1 if accept_uni else 3
        self._transport: asyncio.DatagramTransport | None = None
        #: Client links own a connected socket: datagrams go out without an address.
        self._own_socket = on_stream is None
        self.peername: Any = None
        self.sockname: Any = None
        self.streams: dict[int, QuicStreamTransport] = {}
        #: Streams we finished while aioquic still tracks them: late frames for them are dropped.
        self._finished_ids: set[int] = set()
        #: Un-acknowledged bytes and the writers' pause state.
        self.budget = SendBudget(self.streams.values)
        self._acks_pending = False
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._keepalive = options.keepalive
        now = now_()
        #: Last time a datagram arrived, and last time the link had no stream left.
        self.last_rx = now
        self.last_used = now
        #: Resolves when the handshake completes (or fails with ``HandshakeError``).
        self.handshake: asyncio.Future[None] = self.loop.create_future()
        #: Resolves when the connection is gone; ``error`` then says why.
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.error: Exception | None = None
        self.session_resumed = False
        self.early_data_accepted = False
        self.streams_total = 0
        # Set by aioquic's QuicServer for the connections it demultiplexes.
        self._connection_id_issued_handler: Callable[[bytes], None] = _ignore_cid
        self._connection_id_retired_handler: Callable[[bytes], None] = _ignore_cid
        self._connection_terminated_handler: Callable[[], None] = _nothing

    # --- asyncio.DatagramProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.sockname = transport.get_extra_info("sockname")
        if self._own_socket:
            self.peername = transport.get_extra_info("peername")
        self._schedule_tick()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # DANGER ZONE: every datagram of the connection.
        if self.error is not None:
            return
        if self.peername is None:
            self.peername = _plain_address(addr)
        now = self.last_rx = now_()
        quic = self.quic
        quic.receive_datagram(data, addr, now)
        self._acks_pending = True
        self._process_events()
        if quic.close_event is not None:
            self._closing_started()
        elif self._flush_handle is None and self.error is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def error_received(self, exc: Exception) -> None:
        # Connected client sockets learn of ICMP errors ("port unreachable"). Before the
        # handshake that fails the dial at once; afterwards it may be transient (RFC 9000
        # does not let ICMP kill a connection), and dead peers are caught by probe timeouts.
        if not self.handshake.done():
            self._terminate(HandshakeError(f"QUIC handshake with {self._peer()} failed: {exc}"))
        else:
            log.debug("QUIC connection to %s: %s", self._peer(), exc)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only client links get this: their own socket closed.
        self._terminate(QuicConnectionLost(f"QUIC socket to {self._peer()} closed"))

    # --- for clients and servers ------------------------------------------------------------

    def connect(self, addr: Any) -> None:
        """Start the client handshake with ``addr`` (as datagrams from the peer report it)."""
        self.quic.connect(addr, now=now_())
        self._flush()

    def open_stream(self) -> QuicStreamTransport:
        """A new bidirectional stream; the peer learns of it with its first bytes."""
        if self.error is not None:
            raise QuicConnectionLost(str(self.error)) from self.error
        stream_id, state = self.quic.open_local_stream()
        stream = QuicStreamTransport(self, stream_id, state)
        self.streams[stream_id] = stream
        self.streams_total += 1
        return stream

    def close(
        self, error_code: int = 0, reason_phrase: str = "", exc: Exception | None = None
    ) -> None:
        """Close the connection (CONNECTION_CLOSE); its streams get ``connection_lost(exc)``."""
        if self.error is not None:
            return
        self.quic.close(error_code=error_code, reason_phrase=reason_phrase)
        reason = f": {reason_phrase}" if reason_phrase else ""
        self._terminate(
            exc or QuicConnectionLost(f"QUIC connection to {self._peer()} closed{reason}")
        )

    @property
    def unacked_bytes(self) -> int:
        """Bytes written on all streams, within the peer's credit, not acknowledged yet."""
        return self.budget.unacked

    # --- for the stream transports ----------------------------------------------------------

    def schedule_flush(self) -> None:
        if self._flush_handle is None and self.error is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def wrote(self, stream: QuicStreamTransport, change: int) -> None:
        # DANGER ZONE: every write of every stream.
        self.budget.wrote(stream, change)
        if self._flush_handle is None and self.error is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def reset(self, stream_id: int, error_code: int) -> None:
        try:
            self.quic.reset_stream(stream_id, error_code)
        except ValueError:  # discarded already
            pass

    def stop_receiving(self, stream_id: int, error_code: int) -> None:
        try:
            self.quic.stop_stream(stream_id, error_code)
        except ValueError:  # discarded already
            pass

    def stream_finished(self, stream: QuicStreamTransport) -> None:
        """``stream`` reported ``connection_lost``; its bytes stay counted until acknowledged."""
        stream_id = stream.stream_id
        if self.streams.pop(stream_id, None) is not None:
            if self.quic.stream_state(stream_id) is not None:
                self._finished_ids.add(stream_id)
            if not self.streams:
                self.last_used = now_()

    # --- driving aioquic --------------------------------------------------------------------

    def _flush(self, now: float | None = None) -> None:
        # DANGER ZONE: once per loop iteration with activity on the connection.
        self._flush_handle = None
        transport = self._transport
        if self.error is not None or transport is None:
            return
        datagrams = self.quic.datagrams_to_send(now=now_() if now is None else now)
        if self._own_socket:
            for data, _ in datagrams:
                transport.sendto(data)
        else:
            for data, addr in datagrams:
                transport.sendto(data, addr)
        self._arm_timer()
        if self._acks_pending:
            self._acks_pending = False
            self.budget.acknowledged()

    def _arm_timer(self) -> None:
        timer_at = self.quic.get_timer()
        if timer_at is None:
            return
        if self._timer is not None:
            # Most flushes move the timer later (a new ack delay, the idle deadline): keep
            # the armed one rather than allocate a new handle; it re-arms when it fires early.
            if timer_at >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = timer_at
        self._timer = self.loop.call_later(timer_at - now_(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.error is not None:
            return
        quic = self.quic
        now = now_()
        timer_at = quic.get_timer()
        if timer_at is None:
            return
        if timer_at > now + TIMER_SLACK:  # armed earlier than needed: the deadline moved
            self._timer_at = timer_at
            self._timer = self.loop.call_later(timer_at - now, self._on_timer)
            return
        # As aioquic's own driver: the timer counts as fired at its deadline, so a pacing
        # deadline a few microseconds ahead lets the packet go now.
        now = max(now, timer_at)
        quic.handle_timer(now=now)
        self._process_events()
        if self.error is not None:
            return
        if quic.close_event is not None:
            self._closing_started()
            return
        if self.handshake.done() and quic.probes_unanswered >= DEAD_AFTER_PROBES:
            self.close(
                reason_phrase="no answer to probes",
                exc=QuicConnectionLost(f"QUIC peer {self._peer()} stopped answering"),
            )
            return
        self._flush(now)

    def _process_events(self) -> None:
        # DANGER ZONE: after every datagram and timer.
        quic = self.quic
        streams = self.streams
        event = quic.next_event()
        while event is not None and self.error is None:  # a callback may close the link
            kind = type(event)
            if kind is StreamDataReceived:
                data_event = cast(StreamDataReceived, event)
                stream = streams.get(data_event.stream_id)
                if stream is not None:
                    stream.data_arrived(data_event.data, data_event.end_stream)
                else:
                    self._new_stream(data_event)
            elif kind is StreamReset:
                reset = cast(StreamReset, event)
                stream = streams.get(reset.stream_id)
                if stream is not None:
                    stream.reset_arrived(reset.error_code)
            elif kind is StopSendingReceived:
                stop = cast(StopSendingReceived, event)
                stream = streams.get(stop.stream_id)
                if stream is not None:
                    stream.stop_sending_arrived()
            elif kind is HandshakeCompleted:
                self._handshake_completed(cast(HandshakeCompleted, event))
            elif kind is ConnectionIdIssued:
                self._connection_id_issued_handler(cast(ConnectionIdIssued, event).connection_id)
            elif kind is ConnectionIdRetired:
                self._connection_id_retired_handler(cast(ConnectionIdRetired, event).connection_id)
            elif kind is ConnectionTerminated:
                self._closing_started()
                return
            event = quic.next_event()

    def _new_stream(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        # Only the client opens streams (client-initiated: id % 4 == 0, or 2 for the
        # unidirectional ones HTTP/3 uses); data for a stream we finished already is a late
        # retransmission.
        if (
            self._on_stream is None
            or stream_id & self._reject_bits
            or stream_id in self._finished_ids
        ):
            return
        state = self.quic.stream_state(stream_id)
        if state is None:
            return
        stream = QuicStreamTransport(self, stream_id, state)
        self.streams[stream_id] = stream
        self.streams_total += 1
        try:
            self._on_stream(stream)
        except Exception:
            log.exception("QUIC stream %d from %s: handler failed", stream_id, self._peer())
            stream.abort()
            return
        stream.data_arrived(event.data, event.end_stream)

    def _handshake_completed(self, event: HandshakeCompleted) -> None:
        wanted = self.quic.configuration.alpn_protocols or [TUNNEL_ALPN]
        if event.alpn_protocol not in wanted:
            # aioquic's server refuses clients without a common ALPN; a client must check.
            self.close(
                reason_phrase="ALPN mismatch",
                exc=HandshakeError(f"QUIC peer {self._peer()} negotiated no {wanted[0]}"),
            )
            return
        self.session_resumed = event.session_resumed
        self.early_data_accepted = event.early_data_accepted
        if self._keepalive > 0:
            # Two PINGs may be lost before the idle timeout both ends agreed on ends it (the
            # server's may be shorter than ours).
            keepalive = min(self._keepalive, self.quic.effective_idle_timeout() / 3)
            if keepalive < self._keepalive:
                self._keepalive = keepalive
                if self._tick_handle is not None:
                    self._tick_handle.cancel()
                self._schedule_tick()
        if not self.handshake.done():
            self.handshake.set_result(None)

    # --- keepalive and housekeeping ---------------------------------------------------------

    def _schedule_tick(self) -> None:
        interval = self._keepalive or self.options.idle_timeout / 3
        self._tick_handle = self.loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        if self.error is not None:
            return
        self._schedule_tick()
        quic = self.quic
        if self._finished_ids:
            self._finished_ids = {i for i in self._finished_ids if quic.stream_state(i)}
        in_use = self.streams or now_() - self.last_used < self.options.idle_timeout / 2
        if self._keepalive and self.handshake.done() and in_use:
            # An unused connection stops pinging and closes by idle timeout on both ends.
            quic.send_ping(next(_ping_ids))
            self.schedule_flush()

    # --- the end ----------------------------------------------------------------------------

    def _closing_started(self) -> None:
        event = self.quic.close_event
        assert event is not None
        reason = event.reason_phrase or f"error 0x{event.error_code:x}"
        if not self.handshake.done():
            self._terminate(HandshakeError(f"QUIC handshake with {self._peer()} failed: {reason}"))
        else:
            self._terminate(
                QuicConnectionLost(f"QUIC connection to {self._peer()} closed: {reason}")
            )

    def _terminate(self, exc: Exception) -> None:
        """Tell every stream, send what is pending (a CONNECTION_CLOSE), let go of the socket.

        The closing/draining period of RFC 9000 §10.2 is skipped: nothing here needs it, and a
        client link's socket is its own.
        """
        if self.error is not None:
            return
        self.error = exc
        transport = self._transport
        if transport is not None and not transport.is_closing():
            try:
                for data, addr in self.quic.datagrams_to_send(now=now_()):
                    transport.sendto(data) if self._own_socket else transport.sendto(data, addr)
            except OSError:
                pass
        for handle in (self._flush_handle, self._timer, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._timer = self._tick_handle = None
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: servers never await it
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.link_lost(exc)
        self.budget.clear()
        self._finished_ids.clear()
        self._connection_terminated_handler()
        if self._own_socket and transport is not None:
            transport.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def _peer(self) -> str:
        peer = self.peername
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
            return f"{host}:{peer[1]}"
        return "peer"
