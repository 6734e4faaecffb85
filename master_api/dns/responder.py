"""The authoritative answer to one DNS message, sans-I/O (STYLE B1): bytes and the peer's
address in, the reply's bytes (or None: drop it) out. The server feeds it datagrams and TCP
messages; tests and the fuzzer call it directly.

What it answers, for a query (QR=0, opcode QUERY, one question, class IN):

* a service host name (``dns_hostnames``): ``A``/``AAAA`` (``ANY``: both) of the nearest
  healthy edges (see ``edges.py``), TTL ``dns_ttl``; other types: NOERROR with no records
  (NODATA) and the SOA; SERVFAIL when no edge is answerable at all (or the inventory was never
  read), so resolvers retry instead of caching an empty answer;
* the zone apex: ``SOA``, ``NS`` (``dns_nameservers``); other types NODATA;
* an in-zone name that does not exist: NXDOMAIN with the SOA (negative TTL ``dns_ttl``);
* a name outside the zone, a class other than IN, zone transfers: REFUSED;
* another opcode: NOTIMP; not exactly one question, several OPT records, a malformed
  client-subnet option: FORMERR; EDNS version above 0: BADVERS.

Dropped without a reply: anything that does not parse, responses (QR=1; answering them would
let two servers bounce packets at each other), and names longer than DNS allows.

The client's location is the EDNS Client Subnet when the resolver sent one with a non-zero
prefix (the reply echoes it with that scope), else the address the query came from.
"""

from __future__ import annotations

import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import DNSError, DNSRecord

from master_api.dns.config import DnsConfig
from master_api.dns.edges import Edge, EdgeView
from master_api.dns.geo import IPAddress, country_of
from master_api.dns.query import MAX_UDP_PAYLOAD, FormErr, Query, read_parsed, read_simple
from master_api.dns.wire import (
    AA,
    ECS_OPTION_CODE,
    QR,
    QUESTION_POINTER,
    TC,
    encode_message,
    encode_name,
    encode_opt,
    encode_question,
    encode_record,
)

__all__ = ["DnsStats", "Responder"]

log = logging.getLogger(__name__)

MAX_TCP_PAYLOAD = 65535
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    BADVERS: "BADVERS",
}
TYPE_A, TYPE_NS, TYPE_SOA, TYPE_AAAA, TYPE_OPT, TYPE_ANY = 1, 2, 6, 28, 41, 255
CLASS_IN = 1
_ZONE_TRANSFERS = frozenset({251, 252})  # IXFR, AXFR
#: SOA timers other than the serial and the minimum: refresh, retry, expire (RFC 1912 values).
_SOA_TIMERS = (3600, 600, 604800)
_NS_TTL = 3600


@dataclass(slots=True)
class DnsStats:
    """Counters since start; updated from the server's one event-loop thread."""

    queries: int = 0
    """Messages that parsed as queries."""
    dropped: int = 0
    """Messages dropped: unparsable, responses, names too long to echo."""
    rcodes: dict[str, int] = field(default_factory=dict)
    """Replies by RCODE name (NOERROR, NXDOMAIN, REFUSED, ...)."""
    truncated: int = 0


class Responder:
    """Answers queries from ``view()`` (the current :class:`EdgeView`) and ``config``.

    ``locate`` maps an address to its country (default: the offline table of ``geo``).
    """

    def __init__(
        self,
        config: DnsConfig,
        view: Callable[[], EdgeView],
        locate: Callable[[IPAddress], str | None] = country_of,
    ) -> None:
        self._config = config
        self._view = view
        self._locate = locate
        self._turn = itertools.count()
        self.stats = DnsStats()
        # Everything that does not depend on the query is encoded once, here.
        zone = encode_name(config.zone)
        mname = encode_name(config.nameservers[0]) if config.nameservers else zone
        rname = encode_name((b"hostmaster", *config.zone))
        times = struct.pack("!5I", config.serial, *_SOA_TIMERS, config.ttl)
        self._soa = encode_record(zone, TYPE_SOA, config.ttl, mname + rname + times)
        self._ns = tuple(
            encode_record(zone, TYPE_NS, _NS_TTL, encode_name(name)) for name in config.nameservers
        )
        self._a_head = struct.pack("!HHIH", TYPE_A, CLASS_IN, config.ttl, 4)
        self._aaaa_head = struct.pack("!HHIH", TYPE_AAAA, CLASS_IN, config.ttl, 16)

    # ------------------------------------------------------------------------------------------
    # DANGER ZONE: runs per packet, on input anyone on the internet can send.

    def respond(self, data: bytes, peer: IPAddress, tcp: bool = False) -> bytes | None:
        """The reply to the message ``data`` that came from ``peer`` (over TCP when ``tcp``),
        or None when it must be dropped. Never raises for any input."""
        data = bytes(data)  # a bytearray's slices would be unhashable labels
        try:
            query = read_simple(data)
            if query is None:
                return self._respond_parsed(data, peer, tcp)
            self.stats.queries += 1
            return self._answer(query, peer, tcp)
        except ValueError as exc:  # a name dnslib parsed that DNS does not allow (> 255 bytes)
            log.debug("dropped a query from %s: %s", peer, exc)
            self.stats.dropped += 1
            return None

    def _respond_parsed(self, data: bytes, peer: IPAddress, tcp: bool) -> bytes | None:
        """The shapes :func:`read_simple` declines: dnslib parses, errors get their RCODE."""
        try:
            record = DNSRecord.parse(data)
        except DNSError:
            self.stats.dropped += 1
            return None
        if record.header.qr:
            self.stats.dropped += 1
            return None
        self.stats.queries += 1
        try:
            query = read_parsed(record)
        except FormErr as exc:
            log.debug("FORMERR to %s: %s", peer, exc)
            return self._error(record, FORMERR)
        if query is None:
            return self._error(record, NOTIMP)
        return self._answer(query, peer, tcp)

    def _answer(self, query: Query, peer: IPAddress, tcp: bool) -> bytes:
        if query.edns_version > 0:
            return self._pack(query, BADVERS, aa=False, tcp=tcp)
        qtype, config = query.qtype, self._config
        if query.qclass not in (CLASS_IN, TYPE_ANY) or not config.in_zone(query.name):
            return self._pack(query, REFUSED, aa=False, tcp=tcp)
        if qtype in _ZONE_TRANSFERS:
            return self._pack(query, REFUSED, aa=False, tcp=tcp)
        apex = query.name == config.zone
        # SOA and NS first: the apex may also be a service name (the default).
        if apex and qtype == TYPE_SOA:
            return self._pack(query, NOERROR, answers=(self._soa,), tcp=tcp)
        if apex and qtype == TYPE_NS and self._ns:
            return self._pack(query, NOERROR, answers=self._ns, tcp=tcp)
        if query.name in config.hostnames:
            return self._edges(query, peer, tcp)
        if apex and qtype == TYPE_ANY:
            return self._pack(query, NOERROR, answers=(self._soa,), tcp=tcp)
        if apex or query.name in config.empty_nonterminals:
            return self._pack(query, NOERROR, authority=(self._soa,), tcp=tcp)
        return self._pack(query, NXDOMAIN, authority=(self._soa,), tcp=tcp)

    def _edges(self, query: Query, peer: IPAddress, tcp: bool) -> bytes:
        qtype = query.qtype
        if qtype not in (TYPE_A, TYPE_AAAA, TYPE_ANY):
            return self._pack(query, NOERROR, authority=(self._soa,), tcp=tcp)
        view = self._view()
        subnet = query.subnet if query.subnet and query.subnet.source_prefix > 0 else None
        client = subnet.address if subnet else peer
        regions = self._config.regions
        found = view.nearest(regions.order(regions.region_of(self._locate(client)), view.regions))
        if not view.loaded or found is None:
            return self._pack(query, SERVFAIL, aa=False, tcp=tcp)
        answers = self._records(qtype, found[1])
        if not answers:
            return self._pack(query, NOERROR, authority=(self._soa,), tcp=tcp)
        scope = subnet.source_prefix if subnet else 0
        return self._pack(query, NOERROR, answers=answers, tcp=tcp, scope=scope)

    def _records(self, qtype: int, edges: tuple[Edge, ...]) -> list[bytes]:
        """Up to ``max_answers`` addresses of ``edges``, starting at a rotating offset so
        that successive queries spread clients over the region's edges."""
        start, count, limit = next(self._turn), len(edges), self._config.max_answers
        records: list[bytes] = []
        for index in range(count):
            edge = edges[(start + index) % count]
            if qtype != TYPE_AAAA:
                records.extend(QUESTION_POINTER + self._a_head + ip for ip in edge.packed4)
            if qtype != TYPE_A:
                records.extend(QUESTION_POINTER + self._aaaa_head + ip for ip in edge.packed6)
            if len(records) >= limit:
                break
        return records[:limit]

    # ------------------------------------------------------------------------------------------
    # Encoding

    def _pack(
        self,
        query: Query,
        rcode: int,
        *,
        answers: tuple[bytes, ...] | list[bytes] = (),
        authority: tuple[bytes, ...] | list[bytes] = (),
        aa: bool = True,
        tcp: bool,
        scope: int = 0,
    ) -> bytes:
        self._count(rcode)
        flags = query.flags | (AA if aa else 0) | (rcode & 0x0F)
        additional: tuple[bytes, ...] = ()
        if query.edns:
            options: tuple[tuple[int, bytes], ...] = ()
            if query.subnet is not None:
                options = ((ECS_OPTION_CODE, query.subnet.reply(scope)),)
            additional = (encode_opt(MAX_UDP_PAYLOAD, rcode >> 4, options),)
        wire = encode_message(query.qid, flags, query.question, answers, authority, additional)
        if len(wire) > (MAX_TCP_PAYLOAD if tcp else query.payload):
            # Too big for the client's buffer: an empty, truncated reply asks it to retry
            # over TCP (RFC 7766). Rare: answers are capped at max_answers addresses.
            self.stats.truncated += 1
            wire = encode_message(query.qid, flags | TC, query.question, (), (), additional)
        return wire

    def _error(self, record: DNSRecord, rcode: int) -> bytes:
        """A reply to a query we do not read further: its header and first question only."""
        header = record.header
        flags = QR | (header.opcode << 11) | (header.rd << 8) | rcode
        question = None
        if record.questions:
            first = record.questions[0]
            question = encode_question(tuple(first.qname.label), first.qtype, first.qclass)
        self._count(rcode)  # after the question: a name too long to echo drops the reply
        edns = any(rr.rtype == TYPE_OPT for rr in record.ar)
        additional = (encode_opt(MAX_UDP_PAYLOAD),) if edns else ()
        return encode_message(header.id, flags, question, (), (), additional)

    def _count(self, rcode: int) -> None:
        name = RCODE_NAMES.get(rcode, str(rcode))
        self.stats.rcodes[name] = self.stats.rcodes.get(name, 0) + 1
