"""Reading a query: what the answer depends on, from the bytes that arrived.

Two readers give the same :class:`Query`:

* :func:`read_simple` handles the shape nearly every resolver sends (one question with an
  uncompressed name, nothing else or one OPT record, no trailing bytes) by slicing the bytes
  directly. It answers None for anything else, never "malformed": it only ever declines.
* :func:`read_parsed` reads a message dnslib parsed: every other shape, and the errors
  (FORMERR, NOTIMP) with their reasons.

Why two: dnslib's parser builds an object per label, field and record and was about three
quarters of a query's CPU; the simple shape is a few slices. dnslib stays the parser of
record for everything unusual, and ``tests/master/test_dns_wire.py`` checks, on fuzzed input,
that whenever :func:`read_simple` accepts a message, :func:`read_parsed` reads the same query.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import OPCODE, QTYPE, DNSRecord

from master_api.dns.config import Labels
from master_api.dns.wire import (
    ECS_OPTION_CODE,
    QR,
    BadClientSubnet,
    ClientSubnet,
    encode_question,
)

__all__ = [
    "CLASSIC_UDP_PAYLOAD",
    "MAX_UDP_PAYLOAD",
    "FormErr",
    "Query",
    "read_parsed",
    "read_simple",
]

#: Largest UDP reply we send (the DNS flag day 2020 value; avoids IP fragmentation).
MAX_UDP_PAYLOAD = 1232
#: A UDP reply to a query without EDNS (RFC 1035).
CLASSIC_UDP_PAYLOAD = 512
_TYPE_OPT = 41
_MAX_NAME = 255
_HEADER = struct.Struct("!6H")
_RR_TAIL = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_OPTION = struct.Struct("!HH")


class FormErr(Exception):
    """The query is malformed in a way that deserves a FORMERR reply (not a drop)."""


@dataclass(frozen=True, slots=True)
class Query:
    """What the answer depends on."""

    qid: int
    flags: int
    """The reply's flags so far: QR, the query's opcode and RD."""
    question: bytes
    """The question as asked, in wire format (uncompressed)."""
    qtype: int
    qclass: int
    name: Labels
    """The question's name, lower-cased."""
    edns: bool
    edns_version: int
    payload: int
    """Largest UDP reply the client takes."""
    subnet: ClientSubnet | None


def read_simple(data: bytes) -> Query | None:
    """The query in ``data`` if it has the common shape, else None (use dnslib)."""
    # DANGER ZONE: per packet, on anyone's bytes. Every index is bounds-checked by a length
    # comparison first; any surprise returns None and the message goes to dnslib.
    size = len(data)
    if size < 17:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR=1 or opcode != QUERY: dnslib
        return None
    labels: list[bytes] = []
    pos = 12
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > size:  # compression or extended label types
            return None
        label = data[pos + 1 : pos + 1 + length]
        if not label.isascii():  # dnslib refuses labels that are not UTF-8: let it decide
            return None
        labels.append(label)
        pos += 1 + length
    if pos - 12 > _MAX_NAME or pos + 4 > size:
        return None
    qtype, qclass = data[pos] << 8 | data[pos + 1], data[pos + 2] << 8 | data[pos + 3]
    question = data[12 : pos + 4]
    pos += 4
    name = tuple(label.lower() for label in labels)
    reply_flags = QR | (flags & 0x0100)  # opcode 0, RD copied
    if ar == 0:
        if pos != size:
            return None
        return Query(
            qid, reply_flags, question, qtype, qclass, name, False, 0, CLASSIC_UDP_PAYLOAD, None
        )
    # one additional record: it must be an OPT with the root name, ending the message
    if pos + 11 > size or data[pos] != 0:
        return None
    rtype, payload, ttl, rdlength = _RR_TAIL.unpack_from(data, pos + 1)
    pos += 11
    if rtype != _TYPE_OPT or pos + rdlength != size:
        return None
    subnet = None
    while pos < size:
        if pos + 4 > size:
            return None
        code, length = _OPTION.unpack_from(data, pos)
        pos += 4
        if pos + length > size:
            return None
        if code == ECS_OPTION_CODE:
            if subnet is not None:
                return None
            try:
                subnet = ClientSubnet.parse(data[pos : pos + length])
            except BadClientSubnet:
                return None  # dnslib's path answers FORMERR, with the reason
        pos += length
    payload = min(max(payload, CLASSIC_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
    version = (ttl >> 16) & 0xFF
    return Query(qid, reply_flags, question, qtype, qclass, name, True, version, payload, subnet)


def read_parsed(record: DNSRecord) -> Query | None:
    """The query in a message dnslib parsed (QR=0); None for an opcode we do not implement;
    :class:`FormErr` for a malformed one; ValueError for a name that cannot be echoed (over
    255 bytes)."""
    header = record.header
    if header.opcode != OPCODE.QUERY:
        return None
    if len(record.questions) != 1:
        raise FormErr(f"{len(record.questions)} questions; exactly 1 expected")
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(opts) > 1:
        raise FormErr(f"{len(opts)} OPT records; at most 1 allowed")
    first = record.questions[0]
    asked = tuple(first.qname.label)
    question = encode_question(asked, first.qtype, first.qclass)
    name = tuple(label.lower() for label in asked)
    flags = QR | (header.opcode << 11) | (header.rd << 8)
    parts = (header.id, flags, question, first.qtype, first.qclass, name)
    if not opts:
        return Query(*parts, False, 0, CLASSIC_UDP_PAYLOAD, None)
    opt = opts[0]
    version = (opt.ttl >> 16) & 0xFF
    payload = min(max(int(opt.rclass), CLASSIC_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
    subnet = None
    options = opt.rdata if isinstance(opt.rdata, list) else []
    for option in options:
        if getattr(option, "code", None) == ECS_OPTION_CODE:
            if subnet is not None:
                raise FormErr("two client-subnet options")
            try:
                subnet = ClientSubnet.parse(bytes(option.data))
            except BadClientSubnet as exc:
                raise FormErr(str(exc)) from None
    return Query(*parts, True, version, payload, subnet)
