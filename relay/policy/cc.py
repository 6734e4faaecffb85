"""CC protection (seed §6.2.2): when a service gets more than ``rate_limit`` requests/s (with
``burst_size``), block its heaviest client IPs for ``block_duration``; light clients keep
passing.

The rule, precisely:

1. **Overload.** A service-wide token bucket (capacity ``burst_size``, refilled at
   ``rate_limit`` per second) is charged one token per request. A request that finds it empty
   is *over the limit*. The bucket only measures: it never refuses a request by itself.
2. **Intervals.** Time is cut into aligned intervals of ``check_interval`` seconds. Per
   interval the guard counts, per client IP, its requests (``count``); the number of
   distinct IPs (``clients``); their requests (``total``); and the over-limit requests
   (``excess``). An interval with ``excess > 0`` is overloaded.
3. **Heavy.** When an interval ends overloaded, an IP is *heavy* for it when both

   * it belongs to the smallest set of heaviest IPs whose requests cover the excess: the IPs
     are ranked in power-of-two classes of ``count`` (``[1,2)``, ``[2,4)``, ``[4,8)``, ...)
     and an IP is in the set when the IPs in the classes strictly above its own together
     sent fewer than ``excess`` requests (IPs in one class are treated as equals), and
   * it stands out: its ``count`` is above the mean (``count > total / clients``), or it
     alone sent more than the whole service may in an interval
     (``count > rate_limit * check_interval``). So when an overload is spread evenly over
     many ordinary clients, none is singled out, while a few equal bots with nobody else
     around are still caught.
4. **Block.** A heavy IP is blocked for ``block_duration`` at its first request of the next
   interval (that request is refused with reason ``cc``). So a flood is stopped one interval
   after it starts, and an IP that stopped on its own is never blocked. Requests refused
   during a block are not counted anywhere, so the bucket refills as the heavy IPs go quiet.

Why this rule: the classes make each step O(1) (one counter per class; a class change when a
count reaches a power of two), with no sort and no scan of the clients. The excess rule
targets the contributors that, removed, would have kept the service under its limit (to within
the factor of two of a class);
the "stands out" rule keeps ordinary clients safe when the overload is spread evenly over many
IPs (a flood spread over many IPs that each send no more than a normal client cannot be told
apart by counts; admission lists, the shield and an upstream filter are the tools for that).

State: one entry per recently active IP (a :class:`~relay.policy.table.BoundedTable`, entries
expire after two intervals). Blocked IPs are held for their whole block; when the table is
full of them a new IP is **untracked**: its requests pass and charge the service bucket but it
cannot be judged or blocked (``untracked`` counts those requests).
"""

from __future__ import annotations

import math

from relay.config.model import CCConfig
from relay.policy.table import BoundedTable, Slot
from relay.policy.verdict import ALLOW, Verdict

__all__ = ["CCGuard"]

# Classes of per-interval counts: class k holds counts in [2**k, 2**(k+1)).
_CLASSES = 64


class _Client(Slot):
    __slots__ = ("count", "interval")

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.count = 1  # created on its first request


class CCGuard:
    """One ``ccs[]`` entry's state for one service. Not thread-safe (one event loop).

    ``now`` is the caller's monotonic clock in seconds (``loop.time()``), non-decreasing.
    """

    __slots__ = (
        "_block",
        "_budget",
        "_burst",
        "_class_sums",
        "_clients",
        "_excess",
        "_interval",
        "_last",
        "_length",
        "_prev_above",
        "_prev_clients",
        "_prev_excess",
        "_prev_total",
        "_rate",
        "_table",
        "_tokens",
        "_total",
        "name",
        "untracked",
    )

    def __init__(self, config: CCConfig, max_entries: int = 100_000) -> None:
        self.name = config.name
        self._rate = float(config.rate_limit)
        self._burst = float(config.burst_size)
        self._block = float(config.block_duration)
        self._length = config.check_interval
        # Requests the whole service may make in one interval.
        self._budget = config.rate_limit * config.check_interval
        self._tokens = self._burst
        self._last = -math.inf  # the first request finds the bucket full
        # The interval being counted ...
        self._interval = -1
        self._class_sums = [0] * _CLASSES
        self._clients = 0
        self._total = 0
        self._excess = 0
        # ... and the verdict data of the one before it, frozen when it ended.
        # _prev_above[k] = requests of the IPs in classes above k.
        self._prev_above = [0] * _CLASSES
        self._prev_clients = 0
        self._prev_total = 0
        self._prev_excess = 0
        #: Requests whose IP could not be tracked (table full of blocked IPs).
        self.untracked = 0
        # An entry is needed until the end of the interval after its last request: two
        # intervals cover that from any point of its own interval.
        self._table: BoundedTable[_Client] = BoundedTable(max_entries, 2 * config.check_interval)

    @property
    def entries(self) -> int:
        """IPs currently tracked (blocked ones included)."""
        return len(self._table)

    @property
    def blocked(self) -> int:
        """IPs currently held in a block (some may have just ended)."""
        return self._table.held_count

    @property
    def overloaded(self) -> bool:
        """Whether the interval being counted has over-limit requests so far."""
        return self._excess > 0

    def check(self, ip: str, now: float) -> Verdict:
        """Count one request from ``ip`` and say whether it may proceed."""
        # DANGER ZONE: once per request; everything here is O(1).
        interval = int(now // self._length)
        if interval != self._interval:
            self._roll(interval)
        table = self._table
        entry = table.get(ip, now)
        if entry is None:
            # A new IP: its first request of the interval, count 1 (class 0).
            if table.add(ip, _Client(interval), now):
                self._class_sums[0] += 1
                self._clients += 1
                self._total += 1
            else:
                self.untracked += 1
        elif entry.held_until > now:
            return Verdict(False, "cc", entry.held_until - now)
        else:
            if entry.interval != interval:
                # First request of this IP in this interval: judge its previous interval.
                last = entry.count if entry.interval == interval - 1 else 0
                entry.interval = interval
                entry.count = 0
                if last and self._heavy(last):
                    if self._block > 0:
                        table.hold(ip, now + self._block)
                    return Verdict(False, "cc", self._block)
            count = entry.count + 1
            entry.count = count
            sums = self._class_sums
            if count & (count - 1) == 0:
                # A power of two: the IP moves up one class, taking its earlier requests.
                k = count.bit_length() - 1
                if k:
                    sums[k - 1] -= count - 1
                else:
                    self._clients += 1
                sums[k] += count
            else:
                sums[count.bit_length() - 1] += 1
            self._total += 1
        # Charge the service bucket (inlined: this is every request's path).
        tokens = self._tokens
        if now > self._last:
            tokens = min(self._burst, tokens + (now - self._last) * self._rate)
            self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
        else:
            self._tokens = tokens
            self._excess += 1
        return ALLOW

    def _heavy(self, count: int) -> bool:
        return (
            self._prev_excess > 0
            and self._prev_above[count.bit_length() - 1] < self._prev_excess
            and (count * self._prev_clients > self._prev_total or count > self._budget)
        )

    def _roll(self, interval: int) -> None:
        """Start counting ``interval``; freeze the one that ended if it was the one before."""
        if interval == self._interval + 1 and self._excess:
            above = self._prev_above
            running = 0
            for k in range(_CLASSES - 1, -1, -1):
                above[k] = running
                running += self._class_sums[k]
            self._prev_clients = self._clients
            self._prev_total = self._total
            self._prev_excess = self._excess
        else:
            # Not overloaded, or an idle gap: nobody is judged heavy at the next requests.
            self._prev_excess = 0
        self._interval = interval
        self._class_sums = [0] * _CLASSES
        self._clients = 0
        self._total = 0
        self._excess = 0
