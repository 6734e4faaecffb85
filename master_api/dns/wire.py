"""DNS wire format the responder needs beyond dnslib's parser: the EDNS Client Subnet option
(RFC 7871: where a resolver's client is), and the encoding of replies. Sans-I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from master_api.dns.geo import IPAddress

__all__ = [
    "AA",
    "ECS_OPTION_CODE",
    "QR",
    "QUESTION_POINTER",
    "TC",
    "BadClientSubnet",
    "ClientSubnet",
    "NameTooLong",
    "encode_message",
    "encode_name",
    "encode_opt",
    "encode_question",
    "encode_record",
]

ECS_OPTION_CODE = 8
_FAMILIES = {1: (4, 32), 2: (16, 128)}  # family -> (address bytes, max prefix)


class BadClientSubnet(ValueError):
    """A malformed ECS option: the query gets FORMERR (RFC 7871 §7.1.1)."""


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """The client network a resolver announced: ``address``/``source_prefix``."""

    address: IPAddress
    """The network address (bits past the prefix are zero)."""
    source_prefix: int
    """How many leading bits of the client's address the resolver revealed (0: none)."""

    @classmethod
    def parse(cls, data: bytes) -> ClientSubnet:
        """The option's payload -> a subnet; :class:`BadClientSubnet` when it breaks the RFC:
        unknown family, prefix too long, address length not ceil(prefix/8), a non-zero scope
        in a query, or address bits set past the prefix."""
        if len(data) < 4:
            raise BadClientSubnet(f"ECS option of {len(data)} bytes; at least 4 expected")
        family = int.from_bytes(data[0:2], "big")
        source, scope, raw = data[2], data[3], data[4:]
        if family not in _FAMILIES:
            raise BadClientSubnet(f"ECS family {family}; expected 1 (IPv4) or 2 (IPv6)")
        size, longest = _FAMILIES[family]
        if source > longest:
            raise BadClientSubnet(f"ECS source prefix /{source} longer than /{longest}")
        if scope != 0:
            raise BadClientSubnet(f"ECS scope prefix /{scope} in a query; must be 0")
        if len(raw) != (source + 7) // 8:
            raise BadClientSubnet(
                f"ECS address of {len(raw)} bytes for /{source}; {(source + 7) // 8} expected"
            )
        value = int.from_bytes(raw.ljust(size, b"\0"), "big")
        host_bits = size * 8 - source
        if value & ((1 << host_bits) - 1):
            raise BadClientSubnet(f"ECS address has bits set past its /{source} prefix")
        address: IPAddress = (
            ipaddress.IPv4Address(value) if family == 1 else ipaddress.IPv6Address(value)
        )
        return cls(address, source)

    def reply(self, scope_prefix: int) -> bytes:
        """The option payload to answer with: the same subnet and the ``scope_prefix`` the
        answer is valid for (RFC 7871 §7.2.1)."""
        family = 1 if self.address.version == 4 else 2
        raw = self.address.packed[: (self.source_prefix + 7) // 8]
        return family.to_bytes(2, "big") + bytes((self.source_prefix, scope_prefix)) + raw


# ----------------------------------------------------------------------------------------------
# Reply encoding. dnslib parses (its parser is the fuzzed, hardened part); replies are written
# here because building dnslib objects per reply cost about three quarters of a query's CPU.
# A reply is: header, the question as asked (at offset 12, so answers name it with the
# compression pointer 0xC00C and keep the asker's letter case), records, and the OPT record.

QR, AA, TC = 0x8000, 0x0400, 0x0200
#: Owner name of an answer: a pointer to the question's name at offset 12 (RFC 1035 4.1.4).
QUESTION_POINTER = b"\xc0\x0c"
_MAX_NAME = 255


class NameTooLong(ValueError):
    """A name over 255 bytes on the wire: such a query is dropped."""


def encode_name(labels: tuple[bytes, ...]) -> bytes:
    """A name in wire format, uncompressed; :class:`NameTooLong` past 255 bytes, ValueError
    for an empty or over-long label."""
    parts = []
    for label in labels:
        if not 0 < len(label) < 64:
            raise ValueError(f"label of {len(label)} bytes")
        parts.append(bytes((len(label),)) + label)
    wire = b"".join(parts) + b"\0"
    if len(wire) > _MAX_NAME:
        raise NameTooLong(f"name of {len(wire)} bytes")
    return wire


def encode_question(labels: tuple[bytes, ...], qtype: int, qclass: int) -> bytes:
    return encode_name(labels) + struct.pack("!HH", qtype, qclass)


def encode_record(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    """One resource record; ``owner`` already in wire format (a name or a pointer)."""
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def encode_opt(
    payload: int, ext_rcode: int = 0, options: tuple[tuple[int, bytes], ...] = ()
) -> bytes:
    """The OPT pseudo-record (RFC 6891): our UDP payload size, the high RCODE bits, version 0,
    no flags (no DNSSEC here), and ``options`` as (code, data)."""
    rdata = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options)
    return encode_record(b"\0", 41, (ext_rcode & 0xFF) << 24, rdata, rclass=payload)


def encode_message(
    qid: int,
    flags: int,
    question: bytes | None,
    answers: tuple[bytes, ...] | list[bytes] = (),
    authority: tuple[bytes, ...] | list[bytes] = (),
    additional: tuple[bytes, ...] | list[bytes] = (),
) -> bytes:
    header = struct.pack(
        "!HHHHHH",
        qid,
        flags,
        0 if question is None else 1,
        len(answers),
        len(authority),
        len(additional),
    )
    return b"".join((header, question or b"", *answers, *authority, *additional))
