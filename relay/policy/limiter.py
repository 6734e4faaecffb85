"""climiter and rlimiter with gost v3's semantics.

A limiter is a list of lines ``<scope> <limit>`` (``LimiterConfig.limits``):

* ``$``: the service as a whole (all clients together);
* ``$$``: each client IP on its own;
* an IP or CIDR: each client IP inside it on its own, instead of ``$$`` (gost: "when a limit
  is set for a specific IP or CIDR, ``$$`` is ignored"). Like gost, the limit applies per IP,
  not to the network as a whole. When several lines contain an IP, the most specific one
  (longest prefix) wins.

A client must fit both its own limit and the service's; ``$`` and the per-IP limit combine,
they do not replace each other. A scope without a line is unlimited. When a line repeats a
scope, the later one wins (gost builds a map from the lines).

``ConnLimiter`` counts concurrent connections; ``RateLimiter`` requests per second with token
buckets. As in gost (``golang.org/x/time/rate`` with burst ``int(r) + 1``), a bucket of rate
``r`` holds ``r + 1`` tokens: a quiet client may send ``r + 1`` requests at once, then ``r``
per second.

Neither touches the clock: :meth:`RateLimiter.allow` takes ``now`` (``loop.time()``).
"""

from __future__ import annotations

import math

from relay.config.model import LimiterConfig
from relay.config.values import parse_limit_line
from relay.policy.ipmatch import IPMatcher
from relay.policy.table import BoundedTable, Slot

__all__ = ["ConnLimiter", "LimitPlan", "RateLimiter"]


class LimitPlan:
    """The parsed lines of one limiter. ``service`` and ``per_ip`` are 0 when unset.
    Raises ValueError for a malformed line (the config loader has already refused those)."""

    __slots__ = ("_matcher", "_overrides", "per_ip", "service", "tracks_ips")

    def __init__(self, lines: tuple[str, ...]) -> None:
        self.service = 0
        self.per_ip = 0
        overrides: dict[str, int] = {}
        for line in lines:
            scope, limit_text = parse_limit_line(line).split(" ")
            limit = int(limit_text)
            if scope == "$":
                self.service = limit
            elif scope == "$$":
                self.per_ip = limit
            else:
                overrides.pop(scope, None)  # re-insert: the later line is the one matched
                overrides[scope] = limit
        self._overrides = overrides
        self._matcher = IPMatcher(overrides) if overrides else None
        #: Whether any client IP has a limit of its own (``$$`` or an IP/CIDR line).
        self.tracks_ips = self.per_ip > 0 or self._matcher is not None

    def ip_limit(self, ip: str) -> int:
        """The limit of ``ip`` on its own: the most specific IP/CIDR line containing it, else
        ``$$``; 0 = unlimited."""
        if self._matcher is not None:
            scope = self._matcher.match_cidr(ip)
            if scope is not None:
                return self._overrides[scope]
        return self.per_ip


class _Conns:
    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.count = 1
        self.limit = limit


class ConnLimiter:
    """Concurrent connections per service (``$``) and per client IP (``$$``, IP/CIDR).

    Call :meth:`acquire` when a connection is accepted and, only if it returned True,
    :meth:`release` exactly once when that connection closes.

    Per-IP state: a counter per IP with at least one open connection, removed when its count
    drops to 0. Entries cannot expire (each stands for live connections) and evicting one would
    lose count, so the table is a plain dict capped at ``max_entries`` rather than a
    :class:`~relay.policy.table.BoundedTable` (its LRU and expiry would never apply). When it
    is full, a connection from an IP that is limited and not yet tracked is refused
    (``untracked`` counts them): the limiter fails closed, since ``max_entries`` distinct IPs
    holding connections at once is itself the overload it exists to stop. IPs with no limit of
    their own take no entry.
    """

    __slots__ = ("_active", "_max", "_per_ip", "_plan", "name", "untracked")

    def __init__(self, config: LimiterConfig, max_entries: int = 100_000) -> None:
        self.name = config.name
        self._plan = LimitPlan(config.limits)
        self._max = max_entries
        self._per_ip: dict[str, _Conns] = {}
        self._active = 0
        #: Connections refused because the per-IP table was full.
        self.untracked = 0

    @property
    def active(self) -> int:
        """Connections currently held (all IPs)."""
        return self._active

    @property
    def entries(self) -> int:
        """IPs with at least one counted connection."""
        return len(self._per_ip)

    def count(self, ip: str) -> int:
        """Open connections counted for ``ip`` (0 when it has no limit of its own)."""
        entry = self._per_ip.get(ip)
        return entry.count if entry is not None else 0

    def acquire(self, ip: str) -> bool:
        """Take a connection slot for ``ip``; False (nothing taken) when the service or the
        IP is at its limit."""
        plan = self._plan
        if plan.service and self._active >= plan.service:
            return False
        if plan.tracks_ips:
            per_ip = self._per_ip
            entry = per_ip.get(ip)
            if entry is not None:
                if entry.count >= entry.limit:
                    return False
                entry.count += 1
            else:
                limit = plan.ip_limit(ip)
                if limit:
                    if len(per_ip) >= self._max:
                        self.untracked += 1
                        return False
                    per_ip[ip] = _Conns(limit)
        self._active += 1
        return True

    def release(self, ip: str) -> None:
        """Give back a slot taken by a successful :meth:`acquire` for ``ip``. Extra calls never
        drive a count below 0, but they do free someone else's slot: call it exactly once."""
        if self._active > 0:
            self._active -= 1
        entry = self._per_ip.get(ip)
        if entry is not None:
            entry.count -= 1
            if entry.count <= 0:
                del self._per_ip[ip]


class _Bucket(Slot):
    __slots__ = ("last", "rate", "tokens")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate + 1)
        self.last = now


class RateLimiter:
    """Requests per second per service (``$``) and per client IP (``$$``, IP/CIDR).

    A request is allowed when both the service bucket and the IP's bucket hold a token; then
    both are charged. A refused request charges nothing.

    Per-IP buckets live in a :class:`~relay.policy.table.BoundedTable` of ``max_entries``.
    An entry expires once its bucket would be full again (at most 2 s idle), so expiry loses
    nothing; under a flood of new IPs the least recently used bucket is evicted (that IP gets
    a full bucket again when it returns, so the cap can only make the limiter more lenient).
    Nothing is ever held, so every IP is tracked. Each entry also remembers the IP's limit, so
    the IP/CIDR lookup runs once per tracked IP, not once per request.
    """

    __slots__ = ("_plan", "_svc_last", "_svc_rate", "_svc_tokens", "_table", "name")

    def __init__(self, config: LimiterConfig, max_entries: int = 100_000) -> None:
        self.name = config.name
        self._plan = LimitPlan(config.limits)
        self._svc_rate = float(self._plan.service)
        self._svc_tokens = self._svc_rate + 1.0
        self._svc_last = -math.inf
        # (r + 1) / r tokens to refill at r per second: at most 2 s for r >= 1.
        self._table: BoundedTable[_Bucket] = BoundedTable(max_entries, 2.0)

    @property
    def entries(self) -> int:
        """IPs with a bucket."""
        return len(self._table)

    def allow(self, ip: str, now: float) -> bool:
        """Whether a request from ``ip`` at ``now`` fits the limits; charges it if so."""
        # DANGER ZONE: once per request.
        svc_rate = self._svc_rate
        svc_tokens = self._svc_tokens
        if svc_rate:
            if now > self._svc_last:
                svc_tokens = min(svc_rate + 1.0, svc_tokens + (now - self._svc_last) * svc_rate)
                self._svc_last = now
                self._svc_tokens = svc_tokens
            if svc_tokens < 1.0:
                return False
        if self._plan.tracks_ips:
            table = self._table
            entry = table.get(ip, now)
            if entry is None:
                entry = _Bucket(self._plan.ip_limit(ip), now)
                table.add(ip, entry, now)  # never refused: nothing in this table is held
            rate = entry.rate
            if rate:
                tokens = entry.tokens
                if now > entry.last:
                    tokens = min(rate + 1.0, tokens + (now - entry.last) * rate)
                    entry.last = now
                if tokens < 1.0:
                    entry.tokens = tokens
                    return False
                entry.tokens = tokens - 1.0
        if svc_rate:
            self._svc_tokens = svc_tokens - 1.0
        return True
