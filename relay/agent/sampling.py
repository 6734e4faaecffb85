"""What a heartbeat reports, computed from the relay's Prometheus exposition (sans-I/O).

:class:`MetricsSampler` is fed the text of the relay's metrics endpoint with the time it was
read (``now``, monotonic seconds) and returns a :class:`RelaySample`. Totals are read as they
are; rates and the p99 are computed over the interval since the previous sample, so they
describe the last heartbeat interval rather than the whole life of the process:

* ``connections``: sum of ``aicdn_connections_active``;
* ``requests_total``/``errors_total``: sums of ``aicdn_requests_total`` (errors: status 5xx);
* ``error_rate``: new errors / new requests over the interval (None without new requests);
* ``p99_latency_ms``: the 99th percentile of ``aicdn_time_to_first_byte_seconds`` over the
  interval (the master's ``HighLatency`` input is time to first byte: whole-request durations of
  LLM streams are minutes long), interpolated within its bucket as Prometheus'
  ``histogram_quantile`` does; None without new observations;
* ``cpu_percent``: ``process_cpu_seconds_total`` over wall time (all workers summed; may exceed
  100 on several cores); ``memory_bytes``: ``process_resident_memory_bytes`` summed;
* ``config_version``: ``aicdn_config_version``.

A counter that went backwards (the relay restarted) starts a fresh interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MetricsSampler", "RelaySample", "quantile_from_buckets"]

_TTFB = "aicdn_time_to_first_byte_seconds"


@dataclass(frozen=True, slots=True)
class RelaySample:
    """One heartbeat's view of the relay; None means "not known"."""

    connections: int | None = None
    requests_total: int | None = None
    errors_total: int | None = None
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    config_version: int | None = None


@dataclass(slots=True)
class _Totals:
    """Cumulative values of one scrape (what the next interval is computed against)."""

    now: float
    requests: float = 0.0
    errors: float = 0.0
    cpu_seconds: float | None = None
    ttfb_buckets: dict[float, float] = field(default_factory=dict)


def quantile_from_buckets(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a histogram given as cumulative counts per upper bound
    (``math.inf`` included), like PromQL's ``histogram_quantile``. None when it is empty."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower  # beyond the last finite bucket: its bound is the best we know
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class MetricsSampler:
    """Turns successive scrapes into :class:`RelaySample` values; keeps the previous totals."""

    def __init__(self) -> None:
        self._previous: _Totals | None = None

    def reset(self) -> None:
        """Forget the previous scrape (the next sample has no interval values)."""
        self._previous = None

    def sample(self, text: str, now: float) -> RelaySample:
        """Parse one exposition read at ``now`` (monotonic seconds).

        Raises ``ValueError`` when ``text`` is not the Prometheus text format.
        """
        connections = 0.0
        memory: float | None = None
        version: float | None = None
        totals = _Totals(now)
        for family in text_string_to_metric_families(text):
            name = family.name
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if name == "aicdn_connections_active":
                    connections += sample.value
                elif name == "aicdn_requests" and sample.name == "aicdn_requests_total":
                    totals.requests += sample.value
                    if sample.labels.get("code", "").startswith("5"):
                        totals.errors += sample.value
                elif name == _TTFB and sample.name == f"{_TTFB}_bucket":
                    bound = float(sample.labels["le"])
                    totals.ttfb_buckets[bound] = totals.ttfb_buckets.get(bound, 0.0) + sample.value
                elif name == "process_cpu_seconds":
                    totals.cpu_seconds = (totals.cpu_seconds or 0.0) + sample.value
                elif name == "process_resident_memory_bytes":
                    memory = (memory or 0.0) + sample.value
                elif name == "aicdn_config_version":
                    version = sample.value
        previous, self._previous = self._previous, totals
        if previous is not None and (totals.requests < previous.requests or now <= previous.now):
            previous = None  # the relay restarted (counters went back): a fresh interval
        return RelaySample(
            connections=int(connections),
            requests_total=int(totals.requests),
            errors_total=int(totals.errors),
            error_rate=_error_rate(previous, totals),
            p99_latency_ms=_p99_ms(previous, totals),
            cpu_percent=_cpu_percent(previous, totals),
            memory_bytes=None if memory is None else int(memory),
            config_version=None if version is None else int(version),
        )


def _error_rate(previous: _Totals | None, now: _Totals) -> float | None:
    if previous is None:
        return None
    requests = now.requests - previous.requests
    if requests <= 0:
        return None
    return min(1.0, max(0.0, (now.errors - previous.errors) / requests))


def _p99_ms(previous: _Totals | None, now: _Totals) -> float | None:
    if previous is None:
        return None
    delta = _delta_buckets(previous.ttfb_buckets, now.ttfb_buckets.items())
    value = quantile_from_buckets(0.99, delta)
    return None if value is None else value * 1000.0


def _delta_buckets(
    before: Mapping[float, float], after: Iterable[tuple[float, float]]
) -> dict[float, float]:
    return {bound: max(0.0, count - before.get(bound, 0.0)) for bound, count in after}


def _cpu_percent(previous: _Totals | None, now: _Totals) -> float | None:
    if previous is None or previous.cpu_seconds is None or now.cpu_seconds is None:
        return None
    elapsed = now.now - previous.now
    used = now.cpu_seconds - previous.cpu_seconds
    if elapsed <= 0 or used < 0:
        return None
    return used / elapsed * 100.0
