"""smux version 2 framing: what one TCP (or TLS) connection of a multiplexed tunnel carries.

Every frame is an 8-byte header, ``VER(1) CMD(1) LENGTH(2, little endian) STREAM_ID(4, little
endian)``, then LENGTH bytes of payload (github.com/xtaci/smux, the multiplexer of gost's
``mtcp``/``mtls``). Commands:

* ``SYN`` opens stream ``STREAM_ID`` (clients use odd ids, counting up; ids are never reused);
* ``PSH`` carries stream data;
* ``FIN`` closes the stream: its sender will neither send nor read any more;
* ``NOP`` is a keepalive, ignored;
* ``UPD`` (version 2) is a window update: ``CONSUMED(4) WINDOW(4)``, both little endian — the
  stream's reader has consumed CONSUMED bytes so far (modulo 2^32) and takes WINDOW bytes in
  flight, so its writer may send while ``sent - CONSUMED < WINDOW``.
"""

from __future__ import annotations

import struct

from relay.transports.base import TransportError

VERSION = 2

SYN = 0
FIN = 1
PSH = 2
NOP = 3
UPD = 4

HEADER = struct.Struct("<BBHI")
HEADER_SIZE = HEADER.size
UPDATE = struct.Struct("<II")
#: Largest payload of one frame (LENGTH is 16 bits).
MAX_PAYLOAD = 0xFFFF
#: Stream ids are 32 bits and never reused: a session that used them up takes no new streams.
MAX_STREAM_ID = 0xFFFFFFFF
#: What a writer may send before its reader's first window update (smux's initial window).
INITIAL_PEER_WINDOW = 256 << 10

COMMAND_NAMES = {SYN: "SYN", FIN: "FIN", PSH: "PSH", NOP: "NOP", UPD: "UPD"}


class MuxProtocolError(TransportError):
    """The peer broke the framing; the session ends with this error."""


class MuxSessionLost(ConnectionResetError):
    """The session's connection ended: every stream still open on it ends with this."""


def control(command: int, stream_id: int) -> bytes:
    """A frame without payload (SYN, FIN, NOP)."""
    return HEADER.pack(VERSION, command, 0, stream_id)


def window_update(stream_id: int, consumed: int, window: int) -> bytes:
    return HEADER.pack(VERSION, UPD, UPDATE.size, stream_id) + UPDATE.pack(
        consumed & 0xFFFFFFFF, window
    )
