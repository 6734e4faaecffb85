"""The DNS server's parts without sockets or store: the responder fuzzed with hypothesis (it
must never raise, and every reply it sends must parse), the client-subnet option, the region
tables, the edge view's health rules, and the DNS settings' errors."""

from __future__ import annotations

import ipaddress
import time
from types import MappingProxyType
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from master_api.dns import DnsConfig, EdgeView, Responder, build_view
from master_api.dns.edges import Edge, edge_addresses
from master_api.dns.query import read_parsed, read_simple
from master_api.dns.regions import RegionMap
from master_api.dns.wire import BadClientSubnet, ClientSubnet
from master_api.models import Node
from master_api.settings import Settings, SettingsError
from tests.master.dns_helpers import addresses, make_query

PEER = ipaddress.ip_address("127.0.0.1")
SETTINGS = Settings(
    dns_zone="cdn.test", dns_hostnames=("api.cdn.test",), dns_nameservers=("ns1.cdn.test",)
)


def _view(**regions: tuple[Edge, ...]) -> EdgeView:
    return EdgeView(MappingProxyType(regions), MappingProxyType({}), time.time(), True)


VIEW = _view(
    hk=(Edge("hk-1", "hk", ("192.0.2.1",), ("2001:db8::1",)),),
    us=(Edge("us-1", "us", ("192.0.2.9",), ()),),
)


def _responder(config: DnsConfig | None = None, view: EdgeView = VIEW) -> Responder:
    return Responder(config or DnsConfig.from_settings(SETTINGS), lambda: view)


def _check(responder: Responder, data: bytes) -> None:
    """What must hold for any input: no exception; a reply, when there is one, parses, is a
    response, carries the query's id, and fits a UDP datagram of the classic or EDNS size."""
    reply = responder.respond(data, PEER)
    if reply is None:
        return
    parsed = DNSRecord.parse(reply)
    assert parsed.header.qr == 1
    assert reply[:2] == data[:2]
    assert len(reply) <= 1232


# -- fuzzing ---------------------------------------------------------------------------------

FUZZ = hypothesis_settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
VALID = make_query("api.cdn.test", "A", "203.80.96.0/24").pack()


@FUZZ
@given(st.binary(max_size=700))
@example(b"")
@example(b"\x00" * 12)
@example(bytes.fromhex("abcd01000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01")  # pointer loop
def test_random_bytes_never_crash_the_responder(data: bytes) -> None:
    _check(_responder(), data)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(VALID)),
)
def test_mutated_queries_never_crash_the_responder(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    _check(_responder(), bytes(data[:cut] if cut >= 12 else data))


_LABEL = st.binary(min_size=1, max_size=63)


@FUZZ
@given(
    labels=st.lists(_LABEL, min_size=0, max_size=6),
    qtype=st.sampled_from([1, 2, 5, 6, 15, 16, 28, 33, 251, 252, 255, 65535]),
    qclass=st.sampled_from([1, 3, 4, 254, 255, 9]),
    option=st.one_of(st.none(), st.binary(max_size=40)),
    flags=st.integers(0, 0xFFFF),
)
def test_structured_queries_get_a_reply_that_parses(
    labels: list[bytes], qtype: int, qclass: int, option: bytes | None, flags: int
) -> None:
    """Queries a well-behaved encoder builds, with any names, types, classes, header flags
    and ECS payloads: each gets a reply (never a drop) unless it is a response (QR=1)."""
    query = DNSRecord.question("x", "A")
    query.q.qname.label = tuple(labels)
    query.q.qtype, query.q.qclass = qtype, qclass
    query.header.bitmap = flags
    if option is not None:
        query.add_ar(EDNS0(opts=[EDNSOption(8, option)]))
    try:
        data = query.pack()
    except Exception:  # a name dnslib itself refuses to encode: not a packet anyone can send
        return
    responder = _responder()
    reply = responder.respond(data, PEER)
    if flags & 0x8000:
        assert reply is None
        return
    _check(responder, data)


def _agree(data: bytes) -> bool:
    """Where the fast reader accepts ``data``, dnslib's path reads the very same query.
    True when the fast reader accepted it."""
    fast = read_simple(data)
    if fast is None:
        return False
    assert read_parsed(DNSRecord.parse(data)) == fast
    return True


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=0, max_size=4
    ),
    st.integers(12, len(VALID)),
    st.binary(max_size=8),
)
def test_the_fast_reader_agrees_with_dnslib_on_mutated_queries(
    flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    _agree(bytes(data[:cut]) + tail)


@FUZZ
@given(
    labels=st.lists(_LABEL, min_size=0, max_size=5),
    qtype=st.integers(0, 0xFFFF),
    rd=st.booleans(),
    options=st.one_of(
        st.none(), st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=20)), max_size=3)
    ),
    payload=st.integers(0, 0xFFFF),
    version=st.integers(0, 3),
)
def test_the_fast_reader_agrees_with_dnslib_on_well_formed_queries(
    labels: list[bytes],
    qtype: int,
    rd: bool,
    options: list[tuple[int, bytes]] | None,
    payload: int,
    version: int,
) -> None:
    query = DNSRecord.question("x", "A")
    query.q.qname.label = tuple(labels)
    query.q.qtype = qtype
    query.header.rd = int(rd)
    if options is not None:
        opts = [EDNSOption(code, data) for code, data in options]
        query.add_ar(EDNS0(udp_len=payload, version=version, opts=opts))
    try:
        data = query.pack()
    except Exception:  # a name dnslib itself refuses to encode
        return
    accepted = _agree(data)
    ecs = [data for code, data in options or () if code == 8]
    ascii_name = all(label.isascii() for label in labels)
    if not ecs and ascii_name and sum(len(label) + 1 for label in labels) < 255:
        assert accepted  # the common shape really takes the fast path


def test_the_fast_reader_takes_the_common_queries() -> None:
    assert _agree(VALID)
    assert _agree(make_query("api.cdn.test", "AAAA", edns=False).pack())
    assert _agree(make_query("api.cdn.test", "A", "2001:4860:4860::/48").pack())
    assert read_simple(VALID[:-1]) is None  # truncated: dnslib decides (it drops it)


# -- replies ---------------------------------------------------------------------------------


def test_an_oversized_udp_reply_is_truncated_and_complete_over_tcp() -> None:
    zone = "cdn.test"
    long_name = ".".join(["x" * 60] * 3) + "." + zone  # a 192-byte name
    config = DnsConfig.from_settings(
        Settings(dns_zone=zone, dns_hostnames=(long_name,), dns_max_answers=16)
    )
    edges = tuple(Edge(f"e{i}", "us", (), (f"2001:db8::{i + 1}",)) for i in range(16))
    responder = _responder(config, _view(us=edges))
    query = make_query(long_name, "AAAA", edns=False)
    udp = DNSRecord.parse(responder.respond(query.pack(), PEER))
    assert udp.header.tc == 1 and not udp.rr
    tcp = DNSRecord.parse(responder.respond(query.pack(), PEER, tcp=True))
    assert tcp.header.tc == 0 and len(addresses(tcp)) == 16
    assert responder.stats.truncated == 1


def test_the_apex_as_the_service_name_still_answers_soa_and_ns() -> None:
    config = DnsConfig.from_settings(Settings(dns_zone="cdn.test", dns_nameservers=("ns.x",)))
    responder = _responder(config)

    def ask(qtype: str) -> DNSRecord:
        query = make_query("cdn.test", qtype, "8.8.8.0/24")
        return DNSRecord.parse(responder.respond(query.pack(), PEER))

    assert addresses(ask("A")) == {"192.0.2.9"}
    assert [rr.rtype for rr in ask("SOA").rr] == [QTYPE.SOA]
    assert [str(rr.rdata) for rr in ask("NS").rr] == ["ns.x."]
    assert ask("MX").header.rcode == 0 and not ask("MX").rr


def test_before_the_first_inventory_read_the_answer_is_servfail() -> None:
    responder = _responder(view=EdgeView())
    reply = DNSRecord.parse(responder.respond(make_query("api.cdn.test").pack(), PEER))
    assert reply.header.rcode == 2  # SERVFAIL: resolvers retry rather than cache it
    assert responder.stats.rcodes == {"SERVFAIL": 1}


def test_without_an_edge_of_the_family_asked_the_answer_is_nodata() -> None:
    responder = _responder(view=_view(us=(Edge("us-1", "us", ("192.0.2.9",), ()),)))
    reply = DNSRecord.parse(responder.respond(make_query("api.cdn.test", "AAAA").pack(), PEER))
    assert reply.header.rcode == 0 and not reply.rr and reply.auth[0].rtype == QTYPE.SOA


# -- client subnet ---------------------------------------------------------------------------


@given(
    st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
            lambda t: ipaddress.ip_network((t[0], t[1]), strict=False)
        ),
        st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
            lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)
        ),
    )
)
def test_a_client_subnet_survives_the_wire(network: Any) -> None:
    subnet = ClientSubnet(network.network_address, network.prefixlen)
    assert ClientSubnet.parse(subnet.reply(0)) == subnet


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x01\x18", "at least 4"),
        (b"\x00\x03\x18\x00\x01\x02\x03", "family 3"),
        (b"\x00\x01\x21\x00" + bytes(5), "longer than /32"),
        (b"\x00\x01\x18\x08\xcb\x50\x60", "scope prefix /8"),
        (b"\x00\x01\x18\x00\xcb\x50", "2 bytes for /24"),
        (b"\x00\x01\x17\x00\xcb\x50\x61", "bits set past its /23"),
    ],
)
def test_a_malformed_client_subnet_is_refused_saying_why(payload: bytes, message: str) -> None:
    with pytest.raises(BadClientSubnet, match=message):
        ClientSubnet.parse(payload)


# -- regions ---------------------------------------------------------------------------------


def test_region_tables_and_their_overrides() -> None:
    regions = RegionMap.build()
    assert [regions.region_of(c) for c in ("HK", "JP", "CN", "SG", "AU", "US", "DE")] == [
        "hk",
        "hk",
        "cn",
        "sg",
        "sg",
        "us",
        "us",
    ]
    assert regions.region_of(None) == "us" and regions.region_of("AQ") == "us"
    assert regions.order("hk", ("eu", "hk", "us")) == ("hk", "sg", "cn", "us", "eu")
    custom = RegionMap.build((("eu", ("DE", "FR")),), (("eu", ("us",)),), default_region="hk")
    assert custom.region_of("DE") == "eu" and custom.region_of("GB") == "us"
    assert custom.region_of(None) == "hk"
    assert custom.order("eu", ("hk", "sg", "us")) == ("eu", "us", "hk", "sg")


# -- the edge view ---------------------------------------------------------------------------


def _node(name: str, **changes: Any) -> Node:
    values: dict[str, Any] = {
        "id": name,
        "name": name,
        "type": "edge",
        "region": "hk",
        "addr": "192.0.2.1",
        "port": 443,
        "tags": (),
        "metadata": {},
        "status": "online",
        "token_hash": "",
        "created_at": 0.0,
        "updated_at": 0.0,
        "last_seen": 1000.0,
    }
    values.update(changes)
    return Node(**values)


def test_the_view_keeps_only_answerable_edges() -> None:
    nodes = [
        _node("ok"),
        _node("beat-2s-ago", last_seen=998.0),
        _node("too-quiet", last_seen=997.9),
        _node("never-beat", last_seen=None),
        _node("draining", status="draining"),
        _node("offline", status="offline"),
        _node("standby", status="standby"),
        _node("core", type="core"),
        _node("named", addr="edge.example"),
        _node("slow", status="degraded", region="sg"),
    ]
    view = build_view(nodes, now=1000.0, max_silence=2.0)
    assert [e.name for e in view.online["hk"]] == ["beat-2s-ago", "ok"]
    assert [e.name for e in view.degraded["sg"]] == ["slow"]
    assert view.regions == ("hk", "sg")
    assert view.nearest(("sg", "hk"))[0] == "hk"  # type: ignore[index]  # online first
    assert view.nearest(("cn",)) is None


def test_public_ips_take_precedence_over_addr() -> None:
    assert edge_addresses(_node("a", addr="[2001:db8::5]")) == ((), ("2001:db8::5",))
    meta = {"public_ips": ["192.0.2.7", "2001:DB8::7", "not-an-ip", "192.0.2.7"]}
    assert edge_addresses(_node("b", addr="b.example", metadata=meta)) == (
        ("192.0.2.7",),
        ("2001:db8::7",),
    )
    assert edge_addresses(_node("c", metadata={"public_ips": "192.0.2.8"})) == (
        ("192.0.2.8",),
        (),
    )


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AICDN_DNS_TTL": "-1"}, "AICDN_DNS_TTL: -1 is out of range"),
        ({"AICDN_DNS_ZONE": "bad..zone"}, "AICDN_DNS_ZONE: bad DNS name"),
        ({"AICDN_DNS_REGIONS": "hk=HKG"}, "AICDN_DNS_REGIONS: bad country code 'HKG'"),
        ({"AICDN_DNS_REGIONS": "hk"}, "AICDN_DNS_REGIONS: bad entry 'hk'"),
        ({"AICDN_DNS_REGION_FALLBACK": "hk=S G"}, "AICDN_DNS_REGION_FALLBACK: bad region"),
        ({"AICDN_DNS_ADDR": "1.2.3.4"}, "AICDN_DNS_ADDR: bad address"),
        ({"AICDN_DNS_MAX_ANSWERS": "0"}, "AICDN_DNS_MAX_ANSWERS: 0 is out of range"),
    ],
)
def test_bad_dns_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)


def test_dns_settings_from_env_and_toml(tmp_path: Any) -> None:
    loaded = Settings.load(
        {
            "AICDN_DNS_ZONE": "CDN.Example.",
            "AICDN_DNS_HOSTNAMES": "api.cdn.example, chat.cdn.example",
            "AICDN_DNS_REGIONS": "hk=jp,kr; sg=in",
        }
    )
    assert loaded.dns_zone == "cdn.example"
    assert loaded.dns_hostnames == ("api.cdn.example", "chat.cdn.example")
    assert loaded.dns_regions == (("hk", ("JP", "KR")), ("sg", ("IN",)))
    path = tmp_path / "master.toml"
    path.write_text('dns_region_fallback = {hk = ["us"], sg = ["hk", "us"]}\ndns_ttl = 10\n')
    from_file = Settings.load({}, config_file=str(path))
    assert from_file.dns_region_fallback == (("hk", ("us",)), ("sg", ("hk", "us")))
    assert from_file.dns_ttl == 10
    with pytest.raises(SettingsError, match="not inside AICDN_DNS_ZONE"):
        DnsConfig.from_settings(Settings(dns_zone="cdn.test", dns_hostnames=("cdn.other",)))
