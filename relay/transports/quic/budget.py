"""Send-side accounting of one QUIC connection: aioquic has no backpressure (aioquic#328, #250).

aioquic accepts every byte written to a stream and keeps it until the peer acknowledges it,
whatever the peer's flow control or the network allow. Each ``QuicStreamTransport`` counts its
own and pauses its writer above its high-water mark (``set_write_buffer_limits``): that bounds
what a slow reader at the other end can pile up, stream by stream.

``SendBudget`` bounds what the *network* is slow to take: bytes within the peer's credit and not
acknowledged yet, summed over the connection. Above ``CONNECTION_SEND_HIGH`` every writer of the
connection pauses until acknowledgements bring it under ``CONNECTION_SEND_LOW``. Bytes waiting
for a stream's credit do not count here, so streams whose readers are slow never stall the
others (head-of-line blocking across streams is what QUIC is for avoiding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from relay.transports.quic.options import CONNECTION_SEND_HIGH, CONNECTION_SEND_LOW

if TYPE_CHECKING:
    from relay.transports.quic.stream import QuicStreamTransport


class SendBudget:
    __slots__ = ("_sending", "_streams", "paused", "unacked")

    def __init__(self, streams: Callable[[], Iterable[QuicStreamTransport]]) -> None:
        #: The connection's open streams (to pause or resume them all).
        self._streams = streams
        #: Streams with un-acknowledged bytes (closed ones too, until acknowledged).
        self._sending: set[QuicStreamTransport] = set()
        #: Un-acknowledged bytes within the peer's credit, of all streams.
        self.unacked = 0
        #: Whether every writer of the connection is paused.
        self.paused = False

    def wrote(self, stream: QuicStreamTransport, change: int) -> None:
        """``stream`` was written to; ``change`` is how much more of it the budget counts."""
        # DANGER ZONE: every write of every stream.
        self._sending.add(stream)
        self.unacked += change
        if self.unacked > CONNECTION_SEND_HIGH and not self.paused:
            self._set_paused(True)

    def untrack(self, stream: QuicStreamTransport) -> None:
        """``stream``'s sending side was reset: its bytes will never be acknowledged."""
        if stream in self._sending:
            self._sending.discard(stream)
            self.unacked -= stream.forget_unacked()

    def acknowledged(self) -> None:
        """Acknowledgements (or credit) arrived: re-count, resume writers below their low marks."""
        # A snapshot: resumed writers write again, which adds to ``_sending``.
        for stream in list(self._sending):
            self.unacked += stream.refresh_unacked()
            if not stream.has_backlog():
                self._sending.discard(stream)
        if self.paused and self.unacked <= CONNECTION_SEND_LOW:
            self._set_paused(False)

    def clear(self) -> None:
        self._sending.clear()
        self.unacked = 0

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        for stream in list(self._streams()):
            stream.update_writing()
