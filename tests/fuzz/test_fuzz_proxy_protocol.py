"""Fuzzing the PROXY protocol v1/v2 parser: any bytes, and valid headers with corrupted bytes,
give a header, "need more" (only below the size limits), or ProxyProtocolError."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from relay.policy.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)
from tests.fuzz.budget import fuzz_settings

V2_MAX = 16 + V2_MAX_PAYLOAD

ports = st.integers(0, 65535)
v4 = st.tuples(st.ip_addresses(v=4).map(str), ports)
v6 = st.tuples(st.ip_addresses(v=6).map(str), ports)
pairs = st.tuples(v4, v4) | st.tuples(v6, v6)


def _check(data: bytes, version: int) -> None:
    try:
        result = parse_proxy_header(data, version)
    except ProxyProtocolError as exc:
        assert str(exc)
        return
    if result is None:
        assert len(data) < (V1_MAX_LENGTH if version == 1 else V2_MAX)
        return
    info, used = result
    assert 0 < used <= len(data)
    for address in (info.source, info.destination):
        assert address is None or 0 <= address[1] <= 65535


@fuzz_settings(300)
@given(st.binary(max_size=300), st.sampled_from([1, 2]))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", 1)
@example(b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n", 1)
@example(V2_SIGNATURE + b"\x21\x11\x00\x0b" + bytes(11), 2)  # TCP4 block one byte short
@example(V2_SIGNATURE + b"\x21\x11\xff\xff", 2)  # a payload over the limit
def test_any_bytes(data: bytes, version: int) -> None:
    _check(data, version)


@fuzz_settings(300)
@given(st.binary(max_size=120), st.sampled_from([1, 2]))
def test_any_bytes_after_a_valid_prefix(tail: bytes, version: int) -> None:
    prefix = b"PROXY " if version == 1 else V2_SIGNATURE
    _check(prefix + tail, version)


@fuzz_settings(200)
@given(pairs, st.sampled_from([1, 2]), st.binary(max_size=40), st.data())
def test_valid_headers_parse_split_anywhere_and_survive_corruption(
    pair: tuple[tuple[str, int], tuple[str, int]], version: int, rest: bytes, data: st.DataObject
) -> None:
    source, destination = pair
    header = encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
    cut = data.draw(st.integers(0, len(header) - 1))
    assert parse_proxy_header(header[:cut], version) is None
    info, used = parse_proxy_header(header + rest, version)  # type: ignore[misc]
    assert used == len(header)
    assert info.source is not None and info.source[1] == source[1]
    corrupted = bytearray(header + rest)
    at = data.draw(st.integers(0, len(corrupted) - 1))
    corrupted[at] ^= data.draw(st.integers(1, 255))
    _check(bytes(corrupted), version)
