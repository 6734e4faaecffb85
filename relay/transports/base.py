"""Transport plumbing shared by every transport and handler.

The whole data plane speaks asyncio's Transport/Protocol interface: a TCP or TLS connection is
the event loop's own transport, and everything layered on top of one (WebSocket framing, the
relay protocol's client side) is a ``LayeredTransport`` that looks the same to the code above
it. Handlers therefore never know which transport carries them, and forwarding is a callback
from one transport straight into another — no streams, no per-chunk tasks.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar, cast

_T = TypeVar("_T")


#: The ``extra`` of every transport built here. Each answers ``get_extra_info`` itself, so the
#: empty dict ``asyncio.BaseTransport`` would make for it (64 bytes per tunnel and stream, on
#: both nodes) stays unused; they share this one instead.
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class TransportError(Exception):
    """Base of the errors a transport reports through ``connection_lost``."""


class HandshakeError(TransportError):
    """A layer's handshake (TLS, WebSocket upgrade, relay header) failed."""


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle: every SSE event must leave at once, not wait for the next one."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already closed, or not TCP after all
            pass


def write_buffer_limits(high: int | None, low: int | None, default_high: int) -> tuple[int, int]:
    """``(high, low)`` as asyncio's ``set_write_buffer_limits`` works them out (low defaults to
    a quarter of high); raises ``ValueError`` when they are out of order."""
    if high is None:
        high = default_high if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


class LoopLocal(Generic[_T]):
    """One value per event loop, made on first use: the tunnels a process shares (one QUIC
    connection or multiplexed session per node) across every chain and every reload."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], _T]) -> None:
        self._make = make
        self._values: dict[int, tuple[asyncio.AbstractEventLoop, _T]] = {}

    def get(self) -> _T:
        """The value of the running loop."""
        loop = asyncio.get_running_loop()
        entry = self._values.get(id(loop))
        if entry is None or entry[0] is not loop:
            for stale in [key for key, (old, _) in self._values.items() if old.is_closed()]:
                del self._values[stale]
            entry = self._values[id(loop)] = (loop, self._make(loop))
        return entry[1]


class PendingProtocol(asyncio.Protocol):
    """Holds a fresh connection's events until the protocol that will own it is ready.

    Dialing returns a transport before anyone decided what to do with it; whatever arrives in
    between is buffered here and replayed by ``hand_over``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self._paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        # Stay open for writing where the transport can half-close (TLS cannot).
        return self.transport is not None and self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        """Make ``protocol`` the owner of the transport and replay what was buffered."""
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused_writing:
            protocol.pause_writing()
        for chunk in self._buffer:
            protocol.data_received(chunk)
        self._buffer.clear()
        if self._eof and not protocol.eof_received():
            transport.close()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])


class LayeredTransport(asyncio.Transport):
    """A transport implemented on top of another one (the ``inner`` transport).

    Subclasses translate bytes in ``encode`` (outgoing) and ``receive`` (incoming, calling
    ``deliver`` with decoded payload). Flow control and closing pass straight through, so a
    paused reader above pauses the socket below.
    """

    # Slots: one per tunnel on an edge, held while it is open or pooled. Subclasses that do
    # not declare slots get a dict again, which is fine for the rarer ones.
    __slots__ = ("_closing", "_early", "_lost", "_protocol", "inner")

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__(NO_EXTRA)
        self.inner = inner
        self._protocol: asyncio.BaseProtocol | None = None
        self._closing = False
        self._lost = False
        #: Payload decoded before a protocol was set; ``start`` delivers it.
        self._early: list[bytes] = []
        inner.set_protocol(_InnerAdapter(self))

    def start(self) -> None:
        """Deliver input that was queued before the protocol above was set; call once set."""
        early, self._early = self._early, []
        for data in early:
            self.deliver(data)

    # --- for subclasses ---------------------------------------------------------------------

    def encode(self, data: bytes) -> bytes:
        return data

    def receive(self, data: bytes) -> None:
        self.deliver(data)

    def deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol is None:
            self._early.append(data)
        elif data:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def deliver_eof(self) -> None:
        protocol = self._protocol
        if protocol is not None and not protocol.eof_received():  # type: ignore[attr-defined]
            self.close()

    def inner_eof(self) -> bool:
        self.deliver_eof()
        return not self.is_closing() and self.inner.can_write_eof()

    def inner_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    def fail(self, exc: Exception) -> None:
        """Abort the connection and report ``exc`` to the protocol above."""
        self.inner.abort()
        self.inner_lost(exc)

    # --- asyncio.Transport ------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self.inner.is_closing()

    def close(self) -> None:
        self._closing = True
        self.inner.close()

    def abort(self) -> None:
        self._closing = True
        self.inner.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.inner.write(self.encode(bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class _InnerAdapter(asyncio.Protocol):
    """The inner transport's protocol: forwards every event to the layered transport."""

    __slots__ = ("_outer",)

    def __init__(self, outer: LayeredTransport) -> None:
        self._outer = outer

    def data_received(self, data: bytes) -> None:
        self._outer.receive(data)

    def eof_received(self) -> bool:
        return self._outer.inner_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._outer.inner_lost(exc)

    def pause_writing(self) -> None:
        protocol = self._outer._protocol
        if protocol is not None:
            protocol.pause_writing()

    def resume_writing(self) -> None:
        protocol = self._outer._protocol
        if protocol is not None:
            protocol.resume_writing()
