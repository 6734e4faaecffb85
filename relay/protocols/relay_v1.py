"""gost relay protocol v1, sans-I/O (DESIGN §3.2).

Request:  ``VER=0x01 | CMD | FEALEN(2) | features``
Response: ``VER=0x01 | STATUS | FEALEN(2) | features``
Feature:  ``TYPE(1) | LEN(2) | DATA``; UserAuth (0x01) is ``ULEN | USER | PLEN | PASS``,
Addr (0x02) is ``ATYP | ADDR | PORT(2)`` with ATYP 1 IPv4, 3 domain (length-prefixed), 4 IPv6.

Nothing here touches a socket: parsers take bytes and return what they decoded plus the bytes
that follow the header (the client sends its first data bytes together with the header).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

VERSION = 0x01
HEADER_LEN = 4
FEATURE_HEADER_LEN = 3
#: A header larger than this is refused before it is buffered.
MAX_FEATURES_LEN = 4096


class Cmd(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    ASSOCIATE = 0x03


class Status(IntEnum):
    OK = 0x00
    BAD_REQUEST = 0x01
    UNAUTHORIZED = 0x02
    FORBIDDEN = 0x03
    TIMEOUT = 0x04
    SERVICE_UNAVAILABLE = 0x05
    HOST_UNREACHABLE = 0x06
    NETWORK_UNREACHABLE = 0x07
    INTERNAL_SERVER_ERROR = 0x08


class FeatureType(IntEnum):
    USER_AUTH = 0x01
    ADDR = 0x02
    TUNNEL = 0x03
    NETWORK = 0x04
    #: Ours, not gost's: resumable streams (``relay.protocols.resume``). gost ignores it.
    RESUME = 0xA1


class AddrType(IntEnum):
    IPV4 = 1
    DOMAIN = 3
    IPV6 = 4


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid relay v1 header."""


@dataclass(frozen=True, slots=True)
class Request:
    cmd: int = Cmd.CONNECT
    username: str | None = None
    password: str | None = None
    #: Target ``(host, port)``; ``None`` means "the server's default target".
    target: tuple[str, int] | None = None
    #: Data of the ``RESUME`` feature (see ``relay.protocols.resume``), when present.
    resume: bytes | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    #: Data of the ``RESUME`` feature: the server accepted a resumable stream.
    resume: bytes | None = None


# --- encoding -------------------------------------------------------------------------------


def _feature(ftype: int, data: bytes) -> bytes:
    return struct.pack("!BH", ftype, len(data)) + data


def _encode_auth(username: str, password: str) -> bytes:
    user, pwd = username.encode(), password.encode()
    if len(user) > 255 or len(pwd) > 255:
        raise ValueError("relay username and password are limited to 255 bytes each")
    return bytes([len(user)]) + user + bytes([len(pwd)]) + pwd


def _encode_addr(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise ValueError(f"relay target host too long: {host!r}") from None
        return bytes([AddrType.DOMAIN, len(name)]) + name + struct.pack("!H", port)
    atyp = AddrType.IPV4 if ip.version == 4 else AddrType.IPV6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def encode_request(request: Request) -> bytes:
    if request.resume is None:
        return _encode_request_cached(request)
    return _encode_request(request)


@functools.lru_cache(maxsize=256)
def _encode_request_cached(request: Request) -> bytes:
    # An edge sends the same header (auth, target) on every tunnel to a node.
    return _encode_request(request)


def _encode_request(request: Request) -> bytes:
    features = b""
    if request.username is not None or request.password is not None:
        features += _feature(
            FeatureType.USER_AUTH, _encode_auth(request.username or "", request.password or "")
        )
    if request.target is not None:
        features += _feature(FeatureType.ADDR, _encode_addr(*request.target))
    if request.resume is not None:
        features += _feature(FeatureType.RESUME, request.resume)
    return struct.pack("!BBH", VERSION, request.cmd, len(features)) + features


def encode_response(status: int, resume: bytes | None = None) -> bytes:
    features = b"" if resume is None else _feature(FeatureType.RESUME, resume)
    return struct.pack("!BBH", VERSION, status, len(features)) + features


# --- decoding -------------------------------------------------------------------------------


def _split_header(buf: bytes) -> tuple[int, bytes, bytes] | None:
    """Return ``(second byte, features, rest)`` once a whole header is buffered, else None."""
    if len(buf) < HEADER_LEN:
        return None
    version, second, flen = struct.unpack_from("!BBH", buf)
    if version != VERSION:
        raise ProtocolError(f"unsupported relay version 0x{version:02x}")
    if flen > MAX_FEATURES_LEN:
        raise ProtocolError(f"relay features too long ({flen} bytes)")
    end = HEADER_LEN + flen
    if len(buf) < end:
        return None
    return second, buf[HEADER_LEN:end], buf[end:]


def _iter_features(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + FEATURE_HEADER_LEN > len(data):
            raise ProtocolError("truncated relay feature header")
        ftype, flen = struct.unpack_from("!BH", data, pos)
        pos += FEATURE_HEADER_LEN
        if pos + flen > len(data):
            raise ProtocolError("truncated relay feature")
        out.append((ftype, data[pos : pos + flen]))
        pos += flen
    return out


def _decode_auth(data: bytes) -> tuple[str, str]:
    if len(data) < 2:
        raise ProtocolError("short user-auth feature")
    ulen = data[0]
    if len(data) < 1 + ulen + 1:
        raise ProtocolError("short user-auth feature")
    user = data[1 : 1 + ulen]
    plen = data[1 + ulen]
    if len(data) < 2 + ulen + plen:
        raise ProtocolError("short user-auth feature")
    pwd = data[2 + ulen : 2 + ulen + plen]
    return user.decode("utf-8", "replace"), pwd.decode("utf-8", "replace")


def _decode_addr(data: bytes) -> tuple[str, int]:
    if not data:
        raise ProtocolError("empty address feature")
    atyp = data[0]
    if atyp == AddrType.IPV4:
        if len(data) < 7:
            raise ProtocolError("short IPv4 address feature")
        host = str(ipaddress.IPv4Address(data[1:5]))
        port_at = 5
    elif atyp == AddrType.IPV6:
        if len(data) < 19:
            raise ProtocolError("short IPv6 address feature")
        host = str(ipaddress.IPv6Address(data[1:17]))
        port_at = 17
    elif atyp == AddrType.DOMAIN:
        if len(data) < 2 or len(data) < 2 + data[1] + 2:
            raise ProtocolError("short domain address feature")
        host = data[2 : 2 + data[1]].decode("ascii", "replace")
        port_at = 2 + data[1]
    else:
        raise ProtocolError(f"bad address type {atyp}")
    (port,) = struct.unpack_from("!H", data, port_at)
    return host, port


def parse_request(buf: bytes) -> tuple[Request, bytes] | None:
    """Decode a request header from the start of ``buf``.

    Returns ``(request, rest)`` where ``rest`` is the client's first data bytes, or ``None``
    when more bytes are needed. Raises ``ProtocolError`` on malformed input.
    """
    split = _split_header(buf)
    if split is None:
        return None
    cmd, features, rest = split
    if len(features) <= _CACHED_FEATURES_MAX:
        return _parse_request_features(cmd, features), rest
    return _parse_request_uncached(cmd, features), rest


#: Headers up to this many feature bytes are decoded once (auth and target, no resume token):
#: a core sees the same few headers from its edges on every tunnel.
_CACHED_FEATURES_MAX = 128


@functools.lru_cache(maxsize=256)
def _parse_request_features(cmd: int, features: bytes) -> Request:
    return _parse_request_uncached(cmd, features)


def _parse_request_uncached(cmd: int, features: bytes) -> Request:
    username = password = None
    target = None
    resume = None
    for ftype, data in _iter_features(features):
        if ftype == FeatureType.USER_AUTH:
            username, password = _decode_auth(data)
        elif ftype == FeatureType.ADDR:
            target = _decode_addr(data)
        elif ftype == FeatureType.RESUME:
            resume = data
        # Other features (tunnel, network) are not used by this relay: ignore, as gost does.
    return Request(cmd=cmd, username=username, password=password, target=target, resume=resume)


def parse_response(buf: bytes) -> tuple[Response, bytes] | None:
    """Decode a response header; ``(response, rest)`` or ``None`` when more is needed."""
    split = _split_header(buf)
    if split is None:
        return None
    status, features, rest = split
    resume = None
    for ftype, data in _iter_features(features):
        if ftype == FeatureType.RESUME:
            resume = data
    return Response(status=status, resume=resume), rest
