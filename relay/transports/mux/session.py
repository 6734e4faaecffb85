"""A multiplexed session: many streams over one TCP or TLS connection (smux v2, see ``frames``).

Why: a tunnel per TCP connection costs both nodes a connect, an accept, two closes and their
wake-ups per stream, and one system call per token on each side of the hop. A session opens a
stream with one 8-byte frame, and sends every frame queued during one turn of the event loop —
tokens of many streams — in one write.

The session is the connection's protocol. It reads frames and hands each stream's payload to
its ``MuxStream``; streams push frames into a list that is written once per loop iteration.
Keepalive: a NOP every ``keepalive_interval``; a session that hears nothing for
``keepalive_timeout`` is dead and closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from relay.transports.mux.frames import (
    COMMAND_NAMES,
    FIN,
    HEADER,
    HEADER_SIZE,
    INITIAL_PEER_WINDOW,
    MAX_STREAM_ID,
    NOP,
    PSH,
    SYN,
    UPD,
    UPDATE,
    VERSION,
    MuxProtocolError,
    MuxSessionLost,
    control,
    window_update,
)
from relay.transports.mux.options import MuxOptions
from relay.transports.mux.stream import MuxStream

log = logging.getLogger(__name__)

#: Streams a session sets up in one callback before the loop serves others (see ``_defer``).
ACCEPT_BATCH = 8

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack


class MuxSession(asyncio.Protocol):
    """One multiplexed connection. Clients open streams (``open_stream``); servers get each
    stream a client opens through ``on_stream``."""

    def __init__(
        self,
        options: MuxOptions,
        is_client: bool,
        on_stream: Callable[[MuxStream], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.options = options
        self.is_client = is_client
        self._on_stream = on_stream
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, MuxStream] = {}
        #: Streams opened since the start (both sides).
        self.streams_total = 0
        self._next_id = 1  # clients open odd ids, as smux's
        #: A stream reports what it consumed once this much is new: half its window.
        self.update_threshold = options.stream_window // 2
        #: A window other than the one writers assume (smux's 256 KiB) is announced as each
        #: stream opens: from then on a writer holds to a smaller one, and does not stop short
        #: of a larger one (waiting for a report that comes only at half of it).
        self._announce = options.stream_window != INITIAL_PEER_WINDOW
        # receiving
        #: The start of a frame the last read cut, when it is not a data frame's payload.
        self._partial = b""
        #: Bytes of a data frame's payload still to come, and its stream.
        self._payload_left = 0
        self._payload_stream = 0
        #: A read and where its frames were left, for the next loop turn (``ACCEPT_BATCH``).
        self._deferred: tuple[bytes, int] | None = None
        #: Its listener closed: no new streams, and the session closes with its last stream.
        self._draining = False
        self._heard = True
        self._silent_since = self.loop.time()
        # sending
        self._out: list[bytes | memoryview] = []
        self._flush_handle: asyncio.Handle | None = None
        self.writing_paused = False
        # lifecycle
        self._keepalive: asyncio.TimerHandle | None = None
        self.error: Exception | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.options.keepalive_interval > 0:
            self._keepalive = self.loop.call_later(
                self.options.keepalive_interval, self._keepalive_tick
            )

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._deferred is not None:  # (a transport that delivers while paused: keep order)
            rest, offset = self._deferred
            self._deferred = (rest[offset:] + data, 0)
            return
        self._read(data, 0)

    def _read(self, data: bytes, offset: int) -> None:
        """Read the frames of ``data`` from ``offset`` on (a frame boundary, or 0)."""
        # DANGER ZONE: runs for every read of every session; one read holds many frames.
        end_of_data = len(data)
        streams = self.streams
        opened = 0
        if self._payload_left:
            # A data frame's payload continues: hand it on as it comes (no reassembly).
            offset = min(self._payload_left, end_of_data)
            self._payload_left -= offset
            stream = streams.get(self._payload_stream)
            if stream is not None:
                stream.received(data if offset == end_of_data else data[:offset])
        elif self._partial:
            # A frame's header (or a window update) was cut by the last read: under 16 bytes.
            data = self._partial + data
            self._partial = b""
            end_of_data = len(data)
        while end_of_data - offset >= HEADER_SIZE:
            version, command, length, stream_id = _unpack_header(data, offset)
            start = offset + HEADER_SIZE
            end = start + length
            if command == PSH and version == VERSION:
                if end > end_of_data:
                    self._payload_left = end - end_of_data
                    self._payload_stream = stream_id
                    end = end_of_data
                offset = end
                stream = streams.get(stream_id)
                if stream is not None and end > start:  # else closed here: data goes nowhere
                    stream.received(data[start:end])
                continue
            if version != VERSION:
                self._fail(MuxProtocolError(f"mux frame of version {version}, expected 2"))
                return
            if length > UPDATE.size:
                self._fail(
                    MuxProtocolError(
                        f"mux {COMMAND_NAMES.get(command, command)} frame "
                        f"with {length} bytes of payload"
                    )
                )
                return
            if end > end_of_data:
                break
            offset = end
            if command == UPD:
                if length != UPDATE.size:
                    self._fail(MuxProtocolError(f"mux window update of {length} bytes, not 8"))
                    return
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.window_updated(*UPDATE.unpack_from(data, start))
            elif command == FIN:
                stream = streams.get(stream_id)
                if stream is not None:
                    stream.peer_finished()
            elif command == SYN:
                self._accept(stream_id)
                opened += 1
                if opened == ACCEPT_BATCH and offset < end_of_data and self.error is None:
                    # Setting up a stream costs a handler, often a dial: after a few, let the
                    # loop serve the streams already open before the next ones (as a socket's
                    # accept queue would) instead of one long callback for a burst of them.
                    self._defer(data, offset)
                    return
            elif command != NOP:
                self._fail(MuxProtocolError(f"unknown mux command {command}"))
                return
            if self.error is not None:
                return
        if offset < end_of_data:
            self._partial = data[offset:]

    def eof_received(self) -> bool:
        return False  # the connection closes; every stream ends in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._terminate(
            exc if isinstance(exc, MuxProtocolError) else MuxSessionLost(_lost_reason(exc))
        )

    def pause_writing(self) -> None:
        self._set_writing_paused(True)

    def resume_writing(self) -> None:
        self._set_writing_paused(False)

    # --- for clients ------------------------------------------------------------------------

    @property
    def can_open(self) -> bool:
        """Whether ``open_stream`` may be called: the connection is up and has ids left."""
        return self.error is None and self._next_id <= MAX_STREAM_ID and self.transport is not None

    def open_stream(self) -> MuxStream:
        """A new stream (SYN goes out with the loop iteration's other frames)."""
        assert self.is_client and self.can_open
        stream_id = self._next_id
        self._next_id += 2
        stream = MuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self.streams_total += 1
        self._queue(control(SYN, stream_id))
        if self._announce:
            self.update_window(stream_id, 0)
        return stream

    def drain(self) -> None:
        """Take no new streams, and close once the open ones are done (its listener closed:
        as a closed listening socket, without cutting what is open)."""
        self._draining = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Close the connection; open streams end with ``MuxSessionLost``."""
        if self.error is not None:
            return
        if self.transport is not None:
            self._flush()
            self.transport.close()
        self._terminate(MuxSessionLost("mux session closed"))

    # --- for streams ------------------------------------------------------------------------

    def push(self, stream_id: int, payload: bytes | memoryview) -> None:
        """Queue one PSH frame (payload at most ``MAX_PAYLOAD`` bytes)."""
        out = self._out
        out.append(_pack_header(VERSION, PSH, len(payload), stream_id))
        out.append(payload)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def update_window(self, stream_id: int, consumed: int) -> None:
        self._queue(window_update(stream_id, consumed, self.options.stream_window))

    def forget(self, stream_id: int, send_fin: bool) -> None:
        """The stream is done here; FIN tells the peer when it does not know yet."""
        if self.streams.pop(stream_id, None) is not None and send_fin:
            self._queue(control(FIN, stream_id))
        if self._draining and not self.streams:
            self.loop.call_soon(self.close)

    # --- internals --------------------------------------------------------------------------

    def _defer(self, data: bytes, offset: int) -> None:
        assert self.transport is not None
        self._deferred = (data, offset)
        self.transport.pause_reading()
        self.loop.call_soon(self._continue)

    def _continue(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is None or self.error is not None or self.transport is None:
            return
        self._read(*deferred)
        if self._deferred is None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _queue(self, frame: bytes) -> None:
        if self.error is not None:
            return
        self._out.append(frame)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # One write for every frame of this loop iteration (uvloop: one writev).
            transport.writelines(out)

    def _accept(self, stream_id: int) -> None:
        if self.is_client or not stream_id & 1 or stream_id in self.streams:
            self._fail(MuxProtocolError(f"mux stream {stream_id} opened out of turn"))
            return
        if self._draining:
            self._queue(control(FIN, stream_id))
            return
        if len(self.streams) >= self.options.max_streams:
            log.warning(
                "mux session from %s: stream refused, %d streams open (mux.maxStreams)",
                self._peer(), len(self.streams),
            )  # fmt: skip
            self._queue(control(FIN, stream_id))
            return
        stream = MuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self.streams_total += 1
        if self._announce:
            self.update_window(stream_id, 0)
        if self._on_stream is not None:
            self._on_stream(stream)

    def _set_writing_paused(self, paused: bool) -> None:
        self.writing_paused = paused
        for stream in list(self.streams.values()):
            stream.session_flow_changed()

    def _keepalive_tick(self) -> None:
        now = self.loop.time()
        if self._heard:
            self._heard = False
            self._silent_since = now
        elif now - self._silent_since >= self.options.keepalive_timeout:
            self._fail(
                MuxSessionLost(
                    f"mux session with {self._peer()}: nothing heard for "
                    f"{self.options.keepalive_timeout:g}s"
                )
            )
            return
        self._queue(control(NOP, 0))
        interval = self.options.keepalive_interval
        self._keepalive = self.loop.call_later(interval, self._keepalive_tick)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            log.warning("%s", exc)
        if self.transport is not None:
            self.transport.abort()
        self._terminate(exc)

    def _terminate(self, exc: Exception) -> None:
        if self.error is not None:
            return
        self.error = exc
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out = []
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.session_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def _peer(self) -> str:
        peer: Any = None if self.transport is None else self.transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"


def _lost_reason(exc: Exception | None) -> str:
    if exc is None:
        return "mux session closed by the peer"
    return f"mux session lost: {type(exc).__name__}: {exc}" if str(exc) else "mux session lost"
