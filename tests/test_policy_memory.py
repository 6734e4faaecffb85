"""Bounded state under a flood (issue 4, "Memory cap"): 1,000,000 distinct source IPs driven
through the shield and CC guard directly (no sockets), with ``max_entries=100_000``.

* Entries never exceed the cap, checked all along.
* Memory is bounded. tracemalloc measures everything the flood leaves allocated up to the
  moment the tables are full (entries, key strings, the tables' dicts). From then on entries
  are only replaced one for one by entries of the same size, so the only thing that can
  still grow is the tables' dicts: under churn CPython resizes them once to a larger
  capacity, and then keeps that capacity. The test follows their exact size
  (``sys.getsizeof``) for the rest of the flood, asserts they stop growing once the cap has
  been churned through twice, and bounds the total (traced at cap + dict growth) by
  ``BYTES_PER_IP``. Measured on CPython 3.11: 58.9 MB at the cap, 70.8 MB steady (about
  710 B per IP for shield and CC together, IP strings included). A fully traced run of
  400,000 IPs gives the same 70.8 MB from the first dict resize on; it is not the test
  because tracemalloc makes each allocation several times slower.
* IPs blocked before the flood are still blocked when it ends, and free again after their
  blocks end.
"""

from __future__ import annotations

import gc
import socket
import sys
import tracemalloc

import pytest

from relay.config.model import CCConfig, ShieldConfig
from relay.policy import CCGuard, Shield

CAP = 100_000
FLOOD = 1_000_000
#: After this many flood IPs the tables' dicts have reached their steady capacity.
SETTLED = 2 * CAP
#: Bound on memory per tracked IP, shield and CC state together (710 B measured).
BYTES_PER_IP = 800

SHIELD_ATTACKER = "2001:db8::5"
CC_ATTACKER = "2001:db8::cc"


def flood_ip(i: int) -> str:
    # i -> a*i + b mod 2**32 with odd a is a bijection: distinct, scattered IPv4 addresses.
    # (The attackers are IPv6, so no flood address can be one of them.)
    n = (i * 2654435761 + 0x5BD1E995) & 0xFFFFFFFF
    return socket.inet_ntoa(n.to_bytes(4, "big"))


@pytest.mark.slow
def test_flood_of_a_million_ips_stays_bounded_and_keeps_blocks() -> None:
    shield = Shield(ShieldConfig("default", window=5.0, max_requests=10, block_duration=60.0), CAP)
    cc = CCGuard(
        CCConfig(
            "default", rate_limit=1000, burst_size=2000, block_duration=300.0, check_interval=1.0
        ),
        CAP,
    )
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    # Before the flood: one IP trips the shield, another floods CC while light clients pass.
    t = 1000.0
    for i in range(11):
        shield.check_request(SHIELD_ATTACKER, t + i * 0.01)
    assert not shield.check_request(SHIELD_ATTACKER, t + 0.2).allowed
    for i in range(5000):
        cc.check(CC_ATTACKER, t + i / 5000)
        if i % 250 == 0:
            assert cc.check(f"2001:db8:1::{i}", t + i / 5000).allowed
    assert not cc.check(CC_ATTACKER, t + 1.0).allowed
    shield_block_end, cc_block_end = t + 60.1, t + 301.0

    start = t + 1.5
    refused = 0
    at_cap = dicts_at_cap = dicts_settled = 0
    for i in range(FLOOD):
        ip = flood_ip(i)
        now = start + i * 1e-5  # 100,000 new IPs per second for 10 s
        refused += not shield.check_request(ip, now).allowed
        refused += not cc.check(ip, now).allowed
        if i % 10_000 == 0:
            assert shield.entries <= CAP and cc.entries <= CAP
            assert not shield.check_request(SHIELD_ATTACKER, now).allowed
            assert not cc.check(CC_ATTACKER, now).allowed
            if i > SETTLED:
                assert _dict_bytes(shield, cc) <= dicts_settled
        if i == CAP - 1:
            assert shield.entries == CAP and cc.entries == CAP
            gc.collect()
            at_cap = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            dicts_at_cap = _dict_bytes(shield, cc)
        elif i == SETTLED:
            dicts_settled = _dict_bytes(shield, cc)
    steady = at_cap + dicts_settled - dicts_at_cap
    print(
        f"\nshield + CC at a cap of {CAP}: {at_cap / 1e6:.1f} MB traced when full,"
        f" {steady / 1e6:.1f} MB steady under churn ({steady / CAP:.0f} B per IP)"
    )
    assert steady <= BYTES_PER_IP * CAP
    assert refused == 0  # one request per flood IP: nobody in the flood is blocked
    assert shield.entries == CAP and cc.entries == CAP
    assert shield.untracked == 0 and cc.untracked == 0

    # The blocks outlived a flood ten times the cap, and end on time.
    end = start + FLOOD * 1e-5
    assert not shield.check_request(SHIELD_ATTACKER, end).allowed
    assert not cc.check(CC_ATTACKER, end).allowed
    assert shield.check_request(SHIELD_ATTACKER, shield_block_end).allowed
    assert not cc.check(CC_ATTACKER, shield_block_end).allowed
    assert cc.check(CC_ATTACKER, cc_block_end).allowed


def _dict_bytes(shield: Shield, cc: CCGuard) -> int:
    """Bytes held by the tables' dicts: besides the entry count, all that could grow."""
    return sum(
        sys.getsizeof(table._live) + sys.getsizeof(table._held)
        for table in (shield._table, cc._table)
    )
