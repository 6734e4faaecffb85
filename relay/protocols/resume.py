"""Resumable tunneled streams, sans-I/O: the relay v1 ``resume`` feature and the stream framing.

A feature of our own in the relay v1 TLV list (type ``FEATURE_TYPE``; gost ignores feature
types it does not know, so a plain gost peer answers without it and the tunnel stays a plain
one). Request feature data:

- open:   ``MODE=1 | EARLY(4)``: a new stream; ``EARLY`` raw data bytes follow the header
  (the client's first write, sent with the header), everything after them is framed.
- resume: ``MODE=2 | STREAM_ID(16) | TOKEN(32) | RECEIVED(8)``: continue a stream whose
  tunnel broke; ``RECEIVED`` counts the payload bytes the client got from the server.

Response feature data (in an OK response): ``STREAM_ID(16) | TOKEN(32) | RECEIVED(8)``. On
open, the server names the stream and gives the token that resumes it (an HMAC of the stream
id and the authenticated user under a secret of the server process: only the edge that opened
the stream, with its credentials, can resume it); on resume, ``RECEIVED`` counts the payload
bytes the server got from the client, so each side replays exactly what the other lacks.

Once accepted, both directions are framed: ``TYPE(1) | LEN(4) | DATA``. ``DATA`` carries
payload; ``ACK`` (8-byte offset) lets the peer drop what it no longer needs to replay; ``EOF``
is a half-close; ``CLOSE`` ends the stream for good (answered with ``CLOSE``). A tunnel lost
without a ``CLOSE`` is a break, not an end: the server parks the stream, the client resumes it.

Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

#: Our feature type: far from gost's (0x01..0x04) so a future gost feature does not collide.
FEATURE_TYPE = 0xA1
STREAM_ID_LEN = 16
TOKEN_LEN = 32
#: Largest frame accepted: bounds what a decoder buffers for one frame.
MAX_FRAME = 1 << 20
#: A receiver acknowledges every this many payload bytes. Send buffers must be larger (the
#: config checker's minimum is 4x), so a sender stalled on a full buffer always gets an ACK.
ACK_EVERY = 16 * 1024
#: ... and, when less arrived, this many seconds after the last unacknowledged byte, so an
#: idle stream (a pooled keep-alive tunnel) does not hold its last response for replay.
ACK_DELAY = 1.0

_FRAME = struct.Struct("!BI")
_OFFSET = struct.Struct("!Q")
_OPEN = struct.Struct("!BI")
_RESUME = struct.Struct(f"!B{STREAM_ID_LEN}s{TOKEN_LEN}sQ")
_ACCEPT = struct.Struct(f"!{STREAM_ID_LEN}s{TOKEN_LEN}sQ")


class ResumeError(Exception):
    """The peer broke the resume protocol (bad feature, bad frame, impossible offset)."""


class Mode(IntEnum):
    OPEN = 1
    RESUME = 2


class FrameType(IntEnum):
    DATA = 0
    ACK = 1
    EOF = 2
    CLOSE = 3


# --- the relay v1 feature -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenRequest:
    #: Raw data bytes that follow the header before the framing starts.
    early: int


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    stream_id: bytes
    token: bytes
    #: Payload bytes the client has received from the server.
    received: int


@dataclass(frozen=True, slots=True)
class Accept:
    stream_id: bytes
    token: bytes
    #: Payload bytes the server has received from the client (0 on open).
    received: int


def encode_open(early: int) -> bytes:
    return _OPEN.pack(Mode.OPEN, early)


def encode_resume(request: ResumeRequest) -> bytes:
    return _RESUME.pack(Mode.RESUME, request.stream_id, request.token, request.received)


def decode_request(data: bytes) -> OpenRequest | ResumeRequest:
    """Decode request feature data; raises ``ResumeError``."""
    if data[:1] == bytes([Mode.OPEN]) and len(data) == _OPEN.size:
        return OpenRequest(early=_OPEN.unpack(data)[1])
    if data[:1] == bytes([Mode.RESUME]) and len(data) == _RESUME.size:
        _, stream_id, token, received = _RESUME.unpack(data)
        return ResumeRequest(stream_id, token, received)
    raise ResumeError(f"bad resume feature ({len(data)} bytes)")


def encode_accept(accept: Accept) -> bytes:
    return _ACCEPT.pack(accept.stream_id, accept.token, accept.received)


def decode_accept(data: bytes) -> Accept:
    if len(data) != _ACCEPT.size:
        raise ResumeError(f"bad resume answer ({len(data)} bytes)")
    return Accept(*_ACCEPT.unpack(data))


def stream_token(secret: bytes, stream_id: bytes, user: str) -> bytes:
    """The token that resumes ``stream_id``: bound to the server's secret and the user that
    opened it, so neither another edge's credentials nor a guessed token will do."""
    return hmac.new(secret, stream_id + b"\0" + user.encode(), hashlib.sha256).digest()


# --- frames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class EofReceived:
    pass


@dataclass(frozen=True, slots=True)
class CloseReceived:
    pass


Event = DataReceived | EofReceived | CloseReceived


def frame(ftype: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(ftype, len(payload)) + payload


class SendBuffer:
    """Payload sent but not yet acknowledged, by stream offset: what a resume may replay."""

    __slots__ = ("_chunks", "base", "sent")

    def __init__(self) -> None:
        #: Offset of the first byte still held; everything before it was acknowledged.
        self.base = 0
        #: Offset after the last byte sent.
        self.sent = 0
        self._chunks: deque[bytes] = deque()

    @property
    def size(self) -> int:
        return self.sent - self.base

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.sent += len(data)

    def ack(self, offset: int) -> None:
        """Drop what the peer has up to ``offset``; raises ``ResumeError`` past ``sent``."""
        if offset > self.sent:
            raise ResumeError(f"peer acknowledged {offset} bytes, only {self.sent} were sent")
        chunks = self._chunks
        while chunks and self.base < offset:
            head = chunks[0]
            if self.base + len(head) <= offset:
                chunks.popleft()
                self.base += len(head)
            else:
                chunks[0] = head[offset - self.base :]
                self.base = offset

    def since(self, offset: int) -> list[bytes]:
        """The payload from ``offset`` on; raises ``ResumeError`` when not held any more."""
        if not self.base <= offset <= self.sent:
            raise ResumeError(
                f"cannot replay from offset {offset}: holding {self.base}..{self.sent}"
            )
        out: list[bytes] = []
        pos = self.base
        for chunk in self._chunks:
            end = pos + len(chunk)
            if end > offset:
                out.append(chunk[max(0, offset - pos) :])
            pos = end
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self.base = self.sent


class StreamEnd:
    """One end of a resumable stream: frames what it sends and keeps it until acknowledged,
    decodes what it receives and counts it. Used the same way by the edge and the core."""

    __slots__ = ("_buf", "_close_sent", "_eof_sent", "acked", "buffer", "received")

    def __init__(self) -> None:
        self.buffer = SendBuffer()
        #: Payload bytes received from the peer (complete DATA frames only).
        self.received = 0
        #: The last offset this end acknowledged to its peer.
        self.acked = 0
        self._buf = bytearray()
        self._eof_sent = False
        self._close_sent = False

    @property
    def closing(self) -> bool:
        """Whether this end has sent its ``CLOSE``."""
        return self._close_sent

    def send(self, data: bytes) -> bytes:
        """Frame ``data`` (kept for replay until acknowledged); returns the bytes to write."""
        self.buffer.append(data)
        if len(data) <= MAX_FRAME:
            return _FRAME.pack(FrameType.DATA, len(data)) + data
        return b"".join(
            frame(FrameType.DATA, data[i : i + MAX_FRAME]) for i in range(0, len(data), MAX_FRAME)
        )

    def send_eof(self) -> bytes:
        self._eof_sent = True
        return frame(FrameType.EOF)

    def send_close(self) -> bytes:
        self._close_sent = True
        return frame(FrameType.CLOSE)

    def receive(self, data: bytes) -> tuple[list[Event], bytes]:
        """Decode ``data``; returns the events and the bytes to write back (acknowledgements).

        Raises ``ResumeError`` on a malformed frame or an impossible acknowledgement.
        """
        # DANGER ZONE: runs for every chunk of every resumable stream.
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        events: list[Event] = []
        pos, end = 0, len(data)
        while end - pos >= 5:
            ftype, length = _FRAME.unpack_from(data, pos)
            if length > MAX_FRAME:
                raise ResumeError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            stop = pos + 5 + length
            if stop > end:
                break
            if ftype == FrameType.DATA:
                payload = data[pos + 5 : stop]
                self.received += length
                events.append(DataReceived(payload))
            elif ftype == FrameType.ACK:
                if length != _OFFSET.size:
                    raise ResumeError("bad ACK frame")
                self.buffer.ack(_OFFSET.unpack_from(data, pos + 5)[0])
            elif ftype == FrameType.EOF:
                events.append(EofReceived())
            elif ftype == FrameType.CLOSE:
                events.append(CloseReceived())
            else:
                raise ResumeError(f"unknown frame type {ftype}")
            pos = stop
        if pos < end:
            buf += data[pos:]
        reply = b""
        if self.received - self.acked >= ACK_EVERY:
            self.acked = self.received
            reply = frame(FrameType.ACK, _OFFSET.pack(self.received))
        return events, reply

    @property
    def unacked(self) -> bool:
        """Whether payload arrived that this end has not acknowledged yet."""
        return self.received > self.acked

    def ack(self) -> bytes:
        """An acknowledgement of everything received so far (the delayed ACK)."""
        self.acked = self.received
        return frame(FrameType.ACK, _OFFSET.pack(self.received))

    def lost(self) -> None:
        """The tunnel broke: a frame cut in half is dropped (the peer replays it whole)."""
        self._buf.clear()

    def replay(self, peer_received: int) -> bytes:
        """Everything the peer lacks after a resume, given what it says it received: the
        payload from that offset, then the half-close and close already sent. Raises
        ``ResumeError`` when the offset is not held (the stream cannot continue)."""
        chunks = self.buffer.since(peer_received)
        self.buffer.ack(peer_received)
        out = [frame(FrameType.DATA, c[i : i + MAX_FRAME]) for c in chunks
               for i in range(0, len(c), MAX_FRAME)]  # fmt: skip
        if self._eof_sent:
            out.append(frame(FrameType.EOF))
        if self._close_sent:
            out.append(frame(FrameType.CLOSE))
        self.acked = self.received  # the resume handshake told the peer our offset
        return b"".join(out)
