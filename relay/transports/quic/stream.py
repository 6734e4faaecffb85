"""One QUIC stream as an asyncio transport: what handlers and the splice see of a QUIC tunnel.

Contracts (asyncio's, adapted to a stream of a shared connection):

* ``write`` queues bytes in aioquic; the link sends them at the end of the loop iteration.
  Un-acknowledged bytes count as buffered: ``pause_writing`` above the high-water mark (or when
  the connection has too many bytes in flight or waiting for the network: ``SendBudget``),
  ``resume_writing`` at the low mark, checked after every batch of acknowledgements.
* ``write_eof`` sends FIN; ``close`` sends FIN and, if the peer may still send, STOP_SENDING;
  ``abort`` sends RESET_STREAM and STOP_SENDING. Both report ``connection_lost(None)`` soon after.
* ``pause_reading`` stops delivering and stops extending the stream's receive credit, so the
  peer can send at most one stream window more (held here until ``resume_reading``).
* The peer's FIN calls ``eof_received`` (a false answer closes); its RESET_STREAM ends the stream
  with ``ConnectionResetError``; its STOP_SENDING closes the sending side (later writes are
  dropped) and the stream closes once the receiving side is done too. A lost connection ends
  every stream with ``QuicConnectionLost``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aioquic.quic.stream import QuicStream

from relay.transports.base import NO_EXTRA, write_buffer_limits
from relay.transports.quic.engine import grant, send_backlog

if TYPE_CHECKING:
    from relay.transports.quic.link import QuicLink

log = logging.getLogger(__name__)

#: Application error code of RESET_STREAM/STOP_SENDING when a stream is aborted or closed early.
ABORTED = 0x1
CLOSED = 0x0

_DEFAULT_HIGH = 64 * 1024


class QuicStreamTransport(asyncio.Transport):
    __slots__ = (
        "_closing",
        "_consumed",
        "_credited",
        "_finish_scheduled",
        "_held",
        "_held_bytes",
        "_held_fin",
        "_high",
        "_link",
        "_lost",
        "_low",
        "_over_high",
        "_peer_stopped",
        "_protocol",
        "_reading_paused",
        "_recv_done",
        "_release_scheduled",
        "_send_closed",
        "_state",
        "_unacked",
        "_writing_paused",
        "stream_id",
    )

    def __init__(self, link: QuicLink, stream_id: int, state: QuicStream) -> None:
        super().__init__(NO_EXTRA)
        self._link = link
        self.stream_id = stream_id
        self._state = state
        self._protocol: asyncio.BaseProtocol | None = None
        # sending
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._unacked = 0
        #: The part of ``_unacked`` within the peer's credit (what the connection budget counts).
        self._credited = 0
        self._over_high = False
        self._writing_paused = False
        self._send_closed = False
        self._peer_stopped = False
        # receiving
        self._consumed = 0
        self._reading_paused = False
        #: Chunks not delivered yet (reading paused, or no protocol yet); None when flowing.
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._held_fin = False
        self._release_scheduled = False
        self._recv_done = False
        # lifecycle
        self._closing = False
        self._lost = False
        self._finish_scheduled = False

    # --- asyncio.BaseTransport --------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._link.peername
        if name == "sockname":
            return self._link.sockname
        if name == "stream_id":
            return self.stream_id
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        if self._held is not None and not self._reading_paused and not self._release_scheduled:
            # Data that arrived before any protocol was set.
            self._release_scheduled = True
            self._link.loop.call_soon(self._release_held)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._drop_held()
        if not self._send_closed:
            self._send_closed = True
            try:
                self._state.sender.write(b"", end_stream=True)
            except RuntimeError:  # reset by the peer's STOP_SENDING meanwhile
                pass
        if not self._recv_done:
            # We will not read any more: let the peer stop sending (aioquic answers
            # STOP_SENDING with RESET_STREAM), so the stream can finish on both sides and
            # aioquic can discard its state. Without this, it would stay until the connection
            # closes.
            self._link.stop_receiving(self.stream_id, CLOSED)
        self._link.schedule_flush()
        self._schedule_finish()

    # --- asyncio.WriteTransport -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # DANGER ZONE: every chunk of every tunneled connection goes through here.
        if self._send_closed or not data:
            return  # like a socket transport after close: dropped
        try:
            # The stream's own sender: ``send_stream_data`` would look the stream up again.
            self._state.sender.write(data if type(data) is bytes else bytes(data))
        except RuntimeError:  # the peer's STOP_SENDING reset the stream in this very tick
            self._send_closed = True
            return
        unacked, credited = send_backlog(self._state)
        self._unacked = unacked
        if unacked > self._high and not self._over_high:
            self._over_high = True
            self._update_writing()
        change = credited - self._credited
        self._credited = credited
        self._link.wrote(self, change)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._send_closed:
            return
        self._send_closed = True
        try:
            self._state.sender.write(b"", end_stream=True)
        except RuntimeError:
            return
        self._link.schedule_flush()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._drop_held()
        self._send_closed = True
        self._link.reset(self.stream_id, ABORTED)
        if not self._recv_done:
            self._link.stop_receiving(self.stream_id, ABORTED)
        self._link.budget.untrack(self)
        self._link.schedule_flush()
        self._schedule_finish()

    def get_write_buffer_size(self) -> int:
        return self._unacked

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high, self._low = high, low = write_buffer_limits(high, low, _DEFAULT_HIGH)
        if self._unacked > high:
            self._over_high = True
        elif self._unacked <= low:
            self._over_high = False
        self._update_writing()

    # --- asyncio.ReadTransport --------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing:
            return
        self._reading_paused = True
        if self._held is None:
            self._held = []

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        # Delivered from the loop, not from here: resume_reading is typically called from a
        # protocol callback (the splice's resume_writing), which must not re-enter itself.
        if self._held is not None and not self._release_scheduled:
            self._release_scheduled = True
            self._link.loop.call_soon(self._release_held)

    # --- from the link ----------------------------------------------------------------------

    def data_arrived(self, data: bytes, fin: bool) -> None:
        """A StreamDataReceived event (in order; ``fin`` ends the peer's sending side)."""
        # DANGER ZONE: every chunk received on every stream.
        if self._closing:
            # Closed or aborted by us: late bytes are dropped. The connection counts them as
            # consumed (credit is based on what transports hold), so nothing leaks.
            return
        held = self._held
        if held is not None or self._protocol is None:
            if held is None:
                held = self._held = []
            if data:
                held.append(data)
                self._held_bytes += len(data)
                self._link.quic.rx_held += len(data)
            self._held_fin = self._held_fin or fin
            return
        if data:
            self._consumed += len(data)
            try:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
            except Exception:
                self._protocol_failed("data_received")
                return
            if self._closing:  # the protocol closed the stream on what it just read
                return
            if grant(self._state, self._consumed, self._link.quic.stream_window):
                self._link.schedule_flush()
        if fin:
            self._eof()

    def reset_arrived(self, error_code: int) -> None:
        """The peer aborted its sending side (RESET_STREAM): abort like a TCP reset."""
        self._recv_done = True
        if self._closing:
            return
        self.abort()
        self._finish(ConnectionResetError(f"QUIC stream reset by the peer (code {error_code})"))

    def stop_sending_arrived(self) -> None:
        """The peer will not read any more (STOP_SENDING); aioquic has reset our sending side."""
        self._send_closed = True
        self._peer_stopped = True
        self._link.budget.untrack(self)
        if self._recv_done:
            self.close()

    def refresh_unacked(self) -> int:
        """Re-count after acknowledgements (or new credit); returns the change of the bytes
        the connection budget counts."""
        unacked, credited = send_backlog(self._state)
        self._unacked = unacked
        change = credited - self._credited
        self._credited = credited
        if self._over_high and unacked <= self._low:
            self._over_high = False
            self._update_writing()
        return change

    def has_backlog(self) -> bool:
        return self._unacked > 0

    def forget_unacked(self) -> int:
        """The sending side was reset: its bytes will never be acknowledged. Returns what the
        connection budget counted of them."""
        credited, self._credited, self._unacked = self._credited, 0, 0
        if self._over_high:
            self._over_high = False
            self._update_writing()
        return credited

    def update_writing(self) -> None:
        """The connection's send limit changed state: tell the protocol if that matters."""
        self._update_writing()

    def link_lost(self, exc: Exception) -> None:
        """The whole QUIC connection is gone."""
        self._finish(exc)

    # --- internals --------------------------------------------------------------------------

    def _update_writing(self) -> None:
        paused = self._over_high or self._link.budget.paused
        if paused == self._writing_paused or self._lost:
            return
        self._writing_paused = paused
        protocol = self._protocol
        if protocol is None:
            return
        try:
            if paused:
                protocol.pause_writing()
            else:
                protocol.resume_writing()
        except Exception:
            self._protocol_failed("pause_writing" if paused else "resume_writing")

    def _eof(self) -> None:
        self._recv_done = True
        protocol = self._protocol
        assert protocol is not None
        try:
            keep_open = protocol.eof_received()  # type: ignore[attr-defined]
        except Exception:
            self._protocol_failed("eof_received")
            return
        if not keep_open or self._peer_stopped:
            # Nothing more can move in either direction once the peer stopped reading.
            self.close()

    def _release_held(self) -> None:
        self._release_scheduled = False
        held = self._held
        if self._reading_paused or self._closing or held is None or self._protocol is None:
            return
        self._held = None
        quic = self._link.quic
        for index, chunk in enumerate(held):
            size = len(chunk)
            self._held_bytes -= size
            quic.rx_held -= size
            self._consumed += size
            try:
                self._protocol.data_received(chunk)  # type: ignore[attr-defined]
            except Exception:
                self._protocol_failed("data_received")
                return
            if self._closing:
                return
            if self._reading_paused:  # paused again by what it just read: keep the rest
                rest = held[index + 1 :]
                self._held = rest
                return
        grant(self._state, self._consumed, quic.stream_window)
        self._link.schedule_flush()
        if self._held_fin:
            self._held_fin = False
            self._eof()

    def _drop_held(self) -> None:
        if self._held_bytes:
            self._link.quic.rx_held -= self._held_bytes
            self._held_bytes = 0
        self._held = None
        self._held_fin = False

    def _protocol_failed(self, callback: str) -> None:
        log.exception("QUIC stream %d: protocol %s failed; aborting it", self.stream_id, callback)
        self.abort()

    def _schedule_finish(self) -> None:
        if not self._finish_scheduled:
            self._finish_scheduled = True
            self._link.loop.call_soon(self._finish, None)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._send_closed = True
        self._drop_held()
        self._link.stream_finished(self)
        protocol = self._protocol
        if protocol is not None:
            try:
                protocol.connection_lost(exc)
            except Exception:
                log.exception("QUIC stream %d: protocol connection_lost failed", self.stream_id)
