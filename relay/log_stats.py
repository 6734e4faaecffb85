"""``aicdn-relay logs stats FILE``: a summary of a JSON access log (``relay.access_log``).

Top keys by requests (with their error rate and tokens), answers by status class, refusals
by reason, and TTFB p50/p99 (nearest-rank, over requests that got a first byte). Lines that
are not access log entries are counted as malformed and skipped, never fatal.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["KeyStats", "LogStats", "format_stats", "percentile", "summarise"]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted in place); None when empty."""
    if not values:
        return None
    values.sort()
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


@dataclass(slots=True)
class KeyStats:
    requests: int = 0
    errors: int = 0
    blocked: int = 0
    tokens: int = 0
    bytes_out: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(slots=True)
class LogStats:
    lines: int = 0
    malformed: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    blocks: Counter[str] = field(default_factory=Counter)
    keys: dict[str, KeyStats] = field(default_factory=dict)
    ttfb_ms: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        """Share of requests answered 5xx."""
        return self.statuses["5xx"] / self.requests if self.requests else 0.0

    def to_json(self, top: int = 10) -> dict[str, object]:
        ttfb = list(self.ttfb_ms)
        return {
            "lines": self.lines,
            "malformed": self.malformed,
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "error_rate": round(self.error_rate, 6),
            "client_error_rate": round(self.statuses["4xx"] / self.requests, 6)
            if self.requests
            else 0.0,
            "blocked": dict(self.blocks.most_common()),
            "ttfb_ms": {
                "count": len(ttfb),
                "p50": percentile(ttfb, 0.50),
                "p99": percentile(ttfb, 0.99),
            },
            "top_keys": [
                {
                    "key": key,
                    "requests": s.requests,
                    "error_rate": round(s.error_rate, 6),
                    "blocked": s.blocked,
                    "tokens": s.tokens,
                    "bytes_out": s.bytes_out,
                }
                for key, s in self.top_keys(top)
            ],
        }

    def top_keys(self, n: int) -> list[tuple[str, KeyStats]]:
        return sorted(self.keys.items(), key=lambda item: (-item[1].requests, item[0]))[:n]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarise(lines: Iterable[bytes | str]) -> LogStats:
    """Summarise access log ``lines`` (one JSON object each)."""
    stats = LogStats()
    for line in lines:
        if not line.strip():
            continue
        stats.lines += 1
        try:
            entry = json.loads(line)
        except ValueError:
            stats.malformed += 1
            continue
        status = entry.get("status") if isinstance(entry, dict) else None
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            stats.malformed += 1
            continue
        stats.requests += 1
        stats.statuses[f"{status // 100}xx"] += 1
        key = entry.get("key")
        key_stats = stats.keys.setdefault(key if isinstance(key, str) else "-", KeyStats())
        key_stats.requests += 1
        key_stats.errors += status >= 500
        key_stats.tokens += _int(entry.get("tokens"))
        key_stats.bytes_out += _int(entry.get("bytes_out"))
        block = entry.get("block")
        if isinstance(block, str) and block:
            stats.blocks[block] += 1
            key_stats.blocked += 1
        ttfb = entry.get("ttfb_ms")
        if isinstance(ttfb, int | float) and not isinstance(ttfb, bool) and math.isfinite(ttfb):
            stats.ttfb_ms.append(float(ttfb))
    return stats


def format_stats(stats: LogStats, top: int = 10) -> str:
    """A plain-text report."""
    data = stats.to_json(top)
    ttfb = data["ttfb_ms"]
    assert isinstance(ttfb, dict)

    def ms(value: object) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    out = [
        f"requests     {stats.requests} ({stats.lines} lines, {stats.malformed} malformed)",
        "statuses     " + (", ".join(f"{k} {v}" for k, v in sorted(stats.statuses.items())) or "-"),
        f"error rate   {stats.error_rate:.2%} (5xx)",
        "blocked      " + (", ".join(f"{k} {v}" for k, v in stats.blocks.most_common()) or "none"),
        f"ttfb         p50 {ms(ttfb['p50'])}, p99 {ms(ttfb['p99'])} ({ttfb['count']} requests)",
        "",
        f"top {top} keys by requests:",
        f"  {'key':<34} {'requests':>9} {'errors':>7} {'blocked':>8} {'tokens':>10}",
    ]
    for key, s in stats.top_keys(top):
        out.append(
            f"  {key:<34} {s.requests:>9} {s.error_rate:>7.1%} {s.blocked:>8} {s.tokens:>10}"
        )
    return "\n".join(out) + "\n"
