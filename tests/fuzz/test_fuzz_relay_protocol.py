"""Fuzzing the gost relay v1 parser in both directions (requests on the server side, responses
on the client side): any bytes give a decoded header, "need more", or ProtocolError, never
another exception; valid headers round-trip however they are split across reads."""

from __future__ import annotations

import struct

from hypothesis import example, given
from hypothesis import strategies as st

from relay.protocols.relay_v1 import (
    HEADER_LEN,
    MAX_FEATURES_LEN,
    ProtocolError,
    Request,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
)
from tests.fuzz.budget import fuzz_settings

hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,30}(\.[a-z][a-z0-9-]{0,30}){0,3}", fullmatch=True),
)
credentials = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
requests = st.builds(
    Request,
    cmd=st.integers(0, 255),
    username=st.none() | credentials,
    password=st.none() | credentials,
    target=st.none() | st.tuples(hosts, st.integers(0, 65535)),
)


def _parse_or_error(parse: object, data: bytes) -> object:
    try:
        return parse(data)  # type: ignore[operator]
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what is wrong"
        return exc


@fuzz_settings(300)
@given(st.binary(max_size=600))
@example(b"\x01\x01\x00\x03\x02\x00\x00")  # empty address feature
@example(b"\x01\x01\x00\x04\x02\x00\x01\x01")  # IPv4 address cut short
@example(b"\x01\x01\x00\x05\x02\x00\x02\x03\xff")  # domain longer than its feature
@example(b"\x01\x01\x00\x05\x01\x00\x02\x05a")  # user-auth lengths past the end
@example(b"\x01\x01\xff\xff")  # a header claiming 64 KiB of features
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for parse in (parse_request, parse_response):
        result = _parse_or_error(parse, data)
        if isinstance(result, tuple):
            _header, rest = result
            assert data.endswith(rest)  # the bytes after the header are the client's, intact
        elif result is None:
            # "Need more" only while the declared header is not all there, and never for a
            # header longer than the limit (that must be refused before it is buffered).
            assert len(data) < HEADER_LEN or (
                struct.unpack_from("!H", data, 2)[0] <= MAX_FEATURES_LEN
                and len(data) < HEADER_LEN + struct.unpack_from("!H", data, 2)[0]
            )


@fuzz_settings(200)
@given(requests, st.binary(max_size=64), st.data())
def test_requests_round_trip_whatever_the_read_boundaries(
    request: Request, first_data: bytes, data: st.DataObject
) -> None:
    header = encode_request(request)
    wire = header + first_data
    cut = data.draw(st.integers(0, len(wire)))
    partial = parse_request(wire[:cut])
    if cut < len(header):
        assert partial is None  # a header split across reads waits for the rest
    else:
        assert partial is not None and partial[1] == wire[len(header) : cut]
    decoded, rest = parse_request(wire)  # type: ignore[misc]
    assert rest == first_data
    assert decoded.cmd == request.cmd
    if request.username is not None or request.password is not None:
        assert (decoded.username, decoded.password) == (
            request.username or "",
            request.password or "",
        )
    if request.target is None:
        assert decoded.target is None
    else:
        host, port = request.target
        assert decoded.target is not None and decoded.target[1] == port
        # IPv6 comes back in canonical form, names as they were.
        assert decoded.target[0] == host or ":" in host


@fuzz_settings(100)
@given(st.integers(0, 255), st.binary(max_size=32))
def test_responses_round_trip(status: int, first_data: bytes) -> None:
    decoded, rest = parse_response(encode_response(status) + first_data)  # type: ignore[misc]
    assert decoded.status == status and rest == first_data


@fuzz_settings(200)
@given(requests, st.data())
def test_a_corrupted_request_is_refused_or_decoded_never_anything_else(
    request: Request, data: st.DataObject
) -> None:
    wire = bytearray(encode_request(request))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    _parse_or_error(parse_request, bytes(wire))
