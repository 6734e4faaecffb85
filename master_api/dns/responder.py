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

Dropped without a reply: anything that does not parse, and responses (QR=1; answering them
would let two servers bounce packets at each other).

The client's location is the EDNS Client Subnet when the resolver sent one with a non-zero
prefix (the reply echoes it with that scope), else the address the query came from.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    NS,
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)

from master_api.dns.config import DnsConfig, Labels
from master_api.dns.edges import Edge, EdgeView
from master_api.dns.geo import IPAddress, country_of
from master_api.dns.wire import ECS_OPTION_CODE, BadClientSubnet, ClientSubnet

__all__ = ["DnsStats", "Responder"]

log = logging.getLogger(__name__)

#: Largest UDP reply we send (the DNS flag day 2020 value; avoids IP fragmentation).
MAX_UDP_PAYLOAD = 1232
#: A UDP reply to a query without EDNS (RFC 1035).
CLASSIC_UDP_PAYLOAD = 512
MAX_TCP_PAYLOAD = 65535
BADVERS = 16
_ANY = 255
_ZONE_TRANSFERS = frozenset({251, 252})  # IXFR, AXFR
#: SOA timers other than the serial and the minimum: refresh, retry, expire (RFC 1912 values).
_SOA_TIMERS = (3600, 600, 604800)


@dataclass(slots=True)
class DnsStats:
    """Counters since start; updated from the server's one event-loop thread."""

    queries: int = 0
    """Messages that parsed as queries."""
    dropped: int = 0
    """Messages dropped: unparsable, responses, or replies that could not be encoded."""
    rcodes: dict[str, int] = field(default_factory=dict)
    """Replies by RCODE name (NOERROR, NXDOMAIN, REFUSED, ...)."""
    truncated: int = 0


@dataclass(frozen=True, slots=True)
class _Query:
    """What the answer depends on, read from a parsed message."""

    record: DNSRecord
    question: DNSQuestion
    name: Labels
    edns: bool
    edns_version: int
    payload: int
    subnet: ClientSubnet | None


class _FormErr(Exception):
    """The query is malformed in a way that deserves a FORMERR reply (not a drop)."""


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
        zone = DNSLabel(list(config.zone))
        mname = DNSLabel(list(config.nameservers[0])) if config.nameservers else zone
        self._zone = zone
        self._soa = RR(
            zone,
            QTYPE.SOA,
            ttl=config.ttl,
            rdata=SOA(
                mname,
                DNSLabel([b"hostmaster", *config.zone]),
                (config.serial, *_SOA_TIMERS, config.ttl),
            ),
        )
        self._ns = [
            RR(zone, QTYPE.NS, ttl=3600, rdata=NS(DNSLabel(list(name))))
            for name in config.nameservers
        ]

    # ------------------------------------------------------------------------------------------
    # DANGER ZONE: runs per packet, on input anyone on the internet can send.

    def respond(self, data: bytes, peer: IPAddress, tcp: bool = False) -> bytes | None:
        """The reply to the message ``data`` that came from ``peer`` (over TCP when ``tcp``),
        or None when it must be dropped. Never raises for any input."""
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
            reply = self._reply(record, peer, tcp)
        except DNSError as exc:  # an echoed name that dnslib parsed but cannot encode
            log.debug("dropped a query from %s: %s", peer, exc)
            self.stats.dropped += 1
            return None
        return reply

    def _reply(self, record: DNSRecord, peer: IPAddress, tcp: bool) -> bytes:
        try:
            query = _read_query(record)
        except _FormErr as exc:
            log.debug("FORMERR to %s: %s", peer, exc)
            return self._error(record, RCODE.FORMERR, edns=_has_opt(record))
        if query is None:
            return self._error(record, RCODE.NOTIMP, edns=_has_opt(record))
        if query.edns_version > 0:
            return self._pack(query, BADVERS, aa=False, tcp=tcp)
        qtype, qclass = query.question.qtype, query.question.qclass
        if qclass not in (CLASS.IN, _ANY) or not self._config.in_zone(query.name):
            return self._pack(query, RCODE.REFUSED, aa=False, tcp=tcp)
        if qtype in _ZONE_TRANSFERS:
            return self._pack(query, RCODE.REFUSED, aa=False, tcp=tcp)
        if query.name in self._config.hostnames:
            return self._edges(query, peer, tcp)
        if query.name == self._config.zone:
            if qtype in (QTYPE.SOA, _ANY):
                return self._pack(query, RCODE.NOERROR, answers=[self._soa], tcp=tcp)
            if qtype == QTYPE.NS and self._ns:
                return self._pack(query, RCODE.NOERROR, answers=self._ns, tcp=tcp)
            return self._pack(query, RCODE.NOERROR, authority=[self._soa], tcp=tcp)
        if query.name in self._config.empty_nonterminals:
            return self._pack(query, RCODE.NOERROR, authority=[self._soa], tcp=tcp)
        return self._pack(query, RCODE.NXDOMAIN, authority=[self._soa], tcp=tcp)

    def _edges(self, query: _Query, peer: IPAddress, tcp: bool) -> bytes:
        qtype = query.question.qtype
        if qtype not in (QTYPE.A, QTYPE.AAAA, _ANY):
            return self._pack(query, RCODE.NOERROR, authority=[self._soa], tcp=tcp)
        view = self._view()
        subnet = query.subnet if query.subnet and query.subnet.source_prefix > 0 else None
        client = subnet.address if subnet else peer
        region = self._config.regions.region_of(self._locate(client))
        found = view.nearest(self._config.regions.order(region, view.regions))
        if not view.loaded or found is None:
            return self._pack(query, RCODE.SERVFAIL, aa=False, tcp=tcp)
        answers = self._records(query, found[1])
        if not answers:
            return self._pack(query, RCODE.NOERROR, authority=[self._soa], tcp=tcp)
        scope = subnet.source_prefix if subnet else 0
        return self._pack(query, RCODE.NOERROR, answers=answers, tcp=tcp, scope=scope)

    def _records(self, query: _Query, edges: tuple[Edge, ...]) -> list[RR]:
        """Up to ``max_answers`` addresses of ``edges``, starting at a rotating offset so
        that successive queries spread clients over the region's edges."""
        qtype = query.question.qtype
        owner, ttl = query.question.qname, self._config.ttl
        start = next(self._turn)
        count = len(edges)
        records: list[RR] = []
        for index in range(count):
            edge = edges[(start + index) % count]
            if qtype in (QTYPE.A, _ANY):
                records.extend(RR(owner, QTYPE.A, ttl=ttl, rdata=A(ip)) for ip in edge.ipv4)
            if qtype in (QTYPE.AAAA, _ANY):
                records.extend(RR(owner, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)) for ip in edge.ipv6)
            if len(records) >= self._config.max_answers:
                break
        return records[: self._config.max_answers]

    # ------------------------------------------------------------------------------------------
    # Encoding

    def _pack(
        self,
        query: _Query,
        rcode: int,
        *,
        answers: list[RR] | None = None,
        authority: list[RR] | None = None,
        aa: bool = True,
        tcp: bool,
        scope: int = 0,
    ) -> bytes:
        request = query.record.header
        self._count(rcode)
        header = DNSHeader(
            id=request.id,
            qr=1,
            opcode=request.opcode,
            aa=int(aa),
            rd=request.rd,
            rcode=rcode & 0x0F,  # the high bits go in the OPT record (BADVERS)
        )
        additional: list[RR] = []
        if query.edns:
            options = []
            if query.subnet is not None:
                options.append(EDNSOption(ECS_OPTION_CODE, query.subnet.reply(scope)))
            additional.append(EDNS0(ext_rcode=rcode >> 4, udp_len=MAX_UDP_PAYLOAD, opts=options))
        reply = DNSRecord(
            header,
            questions=[query.question],
            rr=list(answers or ()),
            auth=list(authority or ()),
            ar=additional,
        )
        wire: bytes = reply.pack()
        limit = MAX_TCP_PAYLOAD if tcp else query.payload
        if len(wire) > limit:
            # Too big for the client's buffer: an empty, truncated reply asks it to retry
            # over TCP (RFC 7766). Rare here: answers are capped at max_answers addresses.
            self.stats.truncated += 1
            reply.header.tc = 1
            reply.rr, reply.auth = [], []
            wire = reply.pack()
        return wire

    def _error(self, record: DNSRecord, rcode: int, edns: bool) -> bytes:
        """A reply to a query we do not read further: its header and first question only."""
        self._count(rcode)
        header = DNSHeader(
            id=record.header.id,
            qr=1,
            opcode=record.header.opcode,
            rd=record.header.rd,
            rcode=rcode,
        )
        reply = DNSRecord(header, questions=record.questions[:1])
        if edns:
            reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD))
        wire: bytes = reply.pack()
        return wire

    def _count(self, rcode: int) -> None:
        name = "BADVERS" if rcode == BADVERS else str(RCODE.get(rcode, rcode))
        self.stats.rcodes[name] = self.stats.rcodes.get(name, 0) + 1


def _has_opt(record: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in record.ar)


def _read_query(record: DNSRecord) -> _Query | None:
    """The query's parts; None for an opcode we do not implement; :class:`_FormErr` for a
    malformed one."""
    if record.header.opcode != OPCODE.QUERY:
        return None
    if len(record.questions) != 1:
        raise _FormErr(f"{len(record.questions)} questions; exactly 1 expected")
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(opts) > 1:
        raise _FormErr(f"{len(opts)} OPT records; at most 1 allowed")
    question = record.questions[0]
    name = tuple(label.lower() for label in question.qname.label)
    if not opts:
        return _Query(record, question, name, False, 0, CLASSIC_UDP_PAYLOAD, None)
    opt = opts[0]
    version = (opt.ttl >> 16) & 0xFF
    payload = min(max(int(opt.rclass), CLASSIC_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
    subnet = None
    options = opt.rdata if isinstance(opt.rdata, list) else []
    for option in options:
        if getattr(option, "code", None) == ECS_OPTION_CODE:
            if subnet is not None:
                raise _FormErr("two client-subnet options")
            try:
                subnet = ClientSubnet.parse(bytes(option.data))
            except BadClientSubnet as exc:
                raise _FormErr(str(exc)) from None
    return _Query(record, question, name, True, version, payload, subnet)
