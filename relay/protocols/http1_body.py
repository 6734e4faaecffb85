"""A chunked HTTP/1.1 body followed read by read, to forward it as it is (RFC 9112 §7.1).

The ``http`` handler answers its client with chunked encoding whenever the origin did, so the
origin's chunks can go out byte for byte: what the relay must know is only where the body
ends, how much payload it carried, and (for usage accounting) what that payload was. Keeping
httptools' parser for the whole body cost ~850 bytes per open stream and a re-encoding of
every chunk; this keeps a few integers and returns the read itself in the common case (whole
chunks in one read), without a copy.

The last chunk is not forwarded: the caller writes its own (``http1.LAST_CHUNK``), so the
origin's trailer fields, which describe its connection's message, are dropped as before.
"""

from __future__ import annotations

import re

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
#: ``chunk-size *( ";" ext-name [ "=" ext-value ] ) CRLF`` (RFC 9112 §7.1.1, without the
#: optional whitespace, as httptools' parser wants it): extensions are passed on as they are,
#: so nothing in them may be less than what a client's parser takes.
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n"
)
#: A trailer field line (RFC 9110 §5.5): dropped, but only once it is a valid one.
_TRAILER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n")
#: A chunk-size line longer than ``MAX_LINE``, or a trailer longer than ``MAX_TRAILER``, is
#: refused.
MAX_LINE = 4096
MAX_TRAILER = 16384

#: Size lines of the chunks that token streams are made of (lower-case hex, no extension, up
#: to 1 KiB), for the per-read fast path: one slice and one lookup parse and check one.
_SHORT_SIZE_LINES = {b"%x\r\n" % size: size for size in range(1, 0x400)}

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class BodyError(ValueError):
    """The body is not valid chunked encoding; names what is wrong."""


class ChunkedBody:
    """Where a chunked body is, between reads. ``feed`` each read; ``done`` once it ended."""

    __slots__ = ("_held", "_remaining", "_state", "extra", "payload_bytes")

    def __init__(self) -> None:
        self._state = _SIZE
        #: Bytes of chunk data (state _DATA) or of its CRLF (state _DATA_END) still to come.
        self._remaining = 0
        #: The start of a chunk-size line (or of the trailer) that a read cut: held back until
        #: the rest arrives, so a last chunk is never half forwarded.
        self._held = b""
        #: Payload bytes seen so far (chunk data, without framing).
        self.payload_bytes = 0
        #: Bytes followed the end of the body in the same read (the connection is not reusable).
        self.extra = False

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, payload: list[bytes] | None = None) -> bytes:
        """Take one read; return the part of it (with any held-back bytes) to forward now.

        ``payload``, when given, gets the chunk data of this read appended (for the usage
        search). Raises ``BodyError`` on anything that is not chunked encoding.
        """
        # DANGER ZONE: once per upstream read of every chunked response (per SSE token). The
        # common read is whole chunks as the origin wrote them (a token; the last ones and the
        # last chunk): found with a slice and a lookup each, and forwarded as they came.
        if self._state == _SIZE and not self._held:
            size = len(data)
            pos = 0
            found = 0
            mark = len(payload) if payload is not None else 0
            while pos < size:
                start = pos + 4  # two hex digits: chunks of 16 to 255 bytes
                chunk_size = _SHORT_SIZE_LINES.get(data[pos:start])
                if chunk_size is None:
                    start = pos + 5  # three: up to 1 KiB
                    chunk_size = _SHORT_SIZE_LINES.get(data[pos:start])
                    if chunk_size is None:
                        start = pos + 3  # one: up to 15 bytes ("data: [DONE]")
                        chunk_size = _SHORT_SIZE_LINES.get(data[pos:start])
                        if chunk_size is None:
                            break
                end = start + chunk_size
                if data[end : end + 2] != b"\r\n":
                    break
                found += chunk_size
                if payload is not None:
                    payload.append(data[start:end])
                pos = end + 2
            else:
                self.payload_bytes += found
                return data
            if pos == size - 5 and data.endswith(b"0\r\n\r\n"):
                self.payload_bytes += found
                self._state = _DONE
                return data[:pos]
            if payload is not None:
                del payload[mark:]  # the general path below appends them again
        return self._feed(data, payload)

    def _feed(self, data: bytes, payload: list[bytes] | None) -> bytes:
        out: list[bytes] | None = None
        if self._held:
            data = self._held + data
            self._held = b""
        pos = 0
        size = len(data)
        state = self._state
        remaining = self._remaining
        # The span data[start:pos] goes out as it is; -1 once the last chunk began (nothing
        # from there on is forwarded).
        start = 0 if state < _TRAILER else -1
        while pos < size:
            if state == _DATA:
                end = pos + remaining
                if end + 2 <= size:  # the rest of the chunk and its CRLF are in this read
                    if data[end : end + 2] != b"\r\n":
                        raise BodyError("chunk data not followed by CRLF")
                    if payload is not None:
                        payload.append(data[pos:end])
                    self.payload_bytes += remaining
                    pos = end + 2
                    state = _SIZE
                    continue
                take = min(remaining, size - pos)
                if payload is not None and take:
                    payload.append(data[pos : pos + take])
                self.payload_bytes += take
                pos += take
                remaining -= take
                if not remaining:
                    state = _DATA_END
                    remaining = 2
            elif state == _DATA_END:
                want = b"\r\n"[2 - remaining :]
                got = data[pos : pos + len(want)]
                if not want.startswith(got):
                    raise BodyError("chunk data not followed by CRLF")
                pos += len(got)
                remaining -= len(got)
                if not remaining:
                    state = _SIZE
            elif state == _SIZE:
                match = _SIZE_LINE.match(data, pos)
                if match is None:
                    line_end = data.find(b"\n", pos, pos + MAX_LINE)
                    if line_end >= 0 or size - pos >= MAX_LINE:
                        line = data[pos : line_end + 1 if line_end >= 0 else pos + 40]
                        raise BodyError(f"invalid chunk size line {line!r}")
                    if start >= 0:  # a cut size line: hold it until its end arrives
                        out = _emit(out, data[start:pos])
                        start = -1
                    self._held = data[pos:]
                    break
                chunk_size = int(match.group(1), 16)
                if chunk_size:
                    pos = match.end()
                    state = _DATA
                    remaining = chunk_size
                    continue
                # The last chunk: forward what came before it, and nothing from here on.
                if start >= 0:
                    out = _emit(out, data[start:pos])
                    start = -1
                pos = match.end()
                state = _TRAILER
            elif state == _TRAILER:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    if size - pos > MAX_TRAILER:
                        raise BodyError("chunked trailer too large")
                    self._held = data[pos:]
                    break
                if line_end == pos:  # the empty line: the body ends here
                    pos += 2
                    state = _DONE
                    self.extra = pos < size
                    break
                if line_end - pos > MAX_TRAILER:
                    raise BodyError("chunked trailer too large")
                if _TRAILER_LINE.fullmatch(data, pos, line_end + 2) is None:
                    raise BodyError(f"invalid trailer field {data[pos:line_end][:40]!r}")
                pos = line_end + 2
            else:  # _DONE: whatever follows is not this body
                self.extra = True
                break
        self._state = state
        self._remaining = remaining
        if start < 0:
            return b"".join(out) if out else b""
        if out is None:
            return data if start == 0 and pos >= size else data[start:pos]
        out.append(data[start:pos])
        return b"".join(out)


def _emit(out: list[bytes] | None, part: bytes) -> list[bytes] | None:
    if not part:
        return out
    if out is None:
        return [part]
    out.append(part)
    return out
