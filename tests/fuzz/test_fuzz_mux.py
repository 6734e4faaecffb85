"""Fuzzing the multiplexed session's frame reader (``mtcp``/``mtls``): every stream gets exactly
its payload, in order, however the frames are cut across reads; any bytes at all end in frames
read or a named ``MuxProtocolError``, never another exception."""

from __future__ import annotations

import asyncio
import itertools
import socket

from hypothesis import given
from hypothesis import strategies as st

from relay.transports.mux import MuxOptions, MuxProtocolError, MuxSession, MuxStream
from relay.transports.mux.frames import FIN, HEADER, NOP, PSH, SYN, UPD, UPDATE, VERSION
from tests.fuzz.budget import fuzz_settings
from tests.test_mux import Recorder


def _frame(command: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(VERSION, command, len(payload), stream_id) + payload


async def _feed(chunks: list[bytes]) -> tuple[Exception | None, dict[int, Recorder]]:
    """A server session on a real socket pair, fed ``chunks`` as its reads (one per loop turn,
    as a socket would deliver them); returns the session's error and the streams' readers."""
    readers: dict[int, Recorder] = {}

    def on_stream(stream: MuxStream) -> None:
        reader = readers[stream.stream_id] = Recorder()
        stream.set_protocol(reader)  # type: ignore[arg-type]

    ours, theirs = socket.socketpair()
    session = MuxSession(MuxOptions(keepalive_interval=0), is_client=False, on_stream=on_stream)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: session, ours)
    try:
        for chunk in chunks:
            session.data_received(chunk)
            await asyncio.sleep(0)
        for _ in range(len(chunks) + 10):  # bursts of new streams go over several loop turns
            await asyncio.sleep(0)
        error = session.error
    finally:
        if session.transport is not None:
            session.transport.abort()
        theirs.close()
    return error, readers


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]


streams = st.lists(
    st.tuples(st.lists(st.binary(max_size=300), max_size=5), st.booleans()),
    min_size=1,
    max_size=20,
)


@given(streams=streams, cuts=st.lists(st.integers(0, 1 << 16), max_size=40), data=st.data())
@fuzz_settings(60)
def test_every_stream_gets_its_bytes_however_the_reads_are_cut(
    streams: list[tuple[list[bytes], bool]], cuts: list[int], data: st.DataObject
) -> None:
    # Frames of all streams, interleaved in a random order that keeps each stream's own order;
    # keepalives and window updates in between.
    queues = [
        [_frame(SYN, 2 * i + 1)]
        + [_frame(PSH, 2 * i + 1, part) for part in parts]
        + ([_frame(FIN, 2 * i + 1)] if fin else [])
        for i, (parts, fin) in enumerate(streams)
    ]
    wire = b""
    while any(queues):
        index = data.draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        wire += queues[index].pop(0)
        if data.draw(st.integers(0, 9)) == 0:
            wire += data.draw(
                st.sampled_from(
                    [_frame(NOP, 0), _frame(UPD, 2 * index + 1, UPDATE.pack(0, 1 << 18))]
                )
            )

    error, readers = asyncio.run(_feed(_cut(wire, cuts)))

    assert error is None
    for i, (parts, fin) in enumerate(streams):
        reader = readers[2 * i + 1]
        assert bytes(reader.data) == b"".join(parts)
        assert reader.eof == fin


@given(wire=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
@fuzz_settings(100)
def test_any_bytes_are_read_or_refused_by_name(wire: bytes, cuts: list[int]) -> None:
    error, _ = asyncio.run(_feed(_cut(wire, cuts)))  # (an exception would escape here)

    assert error is None or (isinstance(error, MuxProtocolError) and str(error).startswith("mux "))
