"""CC protection (relay.policy.cc): floods from a few IPs are blocked, light clients pass."""

from __future__ import annotations

from collections import defaultdict

from relay.config.model import CCConfig
from relay.policy import ALLOW, CCGuard, Verdict

LIGHT = [f"198.51.100.{i}" for i in range(1, 31)]


def guard(**kw: object) -> CCGuard:
    options: dict[str, object] = {
        "rate_limit": 100,
        "burst_size": 100,
        "block_duration": 300.0,
        "check_interval": 1.0,
    }
    options.update(kw)
    return CCGuard(CCConfig("default", **options))  # type: ignore[arg-type]


def traffic(rates: dict[str, float], start: float, end: float) -> list[tuple[float, str]]:
    """Requests at a steady pace per IP (``rates`` in requests/s), merged in time order.
    Offsets per IP keep them from arriving in lockstep."""
    events: list[tuple[float, str]] = []
    for n, (ip, rate) in enumerate(rates.items()):
        t = start + (n % 97) / 97 / rate
        while t < end:
            events.append((t, ip))
            t += 1.0 / rate
    events.sort()
    return events


def run(cc: CCGuard, events: list[tuple[float, str]]) -> dict[str, list[tuple[float, Verdict]]]:
    refused: dict[str, list[tuple[float, Verdict]]] = defaultdict(list)
    for t, ip in events:
        verdict = cc.check(ip, t)
        if not verdict.allowed:
            refused[ip].append((t, verdict))
    return refused


def test_flood_from_a_few_ips_blocks_them_and_light_clients_pass() -> None:
    cc = guard()
    flooders = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    rates = {ip: 300.0 for ip in flooders} | {ip: 1.0 for ip in LIGHT}
    events = traffic(rates, 1000.0, 1010.0)
    refused = run(cc, events)
    assert not any(ip in refused for ip in LIGHT)
    for ip in flooders:
        first_t, first = refused[ip][0]
        # Judged on the interval that just ended: blocked at its first request of the next.
        assert 1001.0 <= first_t < 1001.01
        assert first == Verdict(False, "cc", 300.0)
        # Refused from then on, every time with the time left on the block.
        assert [t for t, _ in refused[ip]] == [t for t, i in events if i == ip and t >= first_t]
        for t, verdict in refused[ip]:
            assert abs(verdict.retry_after - (300.0 - (t - first_t))) < 1e-6
    assert cc.blocked == 3
    assert not cc.overloaded  # with the flood blocked, the service is under its limit


def test_block_ends_after_block_duration() -> None:
    cc = guard(block_duration=30.0)
    run(cc, traffic({"203.0.113.1": 500.0} | {ip: 1.0 for ip in LIGHT}, 0.0, 1.0))
    assert cc.check("203.0.113.1", 1.0) == Verdict(False, "cc", 30.0)
    late = cc.check("203.0.113.1", 30.99)
    assert not late.allowed and abs(late.retry_after - 0.01) < 1e-6
    assert cc.check("203.0.113.1", 31.0) is ALLOW


def test_no_overload_no_blocks_however_uneven() -> None:
    cc = guard(rate_limit=1000, burst_size=1000)
    refused = run(cc, traffic({"203.0.113.1": 900.0, "198.51.100.1": 1.0}, 0.0, 5.0))
    assert not refused
    assert cc.blocked == 0


def test_overload_spread_evenly_blocks_nobody() -> None:
    # 300 clients at 1 request/s each against a limit of 100/s: the service is overloaded,
    # but no client sends more than the average, so none is singled out.
    cc = guard()
    clients = {f"10.0.{i // 250}.{i % 250}": 1.0 for i in range(300)}
    refused = run(cc, traffic(clients, 0.0, 5.0))
    assert not refused


def test_only_the_contributors_that_cover_the_excess_are_blocked() -> None:
    # One big flooder (1000/s) and one medium client (150/s) over a 100/s limit. In the first
    # interval the big one alone covers the excess: only it is blocked. In the next, the
    # medium one is what keeps the service over its limit: it goes next.
    cc = guard()
    big, medium = "203.0.113.1", "203.0.113.2"
    rates = {big: 1000.0, medium: 150.0} | {ip: 1.0 for ip in LIGHT}
    refused = run(cc, traffic(rates, 0.0, 4.0))
    assert 1.0 <= refused[big][0][0] < 1.01
    assert 2.0 <= refused[medium][0][0] < 2.01
    assert not any(ip in refused for ip in LIGHT)


def test_an_ip_that_stopped_is_not_blocked_later() -> None:
    cc = guard()
    run(cc, traffic({"203.0.113.1": 500.0} | {ip: 1.0 for ip in LIGHT}, 0.0, 1.0))
    # Silent through interval 1; back in interval 2: the overload it caused is history.
    assert cc.check("203.0.113.1", 2.5) is ALLOW


def test_zero_block_duration_refuses_only_the_judged_request() -> None:
    cc = guard(block_duration=0.0)
    run(cc, traffic({"203.0.113.1": 500.0} | {ip: 1.0 for ip in LIGHT}, 0.0, 1.0))
    assert cc.check("203.0.113.1", 1.0) == Verdict(False, "cc", 0.0)
    assert cc.check("203.0.113.1", 1.001) is ALLOW
    assert cc.blocked == 0


def test_table_full_of_blocked_ips_leaves_new_ips_untracked() -> None:
    cc = CCGuard(CCConfig("tiny", rate_limit=10, burst_size=10, block_duration=60.0), 2)
    run(cc, traffic({"203.0.113.1": 100.0, "203.0.113.2": 100.0}, 0.0, 1.0))
    assert not cc.check("203.0.113.1", 1.0).allowed
    assert not cc.check("203.0.113.2", 1.0).allowed
    assert cc.blocked == 2
    for i in range(50):
        assert cc.check("198.51.100.1", 1.0 + i / 1000) is ALLOW
    assert cc.untracked == 50
    assert not cc.check("203.0.113.1", 59.0).allowed  # blocks intact


def test_equal_bots_alone_are_caught_by_the_service_budget() -> None:
    # Nobody else around: neither bot is above the mean, but each one alone sent more than
    # the whole service may in an interval.
    cc = guard(rate_limit=10, burst_size=10)
    refused = run(cc, traffic({"203.0.113.1": 100.0, "203.0.113.2": 100.0}, 0.0, 2.0))
    assert 1.0 <= refused["203.0.113.1"][0][0] < 1.02
    assert 1.0 <= refused["203.0.113.2"][0][0] < 1.02
