"""``ChunkedBody``: a chunked body followed read by read and forwarded as the origin framed it."""

from __future__ import annotations

import pytest

from relay.protocols.http1_body import MAX_LINE, BodyError, ChunkedBody

EVENTS = [b'data: {"seq": %d}\n\n' % i for i in range(3)]
WIRE = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS)
LAST = b"0\r\nx-trailer: 1\r\n\r\n"


def feed_all(body: ChunkedBody, reads: list[bytes]) -> tuple[bytes, list[bytes]]:
    payload: list[bytes] = []
    out = b"".join(body.feed(read, payload) for read in reads)
    return out, payload


def test_a_read_of_whole_chunks_is_forwarded_as_it_is_without_a_copy() -> None:
    body = ChunkedBody()
    read = b"%x\r\n%s\r\n" % (len(EVENTS[0]), EVENTS[0])
    payload: list[bytes] = []

    assert body.feed(read, payload) is read
    assert payload == [EVENTS[0]]
    assert body.payload_bytes == len(EVENTS[0]) and not body.done


@pytest.mark.parametrize("cut", range(1, len(WIRE + LAST)))
def test_a_body_cut_anywhere_forwards_the_same_chunks_and_ends_once(cut: int) -> None:
    wire = WIRE + LAST
    body = ChunkedBody()

    out, payload = feed_all(body, [wire[:cut], wire[cut:]])

    assert out == WIRE  # the last chunk and the trailer are the caller's to write
    assert b"".join(payload) == b"".join(EVENTS)
    assert body.done and not body.extra


def test_a_body_fed_byte_by_byte_never_forwards_part_of_the_last_chunk() -> None:
    body = ChunkedBody()
    outs = [body.feed(bytes([b])) for b in WIRE + b"0\r\n\r\n"]

    assert b"".join(outs) == WIRE
    assert body.done


def test_chunk_extensions_pass_and_bytes_after_the_end_are_flagged() -> None:
    body = ChunkedBody()

    out = body.feed(b"3;name=value\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n")

    assert out == b"3;name=value\r\nabc\r\n"
    assert body.payload_bytes == 3
    assert body.done and body.extra


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zz\r\nabc\r\n", "invalid chunk size line"),
        (b"0x3\r\nabc\r\n", "invalid chunk size line"),
        (b"+3\r\nabc\r\n", "invalid chunk size line"),
        (b"1_0\r\n", "invalid chunk size line"),
        (b"3\nabc\r\n", "invalid chunk size line"),
        (b"3\r\nabcd\r\n", "chunk data not followed by CRLF"),
        (b"3\r\nabc\n", "chunk data not followed by CRLF"),
        (b"1" * 16 + b"\r\n", "invalid chunk size line"),
        (b"1 \r\na\r\n", "invalid chunk size line"),
        (b"1;ext=\x00\r\na\r\n", "invalid chunk size line"),  # would reach the client as is
        (b"0\r\nA:\x00\r\n\r\n", "invalid trailer field"),
        (b"0\r\n: no name\r\n\r\n", "invalid trailer field"),
    ],
)
def test_what_is_not_chunked_encoding_is_refused_by_name(wire: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        ChunkedBody().feed(wire)


def test_an_endless_size_line_is_refused_before_it_grows_unbounded() -> None:
    body = ChunkedBody()
    body.feed(b"a" * (MAX_LINE - 1))
    with pytest.raises(BodyError, match="invalid chunk size line"):
        body.feed(b"a" * 10)


def test_the_last_events_and_the_last_chunk_in_one_read_end_the_body() -> None:
    body = ChunkedBody()
    done = b"data: [DONE]\n\n"  # under 16 bytes: a one-digit size line
    events = WIRE + b"%x\r\n%s\r\n" % (len(done), done)
    payload: list[bytes] = []

    out = body.feed(events + b"0\r\n\r\n", payload)

    assert out == events
    assert payload == [*EVENTS, done]
    assert body.payload_bytes == len(b"".join(payload))
    assert body.done and not body.extra
