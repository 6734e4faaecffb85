"""Usage accounting on the master (issue 12): batches from the edges, sums, and quotas.

Edges count per API key (a hash of the token) and per UTC hour; their agents send what was
counted in heartbeats (``UsageBatch``), stored idempotently per batch
(:class:`~master_api.repos.usage.UsageRecordsRepo`). Reads sum the records, grouped as asked.

A quota caps a key's requests, tokens and/or body bytes (in + out) over the current UTC hour,
day or month, summed over every node. :meth:`UsageService.over_quota` is the list of keys at or
over a limit; heartbeat answers carry it to the edges, which refuse those keys with 429. It is
recomputed at most every ``ttl`` seconds per master (a heartbeat must not sum usage).
"""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from master_api.errors import BadRequest
from master_api.repos import Repos
from master_api.repos.usage import COUNTER_FIELDS, UsageFilter
from master_api.settings import Settings

__all__ = [
    "GROUPS",
    "MAX_BATCH_ENTRIES",
    "PERIODS",
    "Quota",
    "UsageRow",
    "UsageService",
    "period_start",
]

Period = Literal["hour", "day", "month"]
PERIODS: Final = ("hour", "day", "month")
#: What ``GET /usage`` can group by (the others are summed over).
GROUPS: Final = ("key", "node", "hour")
#: Entries a batch may carry: the relay's bound (10,000) plus its overflow entries.
MAX_BATCH_ENTRIES = 10_100
#: Keys the heartbeat answer may carry (the relay accepts 100,000).
MAX_OVER_QUOTA = 100_000
_MAX_KEY = 64
_MAX_COUNT = 2**62
_INT_FIELDS = tuple(f for f in COUNTER_FIELDS if not f.endswith("_sum"))
_FLOAT_FIELDS = tuple(f for f in COUNTER_FIELDS if f.endswith("_sum"))


def period_start(period: str, now: float) -> int:
    """Epoch seconds at which the UTC ``period`` holding ``now`` began."""
    if period == "hour":
        return int(now // 3600) * 3600
    day = int(now // 86400) * 86400
    if period == "day":
        return day
    t = time.gmtime(now)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits of one key over ``period``; None: that figure is not limited."""

    key: str
    period: Period
    requests: int | None = None
    tokens: int | None = None
    bytes: int | None = None
    updated_at: float = 0.0

    def exceeded_by(self, totals: Mapping[str, float]) -> bool:
        used = {
            "requests": totals.get("requests", 0),
            "tokens": totals.get("total_tokens", 0),
            "bytes": totals.get("bytes_in", 0) + totals.get("bytes_out", 0),
        }
        return any(
            limit is not None and used[name] >= limit
            for name, limit in (
                ("requests", self.requests),
                ("tokens", self.tokens),
                ("bytes", self.bytes),
            )
        )

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "period": self.period,
            "requests": self.requests,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Sums of one group; ``key``/``node_id``/``hour`` are None when not grouped by."""

    key: str | None
    node_id: str | None
    hour: int | None
    totals: Mapping[str, float]

    def to_json(self) -> dict[str, object]:
        totals = self.totals
        ttfb_count = int(totals["ttfb_count"])
        requests = int(totals["requests"])
        return {
            "key": self.key,
            "node_id": self.node_id,
            "hour": self.hour,
            **{name: int(totals[name]) for name in _INT_FIELDS},
            "ttfb_ms_avg": round(totals["ttfb_seconds_sum"] * 1000 / ttfb_count, 3)
            if ttfb_count
            else None,
            "duration_seconds_sum": round(totals["duration_seconds_sum"], 6),
            "duration_ms_avg": round(totals["duration_seconds_sum"] * 1000 / requests, 3)
            if requests
            else None,
        }


def _zero() -> dict[str, float]:
    return dict.fromkeys(COUNTER_FIELDS, 0)


def _check_record(record: Mapping[str, object], where: str) -> dict[str, object]:
    key = record.get("key")
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
        raise BadRequest(f"{where}.key: expected 1-{_MAX_KEY} characters")
    hour = record.get("hour")
    if not isinstance(hour, int) or hour < 0 or hour % 3600:
        raise BadRequest(f"{where}.hour: expected the epoch second of an hour's start")
    out: dict[str, object] = {"key": key, "hour": hour}
    for name in _INT_FIELDS:
        value = record.get(name, 0)
        if not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise BadRequest(f"{where}.{name}: expected a count, got {value!r}")
        out[name] = value
    for name in _FLOAT_FIELDS:
        number = record.get(name, 0.0)
        if not isinstance(number, int | float) or not (math.isfinite(number) and number >= 0):
            raise BadRequest(f"{where}.{name}: expected seconds >= 0, got {number!r}")
        out[name] = float(number)
    return out


class UsageService:
    def __init__(self, repos: Repos, settings: Settings, ttl: float | None = None) -> None:
        self._repos = repos
        #: How long an over-quota list is reused (default: one heartbeat interval).
        self._ttl = settings.heartbeat_interval if ttl is None else ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, ...]] | None = None

    # --- batches from the edges ---------------------------------------------------------------

    def record(self, node_id: str, batch_id: str, records: Sequence[Mapping[str, object]]) -> int:
        """Store one batch of ``node_id`` (idempotent per ``batch_id``); returns its entries.
        ``BadRequest`` for a malformed or oversized batch (nothing is stored then)."""
        if not batch_id or len(batch_id) > 128:
            raise BadRequest("usage.batch_id: expected 1-128 characters")
        if len(records) > MAX_BATCH_ENTRIES:
            raise BadRequest(f"usage.entries: at most {MAX_BATCH_ENTRIES}, got {len(records)}")
        checked = [_check_record(r, f"usage.entries[{i}]") for i, r in enumerate(records)]
        self._repos.usage_records.store(node_id, batch_id, checked)
        return len(checked)

    # --- reading ------------------------------------------------------------------------------

    def query(self, where: UsageFilter, group: Iterable[str]) -> list[UsageRow]:
        """Sums of the matching records per distinct (``group`` fields), sorted."""
        chosen = set(group)
        unknown = chosen - set(GROUPS)
        if unknown:
            raise BadRequest(f"group: unknown {sorted(unknown)}; expected some of {GROUPS}")
        sums: dict[tuple[str | None, str | None, int | None], dict[str, float]] = {}
        for doc in self._repos.usage_records.find(where):
            slot = (
                doc["key"] if "key" in chosen else None,
                doc["node_id"] if "node" in chosen else None,
                int(doc["hour"]) if "hour" in chosen else None,
            )
            totals = sums.get(slot)
            if totals is None:
                totals = sums[slot] = _zero()
            for name in COUNTER_FIELDS:
                totals[name] += doc.get(name, 0)
        order = sorted(sums, key=lambda s: (s[2] or 0, s[0] or "", s[1] or ""))
        return [UsageRow(k, n, h, sums[(k, n, h)]) for k, n, h in order]

    # --- quotas -------------------------------------------------------------------------------

    def quotas(self) -> list[Quota]:
        return [
            Quota(
                key=doc["_id"],
                period=doc["period"],
                requests=doc.get("requests"),
                tokens=doc.get("tokens"),
                bytes=doc.get("bytes"),
                updated_at=float(doc.get("updated_at", 0.0)),
            )
            for doc in self._repos.usage_quotas.all()
        ]

    def set_quota(self, quota: Quota) -> Quota:
        if quota.requests is None and quota.tokens is None and quota.bytes is None:
            raise BadRequest("give at least one of requests, tokens, bytes")
        stored = Quota(
            quota.key, quota.period, quota.requests, quota.tokens, quota.bytes, time.time()
        )
        body = stored.to_json()
        del body["key"]
        self._repos.usage_quotas.put(quota.key, body)
        self.invalidate()
        return stored

    def delete_quota(self, key: str) -> bool:
        deleted = self._repos.usage_quotas.delete(key)
        self.invalidate()
        return deleted

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def over_quota(self, now: float | None = None) -> tuple[str, ...]:
        """Keys at or over a limit of their quota now (cached for the ttl)."""
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cached
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
        over: list[str] = []
        for quota in self.quotas():
            start = period_start(quota.period, now)
            totals = _zero()
            for doc in self._repos.usage_records.find(UsageFilter(key=quota.key, start=start)):
                for name in ("requests", "total_tokens", "bytes_in", "bytes_out"):
                    totals[name] += doc.get(name, 0)
            if quota.exceeded_by(totals):
                over.append(quota.key)
            if len(over) >= MAX_OVER_QUOTA:
                break
        result = tuple(over)
        with self._lock:
            self._cached = (now, result)
        return result
