"""relay protocol v1, sans-I/O: what one side encodes the other decodes, byte by byte."""

from __future__ import annotations

import pytest

from relay.protocols import relay_v1
from relay.protocols.relay_v1 import ProtocolError, Request, Status


@pytest.mark.parametrize(
    "target",
    [("127.0.0.1", 8000), ("2001:db8::1", 443), ("core1.example", 8443), None],
)
def test_request_round_trip_with_first_data(target: tuple[str, int] | None) -> None:
    request = Request(username="edge-hk-1", password="pw", target=target)
    wire = relay_v1.encode_request(request) + b"GET / HTTP/1.1\r\n"

    parsed = relay_v1.parse_request(wire)

    assert parsed == (request, b"GET / HTTP/1.1\r\n")


def test_request_needs_more_bytes_until_complete() -> None:
    wire = relay_v1.encode_request(Request(username="u", password="p", target=("h", 1)))
    for cut in range(len(wire)):
        assert relay_v1.parse_request(wire[:cut]) is None
    assert relay_v1.parse_request(wire) is not None


def test_gost_wire_layout() -> None:
    """Byte layout as gost writes it: VER CMD FEALEN | TYPE LEN ULEN USER PLEN PASS | ..."""
    wire = relay_v1.encode_request(Request(username="a", password="bc", target=("10.0.0.1", 80)))
    assert wire == bytes.fromhex("01 01 0012 01 0005 01 61 02 6263 02 0007 01 0a000001 0050")
    assert relay_v1.encode_response(Status.FORBIDDEN) == bytes.fromhex("01 03 0000")


def test_response_round_trip() -> None:
    parsed = relay_v1.parse_response(relay_v1.encode_response(Status.OK) + b"data")
    assert parsed is not None
    response, rest = parsed
    assert (response.status, rest) == (Status.OK, b"data")


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes.fromhex("05 01 0000"), "unsupported relay version"),
        (bytes.fromhex("01 01 0004 02 0005 01"), "truncated relay feature"),
        (bytes.fromhex("01 01 0004 02 0001 09"), "bad address type"),
        (bytes.fromhex("01 01 ffff"), "features too long"),
    ],
)
def test_malformed_headers_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        relay_v1.parse_request(wire + b"\x00" * 8)
