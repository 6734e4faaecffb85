"""IP/CIDR matching (relay.policy.ipmatch) and admission (relay.policy.admission)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from relay.config.model import AdmissionConfig
from relay.policy import Admission, IPMatcher, normalize_ip, parse_ip

ENTRIES = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3",
    "192.168.1.77/24",  # host bits set: the network is 192.168.1.0/24
    "2001:db8::/32",
    "2001:db8:1::/48",
    "::ffff:172.16.0.0/108",  # IPv4-mapped form of 172.16.0.0/12
    "fe80::1",
]


@pytest.fixture(scope="module")
def matcher() -> IPMatcher:
    return IPMatcher(ENTRIES)


@pytest.mark.parametrize(
    ("ip", "entry"),
    [
        ("10.9.9.9", "10.0.0.0/8"),
        ("10.1.9.9", "10.1.0.0/16"),
        ("10.1.2.3", "10.1.2.3"),
        ("10.1.2.4", "10.1.0.0/16"),
        ("192.168.1.1", "192.168.1.77/24"),
        ("192.168.2.1", None),
        ("11.0.0.0", None),
        ("9.255.255.255", None),
        ("2001:db8:ffff::1", "2001:db8::/32"),
        ("2001:db8:1:2::3", "2001:db8:1::/48"),
        ("2001:db9::1", None),
        ("172.16.5.5", "::ffff:172.16.0.0/108"),
        ("172.32.0.1", None),
        ("fe80::1", "fe80::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("FE80:0:0::1", "fe80::1"),
        # IPv4-mapped IPv6 (a dual-stack listener's view of an IPv4 client) is IPv4.
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::ffff:10.2.0.1", "10.0.0.0/8"),
        ("::ffff:a01:203", "10.1.2.3"),
        # IPv4-compatible and NAT64 addresses are not IPv4-mapped.
        ("::10.1.2.3", None),
        ("64:ff9b::10.1.2.3", None),
    ],
)
def test_most_specific_entry_wins(matcher: IPMatcher, ip: str, entry: str | None) -> None:
    assert matcher.match_cidr(ip) == entry
    assert (ip in matcher) is (entry is not None)
    assert (ip in matcher) is (entry is not None)  # second time from the cache


@pytest.mark.parametrize(
    "junk",
    ["", "x", "10.0.0", "10.0.0.256", "010.1.2.3", "10.1.2.3 ", "1.2.3.4\x00", "\u0661.2.3.4"],
)
def test_non_addresses_match_nothing(matcher: IPMatcher, junk: str) -> None:
    assert junk not in matcher
    assert matcher.match_cidr(junk) is None
    assert parse_ip(junk) is None
    assert normalize_ip(junk) is None


def test_non_strings_match_nothing(matcher: IPMatcher) -> None:
    assert None not in matcher
    assert 167772161 not in matcher


def test_empty_matcher() -> None:
    empty = IPMatcher([])
    assert not empty
    assert len(empty) == 0
    assert "10.0.0.1" not in empty
    assert empty.match_cidr("10.0.0.1") is None


def test_catch_all_networks() -> None:
    everything = IPMatcher(["0.0.0.0/0", "::/0"])
    for ip in ("1.2.3.4", "255.255.255.255", "::1", "2001:db8::1", "::ffff:1.2.3.4"):
        assert ip in everything
    assert IPMatcher(["0.0.0.0/0"]).match_cidr("::1") is None


def test_duplicates_later_entry_is_reported() -> None:
    assert IPMatcher(["10.0.0.1", "10.0.0.1/32"]).match_cidr("10.0.0.1") == "10.0.0.1/32"
    assert IPMatcher(["10.0.0.0/8", "10.9.9.9/8"]).match_cidr("10.1.1.1") == "10.9.9.9/8"


def test_bad_entries_raise() -> None:
    with pytest.raises(ValueError):
        IPMatcher(["10.0.0.0/33"])
    with pytest.raises(ValueError):
        IPMatcher(["example.com"])


def test_cache_is_bounded() -> None:
    m = IPMatcher(["10.0.0.0/8"])
    for i in range(3 * IPMatcher.CACHE_SIZE):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        assert ip in m
        assert len(m._cache) <= IPMatcher.CACHE_SIZE


def test_agrees_with_ipaddress_on_random_addresses() -> None:
    rng = random.Random(7)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        ipaddress.IPv4Network((rng.getrandbits(32), rng.randrange(8, 33)), strict=False)
        for _ in range(40)
    ]
    nets += [
        ipaddress.IPv6Network((rng.getrandbits(128), rng.randrange(16, 129)), strict=False)
        for _ in range(40)
    ]
    m = IPMatcher(str(n) for n in nets)
    for _ in range(4000):
        if rng.random() < 0.5:
            # Near a network: same prefix, random host part, so hits are frequent.
            net = rng.choice(nets)
            address = net.network_address + rng.randrange(min(net.num_addresses * 2, 1 << 40))
        else:
            v4 = rng.random() < 0.5
            address = (ipaddress.IPv4Address if v4 else ipaddress.IPv6Address)(
                rng.getrandbits(32 if v4 else 128)
            )
        expected = [n for n in nets if n.version == address.version and address in n]
        best = max(expected, key=lambda n: n.prefixlen, default=None)
        got = m.match_cidr(str(address))
        assert (got is None) is (best is None), address
        if best is not None and got is not None:
            assert ipaddress.ip_network(got).prefixlen == best.prefixlen


def test_parse_and_normalize() -> None:
    assert parse_ip("1.2.3.4") == (4, 0x01020304)
    assert parse_ip("::ffff:1.2.3.4") == (4, 0x01020304)
    assert parse_ip("::1") == (6, 1)
    assert normalize_ip("::ffff:1.2.3.4") == "1.2.3.4"
    assert normalize_ip("2001:DB8:0:0::1") == "2001:db8::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"


def test_admission_denylist_mode() -> None:
    deny = Admission(AdmissionConfig("deny", whitelist=False, matchers=("10.0.0.0/8", "::1")))
    assert not deny.allows("10.2.3.4")
    assert not deny.allows("::ffff:10.2.3.4")
    assert not deny.allows("::1")
    assert deny.allows("11.0.0.1")
    assert deny.allows("not-an-ip")  # matches nothing, so it is not denied


def test_admission_whitelist_mode() -> None:
    allow = Admission(AdmissionConfig("allow", whitelist=True, matchers=("10.0.0.0/8",)))
    assert allow.allows("10.2.3.4")
    assert not allow.allows("11.0.0.1")
    assert not allow.allows("not-an-ip")  # matches nothing, so it is not allowed
    nobody = Admission(AdmissionConfig("nobody", whitelist=True, matchers=()))
    assert not nobody.allows("10.2.3.4")
    everybody = Admission(AdmissionConfig("everybody", whitelist=False, matchers=()))
    assert everybody.allows("10.2.3.4")


def test_ipv6_networks_do_not_contain_ipv4_clients() -> None:
    # As in the ipaddress module: ::/0 is "every IPv6 client", even though a dual-stack
    # listener reports IPv4 clients inside ::ffff:0:0/96.
    all_v6 = IPMatcher(["::/0"])
    assert "2001:db8::1" in all_v6
    assert "1.2.3.4" not in all_v6
    assert "::ffff:1.2.3.4" not in all_v6
    assert IPMatcher(["::ffff:0:0/96"]).match_cidr("1.2.3.4") == "::ffff:0:0/96"
