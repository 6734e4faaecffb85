"""``aicdn-master dns`` end to end: edges registered and heartbeating through the real REST
API on the real store, the DNS server on real UDP/TCP loopback sockets, queries carrying client
subnets of different countries (the country table is the real offline one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from master_api.dns import DnsConfig, EdgeWatcher
from master_api.dns.geo import country_of
from master_api.dns.wire import ClientSubnet
from master_api.extensions import repos
from master_api.models import Node, NodeMetrics
from master_api.repos import Repos
from master_api.services.monitor import Monitor
from master_api.settings import Settings
from master_api.store import EmbeddedMongo, Store
from relay.config import Address
from tests.master.conftest import TEST_DB, Caller, base_settings, register
from tests.master.dns_helpers import (
    RunningDns,
    addresses,
    ask,
    make_query,
    running_dns,
    subnet_option,
)
from tests.master.helpers import free_low_port, http, wait_until

NAME = "api.cdn.test"
# Client networks whose country the registries' table has long given (checked below, so a
# data change shows up as such and not as a DNS bug).
HK, US, SG, JP, CN, NL, AU = (
    "203.80.96.0/24",
    "8.8.8.0/24",
    "165.21.83.0/24",
    "202.12.27.0/24",
    "223.5.5.0/24",
    "193.0.14.0/24",
    "1.1.1.0/24",
)
US6 = "2001:4860:4860::/48"


@pytest.fixture
def settings(mongo_uri: str) -> Settings:
    # Heartbeats every 5 s: edges beaten at the start of a test stay fresh for its length.
    return base_settings(
        mongo_uri,
        heartbeat_interval=5.0,
        dns_addr=Address("127.0.0.1", 0),
        dns_zone="cdn.test",
        dns_hostnames=(NAME, "chat.api.cdn.test"),
        dns_nameservers=("ns1.cdn.test", "ns2.cdn.test"),
        dns_refresh=0.1,
        dns_ttl=20,
    )


def _beat(client: FlaskClient, node: dict[str, Any]) -> None:
    answer = client.post(
        f"/api/v1/nodes/{node['id']}/heartbeat",
        json={"metrics": {"connections": 1}},
        headers={"Authorization": f"Bearer {node['token']}"},
    )
    assert answer.status_code == 200, answer.json


def _set_status(operator: Caller, node: dict[str, Any], status: str) -> None:
    answer = operator.call("PATCH", f"/api/v1/nodes/{node['id']}", json={"status": status})
    assert answer.status_code == 200, answer.json


@pytest.fixture
def fleet(operator: Caller, client: FlaskClient) -> dict[str, dict[str, Any]]:
    """Edges in hk, sg and us (heartbeating), a core, and edges that must never be answered."""
    nodes = {
        "hk-1": register(operator, "hk-1", "edge", "hk", addr="192.0.2.11"),
        "hk-2": register(
            operator,
            "hk-2",
            "edge",
            "hk",
            addr="hk-2.example",
            metadata={"public_ips": ["192.0.2.12", "2001:db8::12"]},
        ),
        "sg-1": register(operator, "sg-1", "edge", "sg", addr="192.0.2.21"),
        "us-1": register(operator, "us-1", "edge", "us", addr="192.0.2.31"),
        "us-2": register(operator, "us-2", "edge", "us", addr="2001:db8::32"),
        "core-1": register(operator, "core-1", "core", "cn", addr="192.0.2.99"),
        "named": register(operator, "named", "edge", "hk", addr="named.example"),
        "silent": register(operator, "silent", "edge", "hk", addr="192.0.2.13"),
    }
    for name, node in nodes.items():
        if name != "silent":  # registered, but its agent never reported: not answered
            _beat(client, node)
    return nodes


@pytest.fixture
def dns(app: Flask, settings: Settings) -> Iterator[RunningDns]:
    with running_dns(repos(app), DnsConfig.from_settings(settings)) as server:
        yield server


def _a(port: int, subnet: str | None, qtype: str = "A", name: str = NAME) -> set[str]:
    reply = ask(port, make_query(name, qtype, subnet))
    assert reply.header.rcode == 0 and reply.header.aa == 1, reply
    return addresses(reply)


def test_the_client_networks_have_the_expected_countries() -> None:
    expected = {HK: "HK", US: "US", SG: "SG", JP: "JP", CN: "CN", NL: "NL", AU: "AU", US6: "US"}
    for subnet, country in expected.items():
        network = ClientSubnet.parse(_ecs(subnet))
        assert country_of(network.address) == country, subnet


def _ecs(subnet: str) -> bytes:
    import ipaddress

    network = ipaddress.ip_network(subnet)
    return ClientSubnet(network.network_address, network.prefixlen).reply(0)


def test_clients_get_the_edges_of_their_region(
    fleet: dict[str, dict[str, Any]], dns: RunningDns
) -> None:
    hk = {"192.0.2.11", "192.0.2.12"}
    assert _a(dns.port, HK) == hk
    assert _a(dns.port, JP) == hk  # a neighbouring country: the nearest region
    assert _a(dns.port, CN) == hk  # cn has no edge (its node is a core): hk is next
    assert _a(dns.port, SG) == {"192.0.2.21"}
    assert _a(dns.port, AU) == {"192.0.2.21"}
    assert _a(dns.port, US) == {"192.0.2.31"}
    assert _a(dns.port, NL) == {"192.0.2.31"}
    assert _a(dns.port, US6, "AAAA") == {"2001:db8::32"}
    assert _a(dns.port, HK, "AAAA") == {"2001:db8::12"}
    assert _a(dns.port, HK, "ANY") == {"192.0.2.11", "192.0.2.12", "2001:db8::12"}
    assert _a(dns.port, HK, name="CHAT.Api.cdn.test") == hk  # names are case-insensitive
    # no subnet: the resolver's own address (loopback: no country) -> the default region, us
    assert _a(dns.port, None) == {"192.0.2.31"}
    # every answer: short TTL, the name as asked, never the core, the silent or the named edge
    reply = ask(dns.port, make_query(NAME, "A", HK))
    assert {rr.ttl for rr in reply.rr} == {20}
    assert {str(rr.rname) for rr in reply.rr} == {NAME + "."}


def test_the_reply_echoes_the_client_subnet_with_its_scope(
    fleet: dict[str, dict[str, Any]], dns: RunningDns
) -> None:
    reply = ask(dns.port, make_query(NAME, "A", HK))
    option = subnet_option(reply)
    assert option is not None
    assert option[:4] == bytes((0, 1, 24, 24))  # IPv4, source /24, scope /24
    assert option[4:] == bytes((203, 80, 96))
    plain = ask(dns.port, make_query(NAME, "A"))
    assert subnet_option(plain) is None


def test_an_edge_that_stops_heartbeating_leaves_the_answers(
    app: Flask,
    client: FlaskClient,
    operator: Caller,
    settings: Settings,
    record_property: Any,
) -> None:
    quick = settings.with_overrides(heartbeat_interval=0.5)  # silent for 2 beats: 1 s
    stays = register(operator, "hk-stays", "edge", "hk", addr="192.0.2.41")
    stops = register(operator, "hk-stops", "edge", "hk", addr="192.0.2.42")
    _beat(client, stays)
    _beat(client, stops)
    with running_dns(repos(app), DnsConfig.from_settings(quick)) as dns:
        wait_until(lambda: _a(dns.port, HK) == {"192.0.2.41", "192.0.2.42"}, 10)
        last_beat = time.monotonic()
        gone_after: float | None = None
        while time.monotonic() - last_beat < 15:
            _beat(client, stays)  # the other edge keeps beating and stays answered
            answer = _a(dns.port, HK)
            assert "192.0.2.41" in answer
            if answer == {"192.0.2.41"}:
                gone_after = time.monotonic() - last_beat
                break
            time.sleep(0.05)
        assert gone_after is not None, "the silent edge was still answered after 15 s"
        # two missed beats (1 s) plus a refresh (0.1 s); generous slack for a loaded machine
        assert gone_after < 2 * quick.heartbeat_interval + 4.0, gone_after
        record_property("silent_edge_gone_after_s", round(gone_after, 2))
        # the leader's monitor then marks it offline; a heartbeat brings it back
        with app.app_context():
            monitor = Monitor(repos(app), settings)
        # judged as if offline_after - 0.5 s had passed: the edge silent for over 1 s is
        # stale then, the one that beat just now is not
        _beat(client, stays)
        report = monitor.run_once(time.time() + settings.offline_after - 0.5)
        assert report.went_offline == (stops["id"],)
        _beat(client, stops)
        _beat(client, stays)
        wait_until(lambda: _a(dns.port, HK) == {"192.0.2.41", "192.0.2.42"}, 10)


def test_draining_offline_and_standby_edges_are_never_answered(
    fleet: dict[str, dict[str, Any]], dns: RunningDns, operator: Caller
) -> None:
    _set_status(operator, fleet["hk-1"], "draining")
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.12"}, 10)
    _set_status(operator, fleet["hk-2"], "offline")
    # nothing healthy left in hk: the next nearest region (sg) answers hk clients
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.21"}, 10)
    _set_status(operator, fleet["sg-1"], "standby")
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.31"}, 10)  # then cn (none), then us
    _set_status(operator, fleet["hk-1"], "online")
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.11"}, 10)


def test_degraded_edges_are_a_last_resort(
    fleet: dict[str, dict[str, Any]], dns: RunningDns, operator: Caller
) -> None:
    _set_status(operator, fleet["hk-1"], "degraded")
    _set_status(operator, fleet["hk-2"], "degraded")
    # an online edge in another region beats a degraded one nearby
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.21"}, 10)
    for name in ("sg-1", "us-1", "us-2"):
        _set_status(operator, fleet[name], "draining")
    # no online edge anywhere: the nearest degraded ones rather than no address
    wait_until(lambda: _a(dns.port, HK) == {"192.0.2.11", "192.0.2.12"}, 10)
    for name in ("hk-1", "hk-2"):
        _set_status(operator, fleet[name], "draining")
    # nothing answerable: SERVFAIL (resolvers retry), not an empty answer they would cache
    wait_until(lambda: ask(dns.port, make_query(NAME, "A", HK)).header.rcode == 2, 10)


def test_answers_rotate_over_a_regions_edges(
    app: Flask, client: FlaskClient, operator: Caller, settings: Settings
) -> None:
    names = [f"us-{i}" for i in range(6)]
    for i, name in enumerate(names):
        _beat(client, register(operator, name, "edge", "us", addr=f"192.0.2.{100 + i}"))
    config = DnsConfig.from_settings(settings.with_overrides(dns_max_answers=2))
    with running_dns(repos(app), config) as dns:
        seen: set[str] = set()
        for _ in range(12):
            answer = _a(dns.port, US)
            assert len(answer) == 2
            seen |= answer
        assert seen == {f"192.0.2.{100 + i}" for i in range(6)}


def test_an_authoritative_server_for_its_zone_only(
    fleet: dict[str, dict[str, Any]], dns: RunningDns
) -> None:
    nx = ask(dns.port, make_query("nope.cdn.test", "A"))
    assert nx.header.rcode == 3 and nx.header.aa == 1 and not nx.rr
    assert [rr.rtype for rr in nx.auth] == [6]  # the SOA, for negative caching
    assert nx.auth[0].rdata.times[-1] == 20  # negative TTL = dns_ttl
    refused = ask(dns.port, make_query("example.com", "A"))
    assert refused.header.rcode == 5 and refused.header.aa == 0 and not refused.rr
    soa = ask(dns.port, make_query("cdn.test", "SOA"))
    assert soa.header.rcode == 0 and str(soa.rr[0].rdata.mname) == "ns1.cdn.test."
    ns = ask(dns.port, make_query("cdn.test", "NS"))
    assert {str(rr.rdata) for rr in ns.rr} == {"ns1.cdn.test.", "ns2.cdn.test."}
    nodata = ask(dns.port, make_query(NAME, "MX"))
    assert nodata.header.rcode == 0 and not nodata.rr and nodata.auth[0].rtype == 6
    # api.cdn.test exists (and chat.api.cdn.test under it); a name that only has children
    # (none here) and the apex's A (not a service name) are NODATA, not NXDOMAIN
    apex = ask(dns.port, make_query("cdn.test", "A"))
    assert apex.header.rcode == 0 and not apex.rr
    axfr = ask(dns.port, make_query("cdn.test", "AXFR"), tcp=True)
    assert axfr.header.rcode == 5
    # over TCP, the same answers
    assert addresses(ask(dns.port, make_query(NAME, "A", HK), tcp=True)) == {
        "192.0.2.11",
        "192.0.2.12",
    }
    # without EDNS: a classic reply without OPT
    classic = ask(dns.port, make_query(NAME, "A", edns=False))
    assert classic.header.rcode == 0 and not classic.ar


def test_protocol_errors_get_their_rcodes(
    fleet: dict[str, dict[str, Any]], dns: RunningDns
) -> None:
    from dnslib import EDNS0, EDNSOption

    bad_ecs = make_query(NAME, "A", edns=False)
    bad_ecs.add_ar(EDNS0(opts=[EDNSOption(8, bytes((0, 1, 33, 0)) + bytes(5))]))  # /33 in v4
    assert ask(dns.port, bad_ecs).header.rcode == 1  # FORMERR
    scoped = make_query(NAME, "A", edns=False)
    scoped.add_ar(EDNS0(opts=[EDNSOption(8, bytes((0, 1, 24, 8, 203, 80, 96)))]))
    assert ask(dns.port, scoped).header.rcode == 1  # a scope in a query
    version = make_query(NAME, "A", edns=False)
    version.add_ar(EDNS0(version=1))
    badvers = ask(dns.port, version)
    opt = [rr for rr in badvers.ar if rr.rtype == 41]
    assert badvers.header.rcode == 0 and len(opt) == 1 and opt[0].ttl >> 24 == 1  # BADVERS 16
    notify = make_query(NAME, "SOA", edns=False)
    notify.header.opcode = 4
    assert ask(dns.port, notify).header.rcode == 4  # NOTIMP
    two = make_query(NAME, "A", edns=False)
    two.add_question(make_query("x.cdn.test").q)
    assert ask(dns.port, two).header.rcode == 1  # FORMERR


def test_malformed_packets_are_dropped_and_the_server_keeps_answering(
    fleet: dict[str, dict[str, Any]], dns: RunningDns
) -> None:
    import random

    rng = random.Random(12)
    valid = make_query(NAME, "A", HK).pack()
    junk = [b"", b"\x00", bytes(11), b"\xff" * 12, bytes(512), valid[:20], valid + b"\x00\x01"]
    junk += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))) for _ in range(300)]
    for _ in range(300):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        junk.append(bytes(mutated))
    response = bytearray(valid)
    response[2] |= 0x80  # QR=1: a response, never answered
    junk.append(bytes(response))
    before = dns.responder.stats.dropped
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in junk:
            sock.sendto(packet, ("127.0.0.1", dns.port))
    # garbage on TCP: the connection is closed, nothing else happens
    with socket.create_connection(("127.0.0.1", dns.port), timeout=5) as stream:
        stream.sendall(b"\x00\x05hello")
        stream.settimeout(5)
        assert stream.recv(100) == b""
    wait_until(lambda: dns.responder.stats.dropped > before, 10)
    # let the server work through its backlog (the kernel may have dropped some of it)
    seen = [-1]

    def settled() -> bool:
        now = dns.responder.stats.dropped + dns.responder.stats.queries
        done, seen[0] = now == seen[0], now
        return done

    wait_until(settled, 30, interval=0.5)
    assert _a(dns.port, HK) == {"192.0.2.11", "192.0.2.12"}
    assert addresses(ask(dns.port, make_query(NAME, "A", HK), tcp=True)) == {
        "192.0.2.11",
        "192.0.2.12",
    }


def test_the_dns_command_answers_and_stops_on_sigterm(
    fleet: dict[str, dict[str, Any]], settings: Settings
) -> None:
    port, metrics_port = free_low_port(), free_low_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICDN_")}
    assert settings.mongo_uri is not None
    env.update(
        AICDN_MONGO_URI=settings.mongo_uri,
        AICDN_MONGO_DB=TEST_DB,
        AICDN_HEARTBEAT_INTERVAL="60s",
        AICDN_DNS_ADDR=f"127.0.0.1:{port}",
        AICDN_DNS_ZONE="cdn.test",
        AICDN_DNS_HOSTNAMES=NAME,
        AICDN_DNS_TTL="15",
        AICDN_DNS_REGIONS="sg=JP",  # moves Japan from hk to sg
        AICDN_DNS_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "master_api", "dns"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def answered() -> bool:
            try:
                return _a(port, JP) == {"192.0.2.21"}
            except OSError:
                return False

        wait_until(answered, 30, interval=0.2)
        assert {rr.ttl for rr in ask(port, make_query(NAME, "A", HK)).rr} == {15}
        ask(port, make_query("nope.cdn.test"))
        scraped = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status == 200
        text = scraped.body.decode()
        assert 'aicdn_dns_replies_total{rcode="NXDOMAIN"} 1.0' in text
        assert 'aicdn_dns_edges{region="hk",tier="online"} 2.0' in text
        assert "aicdn_dns_view_age_seconds " in text
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "zone cdn.test on 127.0.0.1" in output and "stopped" in output


def test_a_host_name_outside_the_zone_stops_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICDN_")}
    env.update(AICDN_DNS_ZONE="cdn.test", AICDN_DNS_HOSTNAMES="api.other.test")
    done = subprocess.run(
        [sys.executable, "-m", "master_api", "dns"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "AICDN_DNS_HOSTNAMES: 'api.other.test' is not inside AICDN_DNS_ZONE" in done.stderr


def test_the_last_view_keeps_answering_while_the_store_is_down(tmp_path: Path) -> None:
    store = EmbeddedMongo(tmp_path / "mongo", free_low_port())
    store.start()
    try:
        repos_ = Repos(Store(store.uri, TEST_DB, 0.3).db)
        now = time.time()
        node = Node("e1", "e1", "edge", "hk", "192.0.2.5", 443, (), {}, "online", "", now, now)
        repos_.nodes.create(node)
        repos_.nodes.record_heartbeat("e1", now, NodeMetrics(), None)
        watcher = EdgeWatcher(repos_, interval=60, max_silence=3600)
        assert watcher.refresh()
        before = watcher.view
        assert [edge.name for edge in before.online["hk"]] == ["e1"]
        store.stop()
        assert not watcher.refresh()  # StoreUnavailable: logged, not raised
        assert watcher.view is before
        store.start()
        wait_until(watcher.refresh, 30, interval=0.5)
        assert [edge.name for edge in watcher.view.online["hk"]] == ["e1"]
    finally:
        store.stop()
