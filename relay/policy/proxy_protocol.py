"""PROXY protocol v1 (text) and v2 (binary) headers, sans-I/O.

Listeners behind a load balancer (``listener.metadata.proxyProtocol: 1|2``) learn the real
client address from the header the balancer sends before any client byte. The spec is
haproxy's ``proxy-protocol.txt``. Only what a TCP relay needs is supported:

* v1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` and ``PROXY UNKNOWN ...\\r\\n``;
  at most 107 bytes including the CRLF.
* v2: the 12-byte signature, version 2, command LOCAL or PROXY, families UNSPEC, INET/STREAM,
  INET6/STREAM and UNIX (addresses ignored), at most ``V2_MAX_PAYLOAD`` bytes after the
  16-byte fixed part. TLVs after the addresses are skipped by length, never parsed.

The caller feeds whatever it has buffered; nothing here blocks, reads a socket or looks at the
clock (STYLE B1). The caller also bounds how long it waits for a complete header (A2).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

__all__ = [
    "V1_MAX_LENGTH",
    "V2_MAX_PAYLOAD",
    "V2_SIGNATURE",
    "ProxyInfo",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
    "parse_proxy_header",
]

#: Longest v1 line, CRLF included (spec §2.1).
V1_MAX_LENGTH = 107
#: Longest v2 address block plus TLVs accepted. The spec allows 65535; real balancers send
#: under 300 bytes, and this is what one connection may make us buffer before it is refused.
V2_MAX_PAYLOAD = 2048
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
_FAM_UNIX_STREAM = 0x31
_FAM_UNIX_DGRAM = 0x32
_V4_BLOCK = struct.Struct("!4s4sHH")
_V6_BLOCK = struct.Struct("!16s16sHH")
_UNIX_BLOCK_LEN = 216


class ProxyProtocolError(Exception):
    """The peer sent bytes that are not a valid PROXY protocol header. The connection should
    be closed: what follows cannot be trusted to start at a known offset."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header said.

    ``source`` is the original client ``(ip, port)``; None means the header carried no usable
    address (v1 UNKNOWN, v2 LOCAL, UNSPEC or UNIX), and the socket's peer address applies.
    ``destination`` is the address the client connected to, None in the same cases. IPv6
    addresses are in canonical compressed form; IPv4-mapped IPv6 is reported as IPv4.
    """

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


_NO_ADDRESS = ProxyInfo(None, None)

Buffer = bytes | bytearray


def parse_proxy_header(buf: Buffer, version: int) -> tuple[ProxyInfo, int] | None:
    """Parse the PROXY header at the start of ``buf``.

    ``version`` is the one the listener is configured for (1 or 2; ValueError otherwise): a
    header of the other version is an error, as the spec requires receivers to be explicit.

    Returns None while ``buf`` is a valid but incomplete prefix: read more and call again with
    everything buffered. Otherwise returns the header's content and the number of bytes it
    took; the client's own bytes start at that offset. Raises ProxyProtocolError as soon as
    the bytes cannot be a valid header, including one longer than the limits (107 bytes for
    v1, 16 + ``V2_MAX_PAYLOAD`` for v2), so a peer can never make us buffer more than that.
    """
    if version == 1:
        return _parse_v1(buf)
    if version == 2:
        return _parse_v2(buf)
    raise ValueError(f"PROXY protocol version must be 1 or 2, not {version!r}")


# ----------------------------------------------------------------------------------------------
# v1


def _parse_v1(buf: Buffer) -> tuple[ProxyInfo, int] | None:
    head = bytes(buf[: len(_V1_PREFIX)])
    if not _V1_PREFIX.startswith(head):
        raise ProxyProtocolError(f"PROXY v1: expected 'PROXY ', got {head!r}")
    newline = buf.find(b"\n", 0, V1_MAX_LENGTH)
    if newline < 0:
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1: no CRLF within {V1_MAX_LENGTH} bytes")
        return None
    if buf[newline - 1] != 0x0D:
        raise ProxyProtocolError("PROXY v1: line ends in LF without CR")
    try:
        line = bytes(buf[: newline - 1]).decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1: non-ASCII bytes in the header") from None
    parts = line.split(" ")
    proto = parts[1]
    consumed = newline + 1
    if proto == "UNKNOWN":
        # The spec: the receiver must ignore anything after UNKNOWN up to the CRLF.
        return _NO_ADDRESS, consumed
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {proto[:16]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(
            f"PROXY v1: expected 'PROXY {proto} <src> <dst> <sport> <dport>', got {line!r}"
        )
    family = AF_INET if proto == "TCP4" else AF_INET6
    src = _v1_ip(parts[2], family, proto)
    dst = _v1_ip(parts[3], family, proto)
    return ProxyInfo((src, _v1_port(parts[4])), (dst, _v1_port(parts[5]))), consumed


def _v1_ip(text: str, family: int, proto: str) -> str:
    try:
        packed = inet_pton(family, text)
    except (OSError, ValueError):
        raise ProxyProtocolError(f"PROXY v1: {text!r} is not an {proto} address") from None
    return _ip_text(packed)


def _v1_port(text: str) -> int:
    # Decimal 0..65535, no sign, no leading zeros: int() alone would accept "+80" and " 80".
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > 5
        or (len(text) > 1 and text[0] == "0")
        or int(text) > 65535
    ):
        raise ProxyProtocolError(f"PROXY v1: bad port {text!r}")
    return int(text)


# ----------------------------------------------------------------------------------------------
# v2


def _parse_v2(buf: Buffer) -> tuple[ProxyInfo, int] | None:
    size = len(buf)
    head = bytes(buf[: len(V2_SIGNATURE)])
    if not V2_SIGNATURE.startswith(head):
        raise ProxyProtocolError("PROXY v2: bad signature")
    if size < _V2_FIXED:
        return None
    version, command = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2: version {version}, expected 2")
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2: unknown command {command:#x}")
    family = buf[13]
    length = (buf[14] << 8) | buf[15]
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(
            f"PROXY v2: {length} bytes of addresses and TLVs, more than {V2_MAX_PAYLOAD}"
        )
    total = _V2_FIXED + length
    if size < total:
        return None
    if command == _CMD_LOCAL:
        # Health checks from the balancer itself: use the socket's addresses; the family and
        # whatever block follows are ignored, as the spec says.
        return _NO_ADDRESS, total
    if family == _FAM_TCP4:
        block = _V4_BLOCK
    elif family == _FAM_TCP6:
        block = _V6_BLOCK
    elif family == _FAM_UNSPEC:
        return _NO_ADDRESS, total
    elif family in (_FAM_UNIX_STREAM, _FAM_UNIX_DGRAM):
        if length < _UNIX_BLOCK_LEN:
            raise ProxyProtocolError(f"PROXY v2: UNIX address block of {length} bytes")
        return _NO_ADDRESS, total
    else:
        raise ProxyProtocolError(
            f"PROXY v2: unsupported address family/protocol {family:#04x} (TCP over IPv4 or"
            " IPv6 expected)"
        )
    if length < block.size:
        raise ProxyProtocolError(
            f"PROXY v2: address block of {length} bytes, family {family:#04x} needs {block.size}"
        )
    # Anything after the address block is TLVs (or padding); skipped as a whole by `total`.
    src, dst, sport, dport = block.unpack_from(buf, _V2_FIXED)
    return ProxyInfo((_ip_text(src), sport), (_ip_text(dst), dport)), total


def _ip_text(packed: bytes) -> str:
    if len(packed) == 4:
        return inet_ntop(AF_INET, packed)
    address = ipaddress.IPv6Address(packed)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


# ----------------------------------------------------------------------------------------------
# Encoding (tests, and a relay that speaks PROXY to its upstream)


def _family(source: tuple[str, int], destination: tuple[str, int]) -> int:
    src6 = ":" in source[0]
    if src6 != (":" in destination[0]):
        raise ValueError("PROXY: source and destination must be the same address family")
    return AF_INET6 if src6 else AF_INET


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 header: ``PROXY UNKNOWN`` when ``source`` is None, else TCP4/TCP6 by address
    family (both addresses must share it). Raises ValueError for a bad address or port."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = _family(source, destination)
    src = inet_ntop(family, inet_pton(family, source[0]))
    dst = inet_ntop(family, inet_pton(family, destination[0]))
    for port in (source[1], destination[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"PROXY: bad port {port}")
    proto = "TCP4" if family == AF_INET else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: command LOCAL when ``source`` is None, else PROXY over TCP4/TCP6.
    ``tlvs`` is appended verbatim after the addresses (the caller encodes them)."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_LOCAL, _FAM_UNSPEC, len(tlvs)) + tlvs
    family = _family(source, destination)
    if family == AF_INET:
        fam, block = _FAM_TCP4, _V4_BLOCK
    else:
        fam, block = _FAM_TCP6, _V6_BLOCK
    addresses = block.pack(
        inet_pton(family, source[0]), inet_pton(family, destination[0]), source[1], destination[1]
    )
    payload = addresses + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_PROXY, fam, len(payload)) + payload
