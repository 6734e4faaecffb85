"""PROXY protocol v1/v2 parsing (relay.policy.proxy_protocol): round trips, byte-at-a-time
feeding, malformed and oversized headers, and a randomized fuzz loop."""

from __future__ import annotations

import random
import struct

import pytest

from relay.policy.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyInfo,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

PAIRS = [
    (("203.0.113.7", 51234), ("198.51.100.1", 443)),
    (("2001:db8::7", 1), ("2001:db8::1", 65535)),
    (("0.0.0.0", 0), ("255.255.255.255", 80)),
]


def feed(data: bytes, version: int) -> tuple[ProxyInfo, int]:
    """Parse ``data`` as it would arrive one byte at a time: None until complete."""
    for end in range(1, len(data)):
        assert parse_proxy_header(data[:end], version) is None, end
    result = parse_proxy_header(data, version)
    assert result is not None
    return result


@pytest.mark.parametrize(("src", "dst"), PAIRS)
@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_reports_addresses_and_length(
    version: int, src: tuple[str, int], dst: tuple[str, int]
) -> None:
    header = encode_v1(src, dst) if version == 1 else encode_v2(src, dst)
    info, used = feed(header, version)
    assert info == ProxyInfo(src, dst)
    assert used == len(header)
    # Client bytes sent in the same segment are left for the handler.
    info2, used2 = parse_proxy_header(header + b"GET / HTTP/1.1\r\n", version) or (None, 0)
    assert (info2, used2) == (info, used)


def test_v1_examples_from_the_spec() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert parse_proxy_header(line, 1) == (
        ProxyInfo(("192.168.0.1", 56324), ("192.168.0.11", 443)),
        len(line),
    )
    unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse_proxy_header(unknown + b"x", 1) == (ProxyInfo(None, None), len(unknown))
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n", 1) == (ProxyInfo(None, None), 15)
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


def test_v1_longest_valid_header_is_accepted() -> None:
    # The spec's worst case, 107 bytes: UNKNOWN followed by the longest TCP6 addresses.
    addresses = b" " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"
    unknown = b"PROXY UNKNOWN" + addresses
    assert len(unknown) == V1_MAX_LENGTH
    assert parse_proxy_header(unknown, 1) == (ProxyInfo(None, None), V1_MAX_LENGTH)
    src = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    tcp6 = b"PROXY TCP6" + addresses
    assert parse_proxy_header(tcp6, 1) == (ProxyInfo(src, src), len(tcp6))


def test_ipv4_mapped_addresses_are_reported_as_ipv4() -> None:
    line = b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1000 80\r\n"
    assert parse_proxy_header(line, 1) == (
        ProxyInfo(("10.1.2.3", 1000), ("::1", 80)),
        len(line),
    )
    header = encode_v2(("::ffff:10.1.2.3", 1000), ("::1", 80))
    assert parse_proxy_header(header, 2) == (
        ProxyInfo(("10.1.2.3", 1000), ("::1", 80)),
        len(header),
    )


def test_v2_local_and_unspec_mean_use_the_socket_address() -> None:
    local = encode_v2(None, None)
    assert parse_proxy_header(local, 2) == (ProxyInfo(None, None), 16)
    # LOCAL ignores the family and skips whatever block it announces.
    local_inet = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x11, 12) + bytes(12)
    assert parse_proxy_header(local_inet, 2) == (ProxyInfo(None, None), 28)
    unspec = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 3) + b"abc"
    assert parse_proxy_header(unspec, 2) == (ProxyInfo(None, None), 19)
    unix = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, 216) + bytes(216)
    assert parse_proxy_header(unix, 2) == (ProxyInfo(None, None), 232)


def test_v2_tlvs_are_skipped_by_length() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\xea\x00\x05vpc-1"
    header = encode_v2(("192.0.2.1", 4000), ("192.0.2.2", 443), tlvs)
    info, used = feed(header, 2)
    assert info.source == ("192.0.2.1", 4000)
    assert used == len(header)
    # A TLV block that is itself garbage is still just skipped: we never parse TLVs.
    garbage = encode_v2(("192.0.2.1", 4000), ("192.0.2.2", 443), b"\xff\xff\xff")
    assert parse_proxy_header(garbage, 2) is not None


def test_v2_largest_accepted_header() -> None:
    header = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), bytes(V2_MAX_PAYLOAD - 12))
    assert parse_proxy_header(header, 2) == (
        ProxyInfo(("192.0.2.1", 1), ("192.0.2.2", 2)),
        16 + V2_MAX_PAYLOAD,
    )


V1_BAD = [
    (b"GET / HTTP/1.1\r\n", "expected 'PROXY '"),
    (b"PROXY\r\n", "expected 'PROXY '"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "expected 'PROXY '"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'PROXY TCP4"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected 'PROXY TCP4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "expected 'PROXY TCP4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an TCP4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an TCP6 address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an TCP4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "non-ASCII"),
    (b"PROXY UNKNOWN " + b"x" * 100, "no CRLF within 107 bytes"),
    (b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "no CRLF within 107 bytes"),
]


@pytest.mark.parametrize(("data", "message"), V1_BAD)
def test_v1_malformed_is_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message.replace("+", r"\+")):
        parse_proxy_header(data, 1)


def test_v1_refuses_at_the_first_wrong_byte_and_at_the_length_limit() -> None:
    # A client that is not a balancer is refused at once, not after 107 bytes.
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"G", 1)
    assert parse_proxy_header(b"PROXY TCP4 1.2", 1) is None
    assert parse_proxy_header(b"PROXY " + b"x" * (V1_MAX_LENGTH - 7), 1) is None
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        parse_proxy_header(b"PROXY " + b"x" * (V1_MAX_LENGTH - 6), 1)


def _v2(ver_cmd: int, family: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, size) + payload


V2_BAD = [
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8), "bad signature"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad signature"),
    (_v2(0x11, 0x11, bytes(12)), "version 1, expected 2"),
    (_v2(0x22, 0x11, bytes(12)), "unknown command"),
    (_v2(0x21, 0x11, bytes(8)), "address block of 8 bytes"),
    (_v2(0x21, 0x21, bytes(12)), "address block of 12 bytes"),
    (_v2(0x21, 0x12, bytes(12)), "unsupported address family"),
    (_v2(0x21, 0x41, bytes(12)), "unsupported address family"),
    (_v2(0x21, 0x31, bytes(100)), "UNIX address block"),
    (_v2(0x21, 0x11, b"", V2_MAX_PAYLOAD + 1), "more than 2048"),
    (_v2(0x21, 0x11, b"", 0xFFFF), "more than 2048"),
]


@pytest.mark.parametrize(("data", "message"), V2_BAD)
def test_v2_malformed_is_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data, 2)


def test_v2_oversized_is_refused_before_its_payload_arrives() -> None:
    # Only the 16-byte fixed part is needed to refuse: nothing more is ever buffered.
    with pytest.raises(ProxyProtocolError, match="more than"):
        parse_proxy_header(_v2(0x21, 0x11, b"", 60000)[:16], 2)
    assert parse_proxy_header(_v2(0x21, 0x11, b"", V2_MAX_PAYLOAD)[:16], 2) is None


def test_versions_do_not_mix() -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(encode_v2(*PAIRS[0]), 1)
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(encode_v1(*PAIRS[0]), 2)
    with pytest.raises(ValueError, match="1 or 2"):
        parse_proxy_header(b"", 3)


def test_empty_and_bytearray_input() -> None:
    assert parse_proxy_header(b"", 1) is None
    assert parse_proxy_header(b"", 2) is None
    header = bytearray(encode_v2(*PAIRS[1]))
    assert parse_proxy_header(header, 2) == (ProxyInfo(*PAIRS[1]), len(header))
    assert parse_proxy_header(bytearray(encode_v1(*PAIRS[1])), 1) is not None


def test_encoders_refuse_mixed_families() -> None:
    with pytest.raises(ValueError, match="same address family"):
        encode_v1(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError, match="same address family"):
        encode_v2(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError, match="bad port"):
        encode_v1(("1.2.3.4", 70000), ("1.2.3.5", 2))


def _mutations(rng: random.Random, seeds: list[bytes]) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 300))
    data = bytearray(rng.choice(seeds))
    if choice == 1:  # flip a few bytes
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 2:  # truncate or extend
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + rng.randbytes(rng.randrange(0, 40))
    else:  # a random length field / signature tail
        data[: len(V2_SIGNATURE)] = V2_SIGNATURE
        data += rng.randbytes(rng.randrange(0, 40))
        if len(data) >= 16:
            data[12] = rng.choice([0x20, 0x21, rng.randrange(256)])
            data[13] = rng.choice([0x00, 0x11, 0x21, 0x31, rng.randrange(256)])
            data[14:16] = struct.pack("!H", rng.randrange(0, 80))
    return bytes(data)


def test_fuzz_random_bytes_only_ever_raise_proxy_protocol_error() -> None:
    rng = random.Random(0xC0FFEE)
    seeds = [encode_v1(*pair) for pair in PAIRS] + [
        encode_v2(*pair, b"\x01\x00\x01x") for pair in PAIRS
    ]
    seeds += [b"PROXY UNKNOWN\r\n", encode_v2(None, None)]
    outcomes = {"ok": 0, "incomplete": 0, "error": 0}
    for _ in range(30_000):
        data = _mutations(rng, seeds)
        for version in (1, 2):
            try:
                result = parse_proxy_header(data, version)
            except ProxyProtocolError:
                outcomes["error"] += 1
                continue
            if result is None:
                outcomes["incomplete"] += 1
                limit = V1_MAX_LENGTH if version == 1 else 16 + V2_MAX_PAYLOAD
                assert len(data) < limit
                continue
            info, used = result
            outcomes["ok"] += 1
            assert 0 < used <= len(data)
            assert used <= (V1_MAX_LENGTH if version == 1 else 16 + V2_MAX_PAYLOAD)
            for address in (info.source, info.destination):
                assert address is None or 0 <= address[1] <= 65535
    # The loop exercised every outcome, not just the error path.
    assert all(outcomes.values()), outcomes
