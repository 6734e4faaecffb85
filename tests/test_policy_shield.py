"""The five-second shield (relay.policy.shield)."""

from __future__ import annotations

from typing import Literal

import pytest

from relay.config.model import ShieldConfig
from relay.policy import ALLOW, Shield, Verdict
from relay.policy.shield import EXACT_WINDOW_MAX

Algorithm = Literal["sliding_window", "token_bucket"]
ALGORITHMS: list[Algorithm] = ["sliding_window", "token_bucket"]


def shield(**kw: object) -> Shield:
    options: dict[str, object] = {
        "window": 5.0,
        "max_requests": 10,
        "block_duration": 60.0,
    }
    options.update(kw)
    return Shield(ShieldConfig("default", **options))  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_issue_scenario(algorithm: Algorithm) -> None:
    """The 11th request inside 5 s is refused; after blockDuration requests pass again;
    another IP is unaffected all along; a whitelisted IP is never blocked.

    The sliding window refuses the 11th request wherever the 10 others fall in the 5 s; the
    token bucket refills as they go (2 per second here), so for it they come in a burst."""
    s = shield(algorithm=algorithm, whitelist=("192.0.2.0/24",))
    t = 1000.0
    step = 0.4 if algorithm == "sliding_window" else 0.01
    for i in range(10):
        assert s.check_request("203.0.113.1", t + i * step) is ALLOW, i
        assert s.check_request("203.0.113.2", t + i * step) is ALLOW
    start = t + 10 * step
    blocked = s.check_request("203.0.113.1", start)
    assert blocked == Verdict(False, "shield", 60.0)
    # Blocked for 60 s: every request in between is refused with the time left ...
    verdict = s.check_request("203.0.113.1", start + 30.0)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(30.0)
    assert not s.check_connection("203.0.113.1", start + 30.0).allowed
    # ... while the other IP, at a pace within the limit, keeps passing.
    for i in range(60):
        assert s.check_request("203.0.113.2", start + 1.0 + i).allowed
    # The block ends 60 s after it started; the IP starts from a clean slate.
    assert not s.check_request("203.0.113.1", start + 59.99).allowed
    for i in range(10):
        assert s.check_request("203.0.113.1", start + 60.0 + i * 0.01) is ALLOW
    # The whitelisted IP is never counted.
    for i in range(1000):
        assert s.check_request("192.0.2.55", t + i * 0.001) is ALLOW
    assert "192.0.2.55" not in s._table


def test_sliding_window_is_exact() -> None:
    # blockDuration 0: only the offending request is refused, so each boundary is visible.
    s = shield(max_requests=3, window=5.0, block_duration=0.0)
    ip = "198.51.100.9"
    for t in (0.0, 1.0, 2.0):
        assert s.check_request(ip, t).allowed
    refused = s.check_request(ip, 4.9)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1)  # the request at 0 leaves at 5.0
    assert s.check_request(ip, 5.0).allowed  # window (0, 5]: the one at 0 is out
    assert not s.check_request(ip, 5.5).allowed  # 1, 2, 5 are in (0.5, 5.5]
    assert s.check_request(ip, 6.0).allowed  # 1 is out of (1, 6]
    # Refused requests are not counted: at 7.0 the window (2, 7] holds 5 and 6 only.
    assert s.check_request(ip, 7.0).allowed


def test_sliding_window_any_window_holds_at_most_max_requests() -> None:
    import random

    rng = random.Random(3)
    s = shield(max_requests=5, window=2.0, block_duration=0.0)
    times: list[float] = []
    t = 0.0
    for _ in range(3000):
        t += rng.expovariate(4.0)
        if s.check_request("10.0.0.1", t).allowed:
            times.append(t)
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 2.0  # 6 allowed requests never within 2 s
    assert len(times) > 1000  # and the limit is not stricter than it says


def test_token_bucket_burst_then_rate() -> None:
    s = shield(algorithm="token_bucket", max_requests=10, window=5.0, block_duration=0.0)
    ip = "198.51.100.10"
    for i in range(10):
        assert s.check_request(ip, 0.0).allowed, i
    refused = s.check_request(ip, 0.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)  # refill: 10 tokens per 5 s
    assert s.check_request(ip, 0.5).allowed
    assert not s.check_request(ip, 0.6).allowed
    # Idle for a whole window: the bucket is full again.
    for _ in range(10):
        assert s.check_request(ip, 20.0).allowed
    assert not s.check_request(ip, 20.0).allowed


def test_large_max_requests_uses_the_two_bucket_approximation() -> None:
    n = EXACT_WINDOW_MAX + 8
    s = shield(max_requests=n, window=10.0, block_duration=30.0)
    ip = "198.51.100.11"
    for i in range(n):
        assert s.check_request(ip, 100.0 + i * 0.01).allowed
    assert s.check_request(ip, 101.0) == Verdict(False, "shield", 30.0)
    # Requests spread evenly at the limit's pace keep passing.
    other = "198.51.100.12"
    pace = 10.0 / n
    for i in range(5 * n):
        assert s.check_request(other, 200.0 + i * pace * 1.05).allowed, i
    # A burst straddling the bucket boundary is still caught: the previous bucket weighs
    # (in proportion to its overlap with the sliding window: an approximation, so the test
    # stays close to the boundary).
    third = "198.51.100.13"
    for i in range(n):
        assert s.check_request(third, 309.0 + i * 0.001).allowed
    assert not s.check_request(third, 310.01).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_blacklist_always_refused_whitelist_wins(algorithm: Algorithm) -> None:
    s = shield(
        algorithm=algorithm,
        blacklist=("203.0.113.0/24", "2001:db8::/32"),
        whitelist=("203.0.113.7",),
    )
    expected = Verdict(False, "shield_blacklist", 0.0)
    assert s.check_request("203.0.113.9", 0.0) == expected
    assert s.check_connection("203.0.113.9", 0.0) == expected
    assert s.check_request("::ffff:203.0.113.9", 0.0) == expected
    assert s.check_request("2001:db8::1", 0.0) == expected
    assert s.check_request("203.0.113.7", 0.0) is ALLOW  # whitelisted inside the blacklist
    assert s.check_request("198.51.100.1", 0.0) is ALLOW
    assert s.entries == 1  # blacklisted IPs take no state


def test_connections_count_only_when_strict() -> None:
    lax = shield(max_requests=3)
    for _ in range(10):
        assert lax.check_connection("10.0.0.1", 0.0) is ALLOW
    assert lax.entries == 0  # nothing counted, nothing stored
    strict = shield(max_requests=3, strict=True)
    for _ in range(3):
        assert strict.check_connection("10.0.0.1", 0.0) is ALLOW
    assert strict.check_connection("10.0.0.1", 0.0) == Verdict(False, "shield", 60.0)
    # Connections and requests share one count.
    strict.check_connection("10.0.0.2", 0.0)
    strict.check_request("10.0.0.2", 0.0)
    strict.check_request("10.0.0.2", 0.0)
    assert not strict.check_request("10.0.0.2", 0.0).allowed


def test_blocked_ip_connection_refused_even_when_not_strict() -> None:
    s = shield(max_requests=1)
    s.check_request("10.0.0.3", 0.0)
    assert not s.check_request("10.0.0.3", 0.0).allowed
    verdict = s.check_connection("10.0.0.3", 10.0)
    assert verdict == Verdict(False, "shield", 50.0)
    assert s.check_connection("10.0.0.3", 60.0) is ALLOW


def test_refused_requests_do_not_extend_the_block() -> None:
    s = shield(max_requests=1, block_duration=10.0)
    s.check_request("10.0.0.4", 0.0)
    s.check_request("10.0.0.4", 0.0)
    for i in range(100):
        assert not s.check_request("10.0.0.4", i * 0.099).allowed
    assert s.check_request("10.0.0.4", 10.0).allowed


def test_table_full_of_blocked_ips_lets_new_ips_through_untracked() -> None:
    s = Shield(ShieldConfig("tiny", window=5.0, max_requests=1, block_duration=60.0), 3)
    for i in range(3):
        s.check_request(f"10.0.0.{i}", 0.0)
        assert not s.check_request(f"10.0.0.{i}", 0.0).allowed
    assert s.blocked == 3
    for _ in range(5):
        assert s.check_request("10.0.0.99", 1.0) is ALLOW
    assert s.untracked == 5
    # The blocks are intact.
    for i in range(3):
        assert not s.check_request(f"10.0.0.{i}", 59.0).allowed
    # After they end, new IPs are tracked again.
    s.check_request("10.0.0.99", 61.0)
    assert not s.check_request("10.0.0.99", 61.0).allowed
    assert s.untracked == 5
