"""climiter / rlimiter scoping with gost semantics (relay.policy.limiter)."""

from __future__ import annotations

import pytest

from relay.config.model import LimiterConfig
from relay.policy import ConnLimiter, LimitPlan, RateLimiter


def conns(*limits: str, max_entries: int = 100_000) -> ConnLimiter:
    return ConnLimiter(LimiterConfig("c", limits), max_entries)


def rates(*limits: str, max_entries: int = 100_000) -> RateLimiter:
    return RateLimiter(LimiterConfig("r", limits), max_entries)


def test_plan_scopes() -> None:
    plan = LimitPlan(("$ 100", "$$ 10", "10.0.0.0/8 5", "10.1.0.0/16 7", "10.1.2.3 1", "::1 3"))
    assert plan.service == 100 and plan.per_ip == 10
    assert plan.ip_limit("192.0.2.1") == 10  # $$
    assert plan.ip_limit("10.9.9.9") == 5
    assert plan.ip_limit("10.1.9.9") == 7  # most specific CIDR wins
    assert plan.ip_limit("10.1.2.3") == 1
    assert plan.ip_limit("::ffff:10.1.2.3") == 1
    assert plan.ip_limit("::1") == 3
    # Without $$, IPs outside every CIDR have no limit of their own.
    assert LimitPlan(("10.0.0.0/8 5",)).ip_limit("192.0.2.1") == 0
    # A repeated scope: the later line wins.
    assert LimitPlan(("$$ 10", "$$ 20")).per_ip == 20
    assert LimitPlan(("10.0.0.0/8 5", "10.0.0.0/8 6")).ip_limit("10.1.1.1") == 6
    with pytest.raises(ValueError):
        LimitPlan(("$$ ten",))


# -- climiter ---------------------------------------------------------------------------------


def test_per_ip_concurrency() -> None:
    lim = conns("$$ 2")
    assert lim.acquire("192.0.2.1") and lim.acquire("192.0.2.1")
    assert not lim.acquire("192.0.2.1")
    assert lim.acquire("192.0.2.2")  # another IP has its own 2
    lim.release("192.0.2.1")
    assert lim.acquire("192.0.2.1")
    assert lim.count("192.0.2.1") == 2 and lim.active == 3


def test_service_concurrency_is_shared() -> None:
    lim = conns("$ 3")
    assert all(lim.acquire(f"192.0.2.{i}") for i in range(3))
    assert not lim.acquire("192.0.2.9")
    assert lim.entries == 0  # no per-IP limit: no per-IP state
    lim.release("192.0.2.0")
    assert lim.acquire("192.0.2.9")


def test_service_and_per_ip_combine() -> None:
    lim = conns("$ 3", "$$ 2")
    assert lim.acquire("a") and lim.acquire("a")
    assert not lim.acquire("a")  # per-IP
    assert lim.acquire("b")
    assert not lim.acquire("c")  # service
    # A refusal takes nothing: "a" refused by its own limit did not use a service slot.
    assert lim.active == 3


def test_cidr_overrides_per_ip_for_matching_ips() -> None:
    lim = conns("$$ 2", "10.0.0.0/8 5", "10.0.0.7 1")
    for _ in range(5):
        assert lim.acquire("10.1.1.1")
    assert not lim.acquire("10.1.1.1")
    # Per IP, not per network: another IP of the CIDR has its own 5.
    for _ in range(5):
        assert lim.acquire("10.1.1.2")
    assert lim.acquire("10.0.0.7") and not lim.acquire("10.0.0.7")
    assert lim.acquire("192.0.2.1") and lim.acquire("192.0.2.1")
    assert not lim.acquire("192.0.2.1")


def test_cidr_without_per_ip_leaves_others_unlimited() -> None:
    lim = conns("10.0.0.0/8 1")
    assert lim.acquire("10.1.1.1") and not lim.acquire("10.1.1.1")
    assert all(lim.acquire("192.0.2.1") for _ in range(100))
    assert lim.entries == 1


def test_counters_at_zero_are_removed_and_release_never_goes_negative() -> None:
    lim = conns("$ 10", "$$ 5")
    for i in range(100):
        ip = f"192.0.2.{i}"
        assert lim.acquire(ip)
        lim.release(ip)
    assert lim.entries == 0 and lim.active == 0
    lim.release("192.0.2.1")  # a stray release: clamped, nothing breaks
    assert lim.active == 0 and lim.count("192.0.2.1") == 0
    assert all(lim.acquire("x") for _ in range(5))


def test_full_per_ip_table_fails_closed() -> None:
    lim = conns("$$ 5", max_entries=2)
    assert lim.acquire("a") and lim.acquire("b")
    assert not lim.acquire("c")
    assert lim.untracked == 1
    assert lim.acquire("a")  # tracked IPs are unaffected
    lim.release("b")
    assert lim.acquire("c")


def test_no_limits_at_all() -> None:
    lim = conns()
    assert all(lim.acquire("a") for _ in range(1000))
    assert lim.entries == 0


# -- rlimiter ---------------------------------------------------------------------------------


def test_per_ip_rate_burst_is_limit_plus_one_like_gost() -> None:
    lim = rates("$$ 5")
    passed = sum(lim.allow("192.0.2.1", 100.0) for _ in range(20))
    assert passed == 6  # golang.org/x/time/rate with burst int(r) + 1
    assert not lim.allow("192.0.2.1", 100.1)
    assert lim.allow("192.0.2.1", 100.2)  # 5 per second: one token every 0.2 s
    assert not lim.allow("192.0.2.1", 100.2)
    assert lim.allow("192.0.2.2", 100.2)  # another IP has its own bucket


def test_sustained_rate() -> None:
    lim = rates("$$ 10")
    passed = sum(lim.allow("192.0.2.1", 50.0 + i * 0.001) for i in range(10_000))
    assert passed == pytest.approx(11 + 10 * 10, abs=2)  # 10 s at 10/s plus the burst


def test_service_rate_is_shared() -> None:
    lim = rates("$ 3")
    passed = [lim.allow(f"192.0.2.{i}", 0.0) for i in range(10)]
    assert passed.count(True) == 4
    assert lim.entries == 0
    assert lim.allow("192.0.2.99", 1 / 3)


def test_refused_requests_charge_nothing() -> None:
    lim = rates("$ 100", "$$ 1")
    assert lim.allow("a", 0.0) and lim.allow("a", 0.0)
    for _ in range(1000):
        assert not lim.allow("a", 0.0)  # refused by its own bucket ...
    # ... without draining the service bucket for everyone else.
    assert sum(lim.allow(f"b{i}", 0.0) for i in range(200)) == 99


def test_rate_cidr_override() -> None:
    lim = rates("$$ 100", "10.0.0.0/8 1")
    assert sum(lim.allow("10.1.1.1", 0.0) for _ in range(10)) == 2
    assert sum(lim.allow("10.1.1.2", 0.0) for _ in range(10)) == 2  # per IP
    assert sum(lim.allow("192.0.2.1", 0.0) for _ in range(200)) == 101


def test_rate_state_is_bounded_and_lru_eviction_only_loosens() -> None:
    lim = rates("$$ 1", max_entries=100)
    assert lim.allow("victim", 0.0) and lim.allow("victim", 0.0)
    assert not lim.allow("victim", 0.0)
    for i in range(1000):
        lim.allow(f"10.0.{i >> 8}.{i & 255}", 0.001)
        assert lim.entries <= 100
    # The victim's bucket was evicted: it comes back with a full one (more lenient, never
    # stricter than the limit says).
    assert lim.allow("victim", 0.002)
