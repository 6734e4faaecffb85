"""The five-second shield (seed §6.2.1): per client IP, at most ``max_requests`` per
``window``; the request that goes over blocks the IP for ``block_duration``.

Algorithms (``ShieldConfig.algorithm``):

* ``sliding_window``, exact when ``max_requests <= EXACT_WINDOW_MAX``: a ring of the times of
  the last ``max_requests`` counted requests (a compact ``array('d')``, 8 bytes per slot). A
  request is over the limit when the oldest of them is still inside the window, that is when
  ``max_requests`` requests already fell in ``(now - window, now]``. So the (N+1)th request
  inside any window of ``window`` seconds is the one refused, exactly. O(1) per request.
* ``sliding_window`` with a larger ``max_requests``: the two-bucket approximation (counts in
  the current and previous aligned windows, the previous weighted by how much of it still
  overlaps the sliding window), to keep memory per IP constant. It assumes requests of the
  previous window were evenly spread, so it can be off in either direction when they were not.
* ``token_bucket``: capacity ``max_requests``, refilled at ``max_requests / window`` per
  second; a request needs one token. Bursts up to ``max_requests`` pass, then the sustained
  rate is ``max_requests`` per ``window``.

``whitelist`` IPs are never counted nor blocked (the whitelist wins over the blacklist);
``blacklist`` IPs are always refused (reason ``shield_blacklist``). Requests refused during a
block do not count. When a block ends the IP starts from a clean slate.

``strict``: new connections count like requests (:meth:`Shield.check_connection`).

State: one entry per recently active IP in a :class:`~relay.policy.table.BoundedTable`
(``max_entries``). Blocked IPs are held for their whole block; if every entry is a blocked
IP, a new IP is let through **untracked** (``untracked`` counts those requests so the caller
can report them): the shield fails open rather than refusing clients it knows nothing about.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

from relay.config.model import ShieldConfig
from relay.policy.ipmatch import IPMatcher
from relay.policy.table import BoundedTable, Slot
from relay.policy.verdict import ALLOW, Verdict

__all__ = ["EXACT_WINDOW_MAX", "Shield"]

#: Largest ``max_requests`` for which ``sliding_window`` keeps exact request times per IP:
#: at most 64 + 8 * 32 bytes of times per IP, 32 MB at a cap of 100,000 IPs.
EXACT_WINDOW_MAX = 32

_BLACKLISTED = Verdict(False, "shield_blacklist", 0.0)


class _Ring(Slot):
    __slots__ = ("pos", "stamps")

    def __init__(self, stamps: array[float]) -> None:
        self.stamps = stamps
        self.pos = 0


class _Buckets(Slot):
    __slots__ = ("cur", "index", "prev")

    def __init__(self, index: int) -> None:
        self.index = index
        self.prev = 0
        self.cur = 0


class _Tokens(Slot):
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class Shield:
    """One ``shields[]`` entry's state for one service. Not thread-safe (one event loop).

    Every method takes ``now``, the caller's monotonic clock in seconds (``loop.time()``),
    and must be given non-decreasing values.
    """

    __slots__ = (
        "_blacklist",
        "_block",
        "_has_blacklist",
        "_has_whitelist",
        "_hit",
        "_max",
        "_new",
        "_rate",
        "_strict",
        "_table",
        "_template",
        "_whitelist",
        "_window",
        "name",
        "untracked",
    )

    def __init__(self, config: ShieldConfig, max_entries: int = 100_000) -> None:
        self.name = config.name
        self._window = config.window
        self._max = config.max_requests
        self._block = float(config.block_duration)
        self._strict = config.strict
        self._whitelist = IPMatcher(config.whitelist)
        self._blacklist = IPMatcher(config.blacklist)
        self._has_whitelist = bool(self._whitelist)
        self._has_blacklist = bool(self._blacklist)
        self._rate = config.max_requests / config.window
        self._template: array[float] = array("d", [-math.inf]) * config.max_requests
        #: Requests let through because the table was full of blocked IPs.
        self.untracked = 0
        # The counting step is chosen once here, not branched on per request. _hit returns
        # None when the request fits, else the seconds until one would; _new makes the state
        # of an IP whose first request was just counted.
        self._hit: Callable[[Slot, float], float | None]
        self._new: Callable[[float], Slot]
        ttl = config.window
        if config.algorithm == "token_bucket":
            self._hit, self._new = self._hit_tokens, self._new_tokens  # type: ignore[assignment]
        elif config.max_requests <= EXACT_WINDOW_MAX:
            self._hit, self._new = self._hit_ring, self._new_ring  # type: ignore[assignment]
        else:
            self._hit, self._new = self._hit_buckets, self._new_buckets  # type: ignore[assignment]
            ttl = 2 * config.window  # the previous bucket still weighs for one more window
        # ttl: after that long idle, fresh state is the same as the old one (all request times
        # out of the window, or a full bucket), so expiring an entry loses nothing.
        self._table: BoundedTable[Slot] = BoundedTable(max_entries, ttl)

    @property
    def entries(self) -> int:
        """IPs currently tracked (blocked ones included)."""
        return len(self._table)

    @property
    def blocked(self) -> int:
        """IPs currently held in a block (some may have just ended)."""
        return self._table.held_count

    def check_request(self, ip: str, now: float) -> Verdict:
        """Count one request from ``ip`` and say whether it may proceed."""
        # DANGER ZONE: once per request; kept in one function on purpose.
        if self._has_whitelist and ip in self._whitelist:
            return ALLOW
        if self._has_blacklist and ip in self._blacklist:
            return _BLACKLISTED
        table = self._table
        entry = table.get(ip, now)
        if entry is None:
            # A new entry starts with this request counted (max_requests >= 1 always fits).
            if not table.add(ip, self._new(now), now):
                self.untracked += 1
            return ALLOW
        if entry.held_until > now:
            return Verdict(False, "shield", entry.held_until - now)
        wait = self._hit(entry, now)
        if wait is None:
            return ALLOW
        if self._block > 0:
            table.hold(ip, now + self._block)
            return Verdict(False, "shield", self._block)
        # blockDuration 0: refuse just this request; the next one is judged afresh.
        return Verdict(False, "shield", wait)

    def check_connection(self, ip: str, now: float) -> Verdict:
        """Say whether a new connection from ``ip`` may proceed: refused when blacklisted or
        blocked; with ``strict`` it also counts as a request (and may start a block)."""
        if self._strict:
            return self.check_request(ip, now)
        if self._has_whitelist and ip in self._whitelist:
            return ALLOW
        if self._has_blacklist and ip in self._blacklist:
            return _BLACKLISTED
        entry = self._table.peek(ip, now)
        if entry is not None and entry.held_until > now:
            return Verdict(False, "shield", entry.held_until - now)
        return ALLOW

    # -- exact sliding window --------------------------------------------------------------

    def _new_ring(self, now: float) -> _Ring:
        entry = _Ring(self._template[:])
        entry.stamps[0] = now
        entry.pos = 1 if self._max > 1 else 0
        return entry

    def _hit_ring(self, entry: _Ring, now: float) -> float | None:
        stamps, pos = entry.stamps, entry.pos
        oldest = stamps[pos]
        if oldest > now - self._window:
            return max(oldest + self._window - now, 0.0)
        stamps[pos] = now
        pos += 1
        entry.pos = 0 if pos == self._max else pos
        return None

    # -- two-bucket approximation ------------------------------------------------------------

    def _new_buckets(self, now: float) -> _Buckets:
        entry = _Buckets(int(now // self._window))
        entry.cur = 1
        return entry

    def _hit_buckets(self, entry: _Buckets, now: float) -> float | None:
        window = self._window
        index = int(now // window)
        if index != entry.index:
            entry.prev = entry.cur if index == entry.index + 1 else 0
            entry.cur = 0
            entry.index = index
        into = now - index * window
        estimate = entry.prev * (1.0 - into / window) + entry.cur
        if estimate + 1 > self._max:
            # Approximate: by the end of this bucket the previous one no longer weighs.
            return window - into
        entry.cur += 1
        return None

    # -- token bucket ------------------------------------------------------------------------

    def _new_tokens(self, now: float) -> _Tokens:
        return _Tokens(self._max - 1.0, now)

    def _hit_tokens(self, entry: _Tokens, now: float) -> float | None:
        tokens = entry.tokens
        if now > entry.last:
            tokens = min(float(self._max), tokens + (now - entry.last) * self._rate)
            entry.last = now
        if tokens < 1.0:
            entry.tokens = tokens
            return (1.0 - tokens) / self._rate
        entry.tokens = tokens - 1.0
        return None
