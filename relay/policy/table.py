"""A bounded table of per-key (per client IP) policy state.

The contract every policy relies on:

* **Expiry.** An entry untouched for ``ttl`` seconds is stale: :meth:`BoundedTable.get`
  drops it and reports the key as unknown, so the caller starts over with fresh state. Each
  user picks a ``ttl`` after which fresh state is equivalent to the old one (a full token
  bucket, an empty window), which makes expiry lossless.
* **Cap.** There are never more than ``max_entries`` entries. To add a key to a full table,
  an entry is evicted, in this order: an expired live entry, a held entry whose hold ended,
  the least recently used live entry.
* **Holds.** A held entry (a blocked IP) is never evicted or expired before its hold ends,
  whatever the pressure. If every entry is held, :meth:`BoundedTable.add` refuses the new key
  and the caller must decide what "untracked" means for it (each policy documents its choice).

Live entries sit in an OrderedDict in least-recently-used order. Every live entry has the same
``ttl``, so that order is also expiry order and the oldest entry is always at the front: both
"expired first" and "then LRU" are a look at the front, O(1). Held entries sit in a second
OrderedDict in the order their holds started; with one block duration per policy that is the
order the holds end, so the front is the first to end. (With mixed durations the front may
end later than one behind it; then a new key may be refused while a hold has already ended,
which is safe: nothing held is ever lost early.)

Memory: the two OrderedDicts cost about 150 B per entry once churn has grown them to the
capacity CPython keeps them at (about 3x the entry count, in slots), plus the key string
(about 60 B for an IPv4 text, shared when the caller passes one string to several policies)
and the entry object. Measured under a flood at a cap of 100,000 on CPython 3.11: about 460 B
per IP for the shield's state (exact window of 10), 330 B for CC's, 710 B for both sharing the
key strings (tests/test_policy_memory.py).

Not thread-safe: one table belongs to one event loop. Time is whatever clock the caller
passes as ``now`` (the loop clock), in seconds, and it must not go backwards (LRU order is
taken for expiry order).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["FOREVER", "BoundedTable", "Slot"]

#: A hold that never ends by itself (the owner removes the entry explicitly).
FOREVER = math.inf


class Slot:
    """Base class of table entries. Subclasses add their own ``__slots__``.

    ``seen`` is the last time the entry was touched, ``held_until`` the end of its hold
    (0 when not held). Both are maintained by the table, which sets them in
    :meth:`BoundedTable.add` (so subclass constructors need not call this one, and on the
    path of every new key they do not); treat them as read-only.
    """

    __slots__ = ("held_until", "seen")

    def __init__(self) -> None:
        self.seen = 0.0
        self.held_until = 0.0


E = TypeVar("E", bound=Slot)


class BoundedTable(Generic[E]):
    """Per-key state with expiry after ``ttl`` seconds and at most ``max_entries`` entries.

    ``evictions`` counts live entries dropped to make room before they expired (a sign the
    cap is too small for the traffic); expired and ended entries are not counted.
    """

    __slots__ = ("_held", "_live", "_max", "_ttl", "evictions")

    def __init__(self, max_entries: int, ttl: float) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        self._max = max_entries
        self._ttl = ttl
        self._live: OrderedDict[str, E] = OrderedDict()
        self._held: OrderedDict[str, E] = OrderedDict()
        self.evictions = 0

    @property
    def max_entries(self) -> int:
        return self._max

    def __len__(self) -> int:
        return len(self._live) + len(self._held)

    @property
    def held_count(self) -> int:
        """Entries currently held (some may have ended and not been collected yet)."""
        return len(self._held)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry, stale or not. For tests and introspection."""
        return key in self._live or key in self._held

    def get(self, key: str, now: float) -> E | None:
        """The entry of ``key``, or None if there is none, it expired, or its hold ended (in
        those cases the stale entry is removed first). A live entry becomes the most recently
        used; a held entry is returned as is (check ``held_until > now``)."""
        # DANGER ZONE: runs for every request of every policy. One dict lookup on a hit.
        entry = self._live.get(key)
        if entry is not None:
            if now - entry.seen > self._ttl:
                del self._live[key]
                return None
            entry.seen = now
            self._live.move_to_end(key)
            return entry
        if self._held:
            entry = self._held.get(key)
            if entry is not None:
                if entry.held_until <= now:
                    del self._held[key]
                    return None
                return entry
        return None

    def peek(self, key: str, now: float) -> E | None:
        """Like :meth:`get` for a current entry, but without touching it (its LRU position
        and ``seen`` stay as they were) and without removing stale ones."""
        entry = self._live.get(key)
        if entry is not None:
            return entry if now - entry.seen <= self._ttl else None
        if self._held:
            entry = self._held.get(key)
            if entry is not None and entry.held_until > now:
                return entry
        return None

    def add(self, key: str, entry: E, now: float) -> bool:
        """Track ``entry`` for ``key`` (which must have no entry: call :meth:`get` first).

        Evicts to make room when full (see the module docstring). Returns False, tracking
        nothing, when the table is full of entries that are held and whose holds have not
        ended. Amortized O(1).
        """
        # DANGER ZONE: runs for every new key of a flood; unrolled on purpose.
        live, held, ttl = self._live, self._held, self._ttl
        room = self._max - len(live) - len(held)
        if live:
            # The front is the oldest live entry: if anything is expired, it is. Sweep up
            # to two, so the table shrinks back as a burst of keys goes quiet.
            first = next(iter(live))
            if now - live[first].seen > ttl:
                del live[first]
                room += 1
                if live:
                    first = next(iter(live))
                    if now - live[first].seen > ttl:
                        del live[first]
                        room += 1
        if room <= 0:
            # Full, and nothing live has expired: a hold that ended, else the LRU entry.
            ended = None
            if held:
                ended = next(iter(held))
                if held[ended].held_until > now:
                    ended = None
            if ended is not None:
                del held[ended]
            elif live:
                live.popitem(last=False)
                self.evictions += 1
            else:
                return False
        entry.seen = now
        entry.held_until = 0.0
        live[key] = entry
        return True

    def hold(self, key: str, until: float) -> None:
        """Hold the entry of ``key`` until ``until``: it can be neither evicted nor expired
        before then. Holding a held entry moves its end (and its place in the end order).
        KeyError if ``key`` has no entry."""
        entry = self._live.pop(key, None)
        if entry is None:
            entry = self._held.pop(key)
        entry.held_until = until
        self._held[key] = entry

    def discard(self, key: str) -> None:
        """Forget ``key`` (held or not); no-op if it has no entry."""
        if self._live.pop(key, None) is None:
            self._held.pop(key, None)

    def expire(self, now: float, budget: int = 1024) -> int:
        """Drop up to ``budget`` expired live entries and ended holds; returns how many.
        Optional: a caller with a periodic timer can use it to give memory back sooner."""
        removed = 0
        live, ttl = self._live, self._ttl
        while removed < budget and live:
            first = next(iter(live))
            if now - live[first].seen <= ttl:
                break
            del live[first]
            removed += 1
        held = self._held
        while removed < budget and held:
            first = next(iter(held))
            if held[first].held_until > now:
                break
            del held[first]
            removed += 1
        return removed
