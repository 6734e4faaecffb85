"""Edge side of resumable streams: a transport that survives the loss of the tunnel under it.

``ResumableTunnel`` is what the chain returns for a node whose connector has ``resume: true``.
The protocol above (the http handler's upstream connection, a splice) sees one transport for
the whole stream. Underneath, the first tunnel asks the core for a resumable stream (the relay
v1 ``resume`` feature) and sends its first write unframed with the header, as any tunnel does;
later writes wait for the core's answer. A core that does not know the feature (plain gost)
answers without it, and the tunnel carries raw bytes as before, with no resume.

Once accepted, every byte is framed and counted (``StreamEnd``). When the tunnel is lost
without a ``CLOSE`` (reset, QUIC idle timeout, WebSocket close, network change), the tunnel
re-dials the core through the chain, over any of the first hop's nodes (QUIC, or a WSS/TLS
node of the same core), and resumes: it names the stream, proves it opened it (the token),
and says how much it received; the core replays from there and says how much it received, and
the edge replays its own unacknowledged bytes. The protocol above sees no break. When no node
takes the resume within the window, it sees the stream end with an error, as without resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from relay.config.model import ResumeOptions
from relay.connector import RelayClientTransport
from relay.metrics import ResumeStats
from relay.protocols import relay_v1
from relay.protocols.resume import (
    ACK_DELAY,
    CloseReceived,
    DataReceived,
    ResumeError,
    ResumeRequest,
    StreamEnd,
    decode_accept,
    encode_open,
    encode_resume,
)
from relay.transports.base import NO_EXTRA, PendingProtocol, TransportError

log = logging.getLogger(__name__)

#: ``redial(feature)``: a relay tunnel to the core whose OK answer carried the resume feature,
#: with what followed the answer held in the ``PendingProtocol``. Raises ``ResumeGone`` when
#: every node answered and none holds the stream, other transport errors when worth retrying.
Redial = Callable[[bytes], Awaitable[tuple[RelayClientTransport, PendingProtocol, bytes]]]

_NEGOTIATING, _FRAMED, _RAW = "negotiating", "framed", "raw"
#: Seconds a closing tunnel gets to deliver its CLOSE before it is aborted.
CLOSE_TIMEOUT = 5.0
#: Pause between rounds of resume dials (doubling up to the last).
_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)


class ResumeGone(TransportError):
    """Every node answered, and none holds the stream: it cannot resume."""


class StreamLost(TransportError):
    """The tunnel broke and the stream could not be resumed."""


class ResumableTunnel(asyncio.Transport):
    """A tunneled stream that resumes over a new tunnel when its tunnel breaks (see module)."""

    def __init__(
        self,
        first: RelayClientTransport,
        redial: Redial,
        options: ResumeOptions,
        stats: ResumeStats | None = None,
    ) -> None:
        super().__init__(NO_EXTRA)
        self._inner: RelayClientTransport | None = first
        self._redial = redial
        self.options = options
        self.stats = stats or ResumeStats("edge")
        self._protocol: asyncio.BaseProtocol | None = None
        self._mode = _NEGOTIATING
        self._end = StreamEnd()
        self._held: list[bytes] = []
        self._held_eof = False
        self._stream_id = b""
        self._token = b""
        self._generation = 0
        self._closing = False
        #: The core's CLOSE arrived (and was answered): the stream is over.
        self._done = False
        self._reported = False
        self._reading_paused = False
        self._write_limits: tuple[int | None, int | None] | None = None
        self._write_paused: set[str] = set()
        self._resuming: asyncio.Task[None] | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        #: Bounds a graceful close (CLOSE, then flush) that the peer does not read.
        self._abort_timer: asyncio.TimerHandle | None = None
        #: When the last break happened (``loop.time()``), for the bench and logs.
        self.broke_at = 0.0
        self.resumes = 0
        first.amend(replace(first.request, resume=encode_open(0)))
        first.on_response = self._answered
        self._adopt(first)
        first.start()

    # --- the tunnel underneath --------------------------------------------------------------

    def _adopt(self, inner: RelayClientTransport) -> _Inner:
        self._generation += 1
        adapter = _Inner(self, self._generation)
        inner.set_protocol(adapter)
        if self._reading_paused:
            inner.pause_reading()
        if self._write_limits is not None:
            inner.set_write_buffer_limits(*self._write_limits)
        return adapter

    def _answered(self, response: relay_v1.Response) -> None:
        """The core's answer to the first tunnel: resumable (framed) or plain (raw)."""
        inner = self._inner
        assert inner is not None
        held, self._held = self._held, []
        if response.resume is None:
            self._mode = _RAW  # a peer without the feature: a plain tunnel from here on
            self._end = StreamEnd()
            for data in held:
                inner.write(data)
            if self._held_eof and inner.can_write_eof():
                inner.write_eof()
            if self._closing:
                inner.close()
        else:
            try:
                accept = decode_accept(response.resume)
            except ResumeError as exc:
                inner.fail(TransportError(f"bad resume answer: {exc}"))
                return
            self._stream_id, self._token = accept.stream_id, accept.token
            self._mode = _FRAMED
            if self._closing:  # closed while the core was answering
                inner.write(self._end.send_close())
                inner.close()
                return
            for data in held:
                inner.write(self._end.send(data))
            if self._held_eof:
                inner.write(self._end.send_eof())
        self._unpause_writing("negotiating")

    def inner_data(self, generation: int, data: bytes) -> None:
        # DANGER ZONE: every chunk of a resumable stream comes through here.
        if generation != self._generation:
            return
        protocol = self._protocol
        if self._mode != _FRAMED:
            if protocol is not None:
                protocol.data_received(data)  # type: ignore[attr-defined]
            return
        try:
            events, reply = self._end.receive(data)
        except ResumeError as exc:
            log.warning("resumable stream: bad frame from the core: %s", exc)
            self._lose(StreamLost(f"bad frame from the core: {exc}"))
            return
        inner = self._inner
        if reply and inner is not None:
            inner.write(reply)
        elif self._end.unacked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._delayed_ack)
        for event in events:
            if isinstance(event, DataReceived):
                if protocol is not None:
                    protocol.data_received(event.data)  # type: ignore[attr-defined]
            elif isinstance(event, CloseReceived):
                self._peer_closed()
                return
            elif protocol is not None and not protocol.eof_received():  # type: ignore[attr-defined]
                self.close()
        if "window" in self._write_paused:
            self._check_window()

    def _delayed_ack(self) -> None:
        self._ack_timer = None
        inner = self._inner
        if inner is not None and not inner.is_closing() and self._end.unacked:
            inner.write(self._end.ack())

    def inner_eof(self, generation: int) -> bool:
        if generation != self._generation:
            return False
        if self._mode == _RAW and self._protocol is not None:
            keep = bool(self._protocol.eof_received())  # type: ignore[attr-defined]
            return keep
        return False  # framed: an EOF without CLOSE is a break (handled when the tunnel is lost)

    def inner_lost(self, generation: int, exc: Exception | None) -> None:
        if generation != self._generation:
            return
        self._inner = None
        if self._mode != _FRAMED or self._closing or self._done:
            self._report_lost(exc)
            return
        self._end.lost()
        loop = asyncio.get_running_loop()
        self.broke_at = loop.time()
        self.stats.attempts += 1
        log.info("tunnel of a resumable stream broke (%s); resuming", exc or "closed")
        self._resuming = loop.create_task(self._resume_guarded())

    def _peer_closed(self) -> None:
        """The core ended the stream: answer its CLOSE, then the tunnel ends normally."""
        self._done = True
        inner = self._inner
        if inner is not None:
            if not self._end.closing:
                inner.write(self._end.send_close())
            inner.close()
        else:
            self._report_lost(None)

    async def _resume_guarded(self) -> None:
        try:
            await self._resume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the network: log it, and end the stream
            log.exception("resumable stream: resuming failed")
            self._resuming = None
            if not self._reported:
                self.stats.failures += 1
                self._lose(StreamLost(f"resuming failed: {exc!r}"))

    async def _resume(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.broke_at + self.options.window
        rounds = 0
        reason = "window passed"
        while not self._closing:
            request = ResumeRequest(self._stream_id, self._token, self._end.received)
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    inner, pending, feature = await self._redial(encode_resume(request))
            except ResumeGone as exc:
                reason = str(exc)
                break
            except (OSError, TimeoutError, TransportError) as exc:
                if isinstance(exc, TimeoutError) and loop.time() >= deadline:
                    break
                reason = str(exc) or type(exc).__name__
                pause = _BACKOFF[min(rounds, len(_BACKOFF) - 1)]
                rounds += 1
                if loop.time() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
                continue
            if self._closing:
                inner.close()
                return
            try:
                self._attach(inner, pending, feature)
            except ResumeError as exc:
                inner.close()
                reason = str(exc)
                break
            return
        self._resuming = None
        if not self._closing:
            self.stats.failures += 1
            self._lose(StreamLost(f"tunnel broke and the stream could not resume: {reason}"))

    def _attach(
        self, inner: RelayClientTransport, pending: PendingProtocol, feature: bytes
    ) -> None:
        accept = decode_accept(feature)
        if accept.stream_id != self._stream_id:
            raise ResumeError("the core answered for another stream")
        buffer = self._end.buffer
        if not buffer.base <= accept.received <= buffer.sent:
            raise ResumeError(
                f"core resumes at {accept.received}, holding {buffer.base}..{buffer.sent}"
            )
        replay = self._end.replay(accept.received)
        self.stats.replayed_bytes += self._end.buffer.size
        self._inner = inner
        adapter = self._adopt(inner)
        if replay:
            inner.write(replay)
        self._resuming = None
        self.resumes += 1
        self.stats.successes += 1
        pending.hand_over(adapter)
        self._check_window()

    def _lose(self, exc: Exception) -> None:
        self.stats.streams_lost += 1
        self._done = True
        inner, self._inner = self._inner, None
        self._generation += 1
        if inner is not None:
            inner.abort()
        self._end.buffer.clear()
        self._report_lost(exc)

    def _report_lost(self, exc: Exception | None) -> None:
        if self._reported:
            return
        self._reported = True
        self._closing = True
        self._end.buffer.clear()
        for timer in (self._ack_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._ack_timer = self._abort_timer = None
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    # --- flow control -----------------------------------------------------------------------

    def _check_window(self) -> None:
        if self._end.buffer.size >= self.options.buffer:
            self._pause_writing("window")
        else:
            self._unpause_writing("window")

    def _pause_writing(self, why: str) -> None:
        if not self._write_paused and self._protocol is not None:
            self._protocol.pause_writing()
        self._write_paused.add(why)

    def _unpause_writing(self, why: str) -> None:
        if why in self._write_paused:
            self._write_paused.discard(why)
            if not self._write_paused and self._protocol is not None:
                self._protocol.resume_writing()

    def inner_pause_writing(self, generation: int, paused: bool) -> None:
        if generation != self._generation:
            return
        if paused:
            self._pause_writing("inner")
        else:
            self._unpause_writing("inner")

    # --- asyncio.Transport ------------------------------------------------------------------

    def flush_header(self) -> None:
        """Send the relay header now (a client with nothing to say first)."""
        inner = self._inner
        if inner is not None and not inner.header_sent:
            inner.flush_header()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._reported:
            return
        payload = bytes(data)
        mode = self._mode
        inner = self._inner
        if mode == _FRAMED:
            framed = self._end.send(payload)
            if inner is not None and not inner.is_closing():
                inner.write(framed)  # else kept for the replay after a resume
            if self._end.buffer.size >= self.options.buffer:
                self._pause_writing("window")
        elif mode == _RAW:
            if inner is not None:
                inner.write(payload)
        elif inner is not None and not inner.header_sent:
            # The first write rides with the header, unframed; the header says how long it is.
            inner.amend(replace(inner.request, resume=encode_open(len(payload))))
            self._end.buffer.append(payload)
            inner.write(payload)
        else:
            self._held.append(payload)  # framed (or not) once the core has answered
            if sum(map(len, self._held)) >= self.options.buffer:
                self._pause_writing("negotiating")

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        if self._mode == _RAW:
            return self._inner is not None and self._inner.can_write_eof()
        return True

    def write_eof(self) -> None:
        inner = self._inner
        if self._mode == _FRAMED:
            framed = self._end.send_eof()
            if inner is not None:
                inner.write(framed)
        elif self._mode == _RAW:
            if inner is not None:
                inner.write_eof()
        else:
            self._held_eof = True

    def close(self) -> None:
        """End the stream: the core is told (``CLOSE``) and closes the origin connection."""
        if self._closing:
            return
        self._closing = True
        inner = self._inner
        if self._resuming is not None:
            self._resuming.cancel()
            self._resuming = None
        if inner is None:
            asyncio.get_running_loop().call_soon(self._report_lost, None)
            return
        if self._mode == _NEGOTIATING and inner.header_sent:
            # The core may be opening a stream for us: say CLOSE once it answers, or it
            # would hold the origin connection for a resume that will not come.
            self._abort_later(inner)
            return
        if self._mode == _FRAMED and not self._end.closing and not self._done:
            inner.write(self._end.send_close())
        inner.close()
        self._abort_later(inner)

    def _abort_later(self, inner: RelayClientTransport) -> None:
        if self._abort_timer is None:
            self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, inner.abort)

    def abort(self) -> None:
        # A framed stream still says CLOSE (a graceful close of the tunnel), so the core
        # closes the origin now instead of holding it for a resume that will not come.
        if self._mode == _FRAMED:
            self.close()
            return
        self._closing = True
        if self._inner is not None:
            self._inner.abort()
        else:
            asyncio.get_running_loop().call_soon(self._report_lost, None)

    def is_closing(self) -> bool:
        return self._closing or self._reported

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        inner = self._inner
        return default if inner is None else inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self._inner is not None:
            self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._inner is not None:
            self._inner.resume_reading()

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        inner = self._inner
        return 0 if inner is None else inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        inner = self._inner
        return (0, 0) if inner is None else inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._write_limits = (high, low)
        if self._inner is not None:
            self._inner.set_write_buffer_limits(high, low)


class _Inner(asyncio.Protocol):
    """The protocol of one tunnel under a ``ResumableTunnel`` (a new one per resume)."""

    __slots__ = ("_generation", "_outer")

    def __init__(self, outer: ResumableTunnel, generation: int) -> None:
        self._outer = outer
        self._generation = generation

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._outer.inner_data(self._generation, data)

    def eof_received(self) -> bool:
        return self._outer.inner_eof(self._generation)

    def connection_lost(self, exc: Exception | None) -> None:
        self._outer.inner_lost(self._generation, exc)

    def pause_writing(self) -> None:
        self._outer.inner_pause_writing(self._generation, True)

    def resume_writing(self) -> None:
        self._outer.inner_pause_writing(self._generation, False)


class AnswerWaiter(PendingProtocol):
    """Holds a resume tunnel's events while waiting for the core's answer to the header."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: asyncio.Future[relay_v1.Response] = asyncio.get_running_loop().create_future()

    def answered(self, response: relay_v1.Response) -> None:
        if not self.answer.done():
            self.answer.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.answer.done():
            self.answer.set_exception(
                exc or TransportError("relay server closed the connection before answering")
            )
