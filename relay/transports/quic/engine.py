"""aioquic's ``QuicConnection`` with receive credit that follows consumption.

aioquic grants receive credit on its own: it doubles a stream's window (and the connection's)
whenever the peer has used half of it, whether or not anyone read the data. A paused reader
would then let the peer push ever more into our memory. Here credit is raised only as the
application consumes bytes (``grant`` from the stream transport; ``rx_held`` for the connection),
so a paused stream holds at most one stream window and the whole connection at most one
connection window.

Every access to aioquic internals lives in this module, so a version bump (aioquic is pinned)
has one place to check: ``_write_stream_limits``, ``_write_connection_limits``, the ``Limit``
objects, ``QuicStream.sender``'s buffer offsets and the loss recovery's probe count.
"""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from aioquic.tls import SessionTicketHandler


class TunnelQuicConnection(QuicConnection):
    """A ``QuicConnection`` whose receive windows the tunnel controls (see module docstring).

    Build it directly (clients) or ``adopt`` one that aioquic's server created.
    """

    #: Bytes delivered by the peer but held by paused stream transports (not consumed yet).
    rx_held: int
    #: Credit kept ahead of consumption, per stream and for the whole connection.
    stream_window: int
    connection_window: int

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        max_streams: int,
        session_ticket_handler: SessionTicketHandler | None = None,
    ) -> None:
        super().__init__(configuration=configuration, session_ticket_handler=session_ticket_handler)
        self._setup_tunnel(max_streams)

    @classmethod
    def adopt(cls, connection: QuicConnection, max_streams: int) -> TunnelQuicConnection:
        """Turn a plain ``QuicConnection`` (built by aioquic's server) into this class.

        aioquic's ``QuicServer`` constructs its connections itself, with no hook to choose the
        class; re-classing the fresh object (before its first datagram) is the only way to get
        this flow control on the server side without forking the server's demultiplexer. The
        subclass adds no slots and its extra state is set here, so the layout is unchanged.
        """
        connection.__class__ = cls
        assert isinstance(connection, cls)
        connection._setup_tunnel(max_streams)
        return connection

    def _setup_tunnel(self, max_streams: int) -> None:
        config = self._configuration
        self.rx_held = 0
        self.stream_window = config.max_stream_data
        self.connection_window = config.max_data
        # aioquic lets a peer open 128 streams at once; the tunnel runs one per client
        # connection. Announced in the transport parameters, so set before the handshake.
        self._local_max_streams_bidi.value = max_streams
        self._local_max_streams_bidi.sent = max_streams

    # --- state for the link and the stream transports ---------------------------------------

    @property
    def close_event(self) -> ConnectionTerminated | None:
        """Set as soon as the connection starts closing (either side, or an error)."""
        return self._close_event

    @property
    def probes_unanswered(self) -> int:
        """Probe timeouts in a row without any acknowledgement from the peer."""
        return self._loss._pto_count

    def effective_idle_timeout(self) -> float:
        """The idle timeout both ends agreed on (the smaller one), in seconds."""
        return self._idle_timeout()

    def stream_state(self, stream_id: int) -> QuicStream | None:
        """aioquic's state of a stream, None once it was discarded (finished both ways)."""
        return self._streams.get(stream_id)

    def open_local_stream(self) -> tuple[int, QuicStream]:
        """Create the next bidirectional stream (no frame is sent until data is written)."""
        stream_id = self.get_next_available_stream_id()
        self.send_stream_data(stream_id, b"")
        return stream_id, self._streams[stream_id]

    # --- flow control -----------------------------------------------------------------------

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # DANGER ZONE: aioquic calls this for every open stream in every packet it builds.
        # Credit is raised by the stream transport as its protocol consumes data (``grant``);
        # here it is only announced. aioquic's version would also double the window.
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)  # type: ignore[arg-type]  # set for every stream
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        # Once per packet. ``used`` counts every byte the peer sent (including bytes of reset
        # or discarded streams); what paused transports still hold is not consumed yet.
        max_data = self._local_max_data
        consumed = max_data.used - self.rx_held
        if (max_data.value - consumed) * 2 < self.connection_window:
            max_data.value = consumed + self.connection_window
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            # As aioquic: batch MAX_STREAMS until the peer has fewer streams left to open than
            # the update would grant.
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value


def grant(stream: QuicStream, consumed: int, window: int) -> bool:
    """Raise ``stream``'s receive credit to ``consumed + window`` once half of it is used.

    ``consumed`` is the stream offset up to which the application has taken the data. Returns
    whether the credit changed (a MAX_STREAM_DATA frame is then due).
    """
    # DANGER ZONE: runs for every chunk delivered to a protocol.
    if (stream.max_stream_data_local - consumed) * 2 < window:
        stream.max_stream_data_local = consumed + window
        return True
    return False


def send_backlog(stream: QuicStream) -> tuple[int, int]:
    """Bytes written to ``stream`` and not acknowledged yet (unsent ones included), and how many
    of them lie within the peer's stream credit (the rest wait for the peer's reader).

    aioquic keeps them in ``sender._buffer`` between these offsets and drops acknowledged
    bytes from the front; there is no public way to see this (aioquic#328).
    """
    # DANGER ZONE: after every write and, for streams with a backlog, every acknowledgement.
    sender = stream.sender
    start = sender._buffer_start
    stop = sender._buffer_stop
    credit = stream.max_stream_data_remote
    return stop - start, (stop if stop < credit else credit) - start if credit > start else 0
