"""One stream of a multiplexed session as an asyncio transport: what handlers and the splice see.

Contracts (asyncio's, adapted to a stream of a shared connection):

* ``write`` sends at once what the reader's window allows (the session sends its frames at the
  end of the loop iteration, many streams' frames in one system call) and queues the rest until
  the reader's window update. Queued bytes count as buffered: ``pause_writing`` above the
  high-water mark, ``resume_writing`` at the low mark. The session's own connection being full
  pauses every stream's writer too.
* ``pause_reading`` holds what arrives and stops the window updates, so the peer sends at most
  one window more; ``resume_reading`` delivers it.
* A stream closes as a whole (smux has no half-close): ``can_write_eof`` is false. ``close``
  sends FIN once the queue is out; ``abort`` drops the queue and sends FIN at once. Both report
  ``connection_lost(None)`` soon after. The peer's FIN calls ``eof_received``, then
  ``connection_lost(None)``; a lost session ends the stream with ``MuxSessionLost``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from relay.transports.base import NO_EXTRA, write_buffer_limits
from relay.transports.mux.frames import INITIAL_PEER_WINDOW, MAX_PAYLOAD

if TYPE_CHECKING:
    from relay.transports.mux.session import MuxSession

log = logging.getLogger(__name__)

_DEFAULT_HIGH = 64 * 1024


class MuxStream(asyncio.Transport):
    # Slots: one per tunneled connection on both nodes, held while it is open or pooled.
    __slots__ = (
        "_closing",
        "_consumed",
        "_finished",
        "_held",
        "_high",
        "_low",
        "_over_high",
        "_peer_consumed",
        "_peer_window",
        "_protocol",
        "_queue",
        "_queued",
        "_reading_paused",
        "_release_scheduled",
        "_reported",
        "_sent",
        "_session",
        "_writing_paused",
        "stream_id",
    )

    def __init__(self, session: MuxSession, stream_id: int) -> None:
        super().__init__(NO_EXTRA)
        self._session = session
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        # sending
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._sent = 0
        self._peer_consumed = 0
        self._peer_window = INITIAL_PEER_WINDOW
        #: Bytes the peer's window did not take yet (None: nothing waits, the usual case).
        self._queue: list[bytes | memoryview] | None = None
        self._queued = 0
        self._over_high = False
        self._writing_paused = False
        # receiving
        self._consumed = 0
        self._reported = 0
        self._reading_paused = False
        #: Payload not delivered yet (reading paused, or no protocol yet); None when flowing.
        #: A trailing None stands for the peer's FIN.
        self._held: list[bytes | None] | None = None
        self._release_scheduled = False
        # lifecycle: closing (no more writes), finished (FIN sent or received; out of the table)
        self._closing = False
        self._finished = False

    # --- asyncio.BaseTransport --------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        if name == "socket":
            # Not this stream's own: options set on it (TCP_NODELAY, ...) would apply to all.
            return default
        transport = self._session.transport
        return default if transport is None else transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        if self._held is not None and not self._reading_paused:
            self._schedule_release()

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._held = None
        if self._queue is None:
            self._finish(send_fin=True)
        # else: FIN follows the queue (``window_updated``).

    def abort(self) -> None:
        self._queue = None
        self._queued = 0
        self._held = None
        self._closing = True
        self._finish(send_fin=True)

    # --- asyncio.WriteTransport -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # DANGER ZONE: runs for every chunk every tunneled connection sends.
        if self._closing:
            return
        size = len(data)
        if not size:
            return
        if self._queue is None:
            room = self._peer_window - (self._sent - self._peer_consumed)
            if size <= room and size <= MAX_PAYLOAD:
                self._sent += size
                self._session.push(self.stream_id, bytes(data))
                return
            data = bytes(data)
            if room > 0:
                sent = self._send(data, room)
                if sent == size:
                    return
                self._queue = [memoryview(data)[sent:]]
                self._queued = size - sent
            else:
                self._queue = [data]
                self._queued = size
        else:
            self._queue.append(bytes(data))
            self._queued += size
        if not self._over_high and self._queued > self._high:
            self._over_high = True
            self._set_writing_paused()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a multiplexed stream cannot half-close (smux has no half-close)")

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high, self._low = write_buffer_limits(high, low, _DEFAULT_HIGH)

    # --- asyncio.ReadTransport --------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._held is not None:
            self._schedule_release()

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    # --- from the session -------------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        # DANGER ZONE: runs for every frame of data every tunneled connection receives.
        if self._closing:
            return  # closed here; the peer learns from our FIN
        protocol = self._protocol
        if self._held is None and not self._reading_paused and protocol is not None:
            protocol.data_received(payload)  # type: ignore[attr-defined]
            self._consumed += len(payload)
            if self._consumed - self._reported >= self._session.update_threshold:
                self._report()
            return
        if self._held is None:
            self._held = []
        self._held.append(payload)

    def peer_finished(self) -> None:
        """The peer's FIN: it neither sends nor reads any more."""
        if self._closing:
            self._finish(send_fin=False)
            return
        if self._held is not None or self._protocol is None:
            held = self._held if self._held is not None else []
            held.append(None)
            self._held = held
            return
        self._eof()

    def window_updated(self, consumed: int, window: int) -> None:
        # ``consumed`` counts modulo 2^32; the gap to what we sent is below 2^31.
        self._peer_consumed = self._sent - ((self._sent - consumed) & 0xFFFFFFFF)
        self._peer_window = window
        queue = self._queue
        if queue is None:
            return
        room = window - (self._sent - self._peer_consumed)
        while queue and room > 0:
            data = queue[0]
            sent = self._send(data, room)
            room -= sent
            self._queued -= sent
            if sent == len(data):
                queue.pop(0)
            else:
                queue[0] = memoryview(data)[sent:]
        if not queue:
            self._queue = None
            if self._closing and not self._finished:
                self._finish(send_fin=True)
                return
        if self._over_high and self._queued <= self._low:
            self._over_high = False
            self._set_writing_paused()

    def session_flow_changed(self) -> None:
        """The session's connection paused or resumed writing."""
        self._set_writing_paused()

    def session_lost(self, exc: Exception) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._queue = None
        self._held = None
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    # --- internals --------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview, room: int) -> int:
        """Send as much of ``data`` as ``room`` allows, in frames; returns the bytes sent."""
        end = min(len(data), room)
        push = self._session.push
        if end == len(data) and end <= MAX_PAYLOAD:
            push(self.stream_id, data)
        else:
            # Views, not copies: the only copy of a large write is into the socket.
            view = memoryview(data)
            for start in range(0, end, MAX_PAYLOAD):
                push(self.stream_id, view[start : min(start + MAX_PAYLOAD, end)])
        self._sent += end
        return end

    def _report(self) -> None:
        self._reported = self._consumed
        self._session.update_window(self.stream_id, self._consumed)

    def _set_writing_paused(self) -> None:
        paused = self._over_high or self._session.writing_paused
        if paused == self._writing_paused or self._finished:
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
        except Exception:  # a protocol's bug must not break the session's other streams
            log.exception("mux stream %d: protocol failed to pause or resume", self.stream_id)

    def _schedule_release(self) -> None:
        if not self._release_scheduled:
            self._release_scheduled = True
            self._session.loop.call_soon(self._release_held)

    def _release_held(self) -> None:
        self._release_scheduled = False
        protocol = self._protocol
        while self._held and not self._reading_paused and protocol is not None:
            payload = self._held.pop(0)
            if payload is None:
                self._held = None
                self._eof()
                return
            protocol.data_received(payload)  # type: ignore[attr-defined]
            self._consumed += len(payload)
        if self._held is not None and not self._held:
            self._held = None
        if self._consumed - self._reported >= self._session.update_threshold:
            self._report()

    def _eof(self) -> None:
        # Whatever the protocol answers: the peer reads no more, so the stream is done (and a
        # close() from eof_received needs no FIN of ours).
        self._closing = True
        self._queue = None
        protocol = self._protocol
        if protocol is not None:
            protocol.eof_received()  # type: ignore[attr-defined]
        self._finish(send_fin=False)

    def _finish(self, send_fin: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._session.forget(self.stream_id, send_fin)
        if self._protocol is not None:
            self._session.loop.call_soon(self._protocol.connection_lost, None)
