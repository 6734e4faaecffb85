"""Records of single measurements, and their aggregation over repeats.

Every figure of a contender is first made relative to the direct baseline *of the same repeat*
(a ratio, or a difference for added delay), and only then summarised over repeats as
median [min, max]. That way a noisy repeat shifts both sides of its ratio together.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from bench.scenarios import Result

Mode = Literal["abs", "ratio", "added"]


@dataclass
class Record:
    """One measurement: a scenario run once through one contender in one repeat."""

    repeat: int
    scenario: str
    contender: str
    result: Result | None
    #: Why there is no result (start failure, crash, client error), or None.
    error: str | None = None
    #: Lines from the contender's logs that look like errors (first few).
    log_issues: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Whole-machine CPU use during the measurement, in cores ...
    host_busy_cores: float = 0.0
    #: ... and the part of it that was neither the bench, the contender nor the origin.
    foreign_cores: float = 0.0


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    mode: Mode
    digits: int = 2
    #: Only meaningful with a proxy in the path (CPU, memory): no value for direct.
    proxied_only: bool = False


FIGURES: dict[str, tuple[Figure, ...]] = {
    "sse": (
        Figure("delay_p50_ms", "added delay p50 ms", "added"),
        Figure("delay_p99_ms", "added delay p99 ms", "added"),
        Figure("delay_p999_ms", "added delay p99.9 ms", "added"),
        Figure("delay_p99_ms", "delay p99 ÷ direct", "ratio"),
        Figure("ttfb_p50_ms", "TTFB p50 ms", "abs"),
        Figure("ttfb_p99_ms", "TTFB p99 ms", "abs"),
        Figure("tokens_per_s", "tokens/s ÷ direct", "ratio", 3),
        Figure("cpu_us_per_token", "proxy CPU µs/token", "abs", 1, proxied_only=True),
        Figure("client_cores", "client cores", "abs"),
    ),
    "small": (
        Figure("requests_per_s", "req/s", "abs", 0),
        Figure("requests_per_s", "req/s ÷ direct", "ratio"),
        Figure("p99_ms", "p99 ms", "abs"),
        Figure("p99_ms", "p99 ÷ direct", "ratio"),
        Figure("cpu_us_per_request", "proxy CPU µs/req", "abs", 1, proxied_only=True),
    ),
    "bulk": (
        Figure("mib_per_s", "MiB/s", "abs", 0),
        Figure("mib_per_s", "MiB/s ÷ direct", "ratio"),
        Figure("cpu_s_per_gib", "proxy CPU s/GiB", "abs", 2, proxied_only=True),
    ),
    "idle": (
        Figure("kib_per_conn", "KiB per held conn", "abs", 2, proxied_only=True),
        Figure("rss_before_kib", "RSS before KiB", "abs", 0, proxied_only=True),
        Figure("rss_after_kib", "RSS after KiB", "abs", 0, proxied_only=True),
    ),
    "reload": (
        Figure("delay_p99_ms", "delay p99 ms", "abs"),
        Figure("ttfb_p99_ms", "TTFB p99 ms", "abs"),
    ),
}


def _value(record: Record, key: str) -> float | None:
    if record.result is None:
        return None
    value = getattr(record.result, key, None)
    return float(value) if isinstance(value, (int, float)) else None


def values(records: list[Record], scenario: str, contender: str, figure: Figure) -> list[float]:
    """The figure for ``contender`` in each repeat, relative to direct of that repeat."""
    direct = {
        r.repeat: _value(r, figure.key)
        for r in records
        if r.scenario == scenario and r.contender == "direct"
    }
    out: list[float] = []
    for record in records:
        if record.scenario != scenario or record.contender != contender:
            continue
        value = _value(record, figure.key)
        if value is None:
            continue
        if figure.mode == "abs" or contender == "direct":
            out.append(value)
            continue
        base = direct.get(record.repeat)
        if base is None:
            continue
        if figure.mode == "added":
            out.append(value - base)
        elif base > 0:
            out.append(value / base)
    return out


def stat(numbers: list[float]) -> Stat | None:
    if not numbers:
        return None
    return Stat(statistics.median(numbers), min(numbers), max(numbers), len(numbers))


def records_of(records: list[Record], scenario: str, contender: str) -> list[Record]:
    return [r for r in records if r.scenario == scenario and r.contender == contender]
