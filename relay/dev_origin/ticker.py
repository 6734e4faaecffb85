"""``_Ticker``: one loop timer per millisecond slot, shared by every token stream."""

from __future__ import annotations

import asyncio
import math
from typing import Protocol


class _Tickable(Protocol):
    def tick(self) -> None:
        """Called by ``_Ticker`` at (or just after) the time it was scheduled for."""


class _Ticker:
    """Coalesces per-stream deadlines into one loop timer per millisecond slot.

    Why not ``loop.call_at`` per stream: each timer costs a handle allocation plus heap insert
    and removal in the loop, and 10,000 streams at 20 ms make that 500,000 timers a second.
    Streams started close together share slots here, so the loop sees at most one timer per
    millisecond however many streams there are. Measured (2 vCPU, uvloop, 2000 loopback streams,
    server-process CPU from /proc, two runs each): 150 tokens at 20 ms, per-stream ``call_at``
    6.8-7.2 CPU-s vs this ticker 5.7 (user time 2.9-3.5 vs 2.3); 60 tokens at 50 ms, 3.5-3.6 vs
    2.6-2.9. So ~20% less CPU overall, a third less user time; the rest is ``write`` syscalls.

    Deadlines are rounded *up* to the millisecond, so a stream never fires early; the lateness
    this adds is below 1 ms. Cancelled streams are not removed from their slot (that would be a
    linear search); they are expected to ignore ``tick`` once dead.
    """

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[_Tickable]] = {}

    def time(self) -> float:
        """The loop clock that ``call_at`` deadlines are expressed in."""
        return self._loop.time()

    def call_at(self, when: float, target: _Tickable) -> None:
        """Call ``target.tick()`` once, no earlier than loop time ``when``."""
        slot = math.ceil(when * 1000.0)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [target]
            self._loop.call_at(slot / 1000.0, self._fire, slot)
        else:
            bucket.append(target)

    def _fire(self, slot: int) -> None:
        # Pop first: a target rescheduling itself into this same slot (interval 0) must get a
        # fresh bucket and timer rather than extend the list we are iterating.
        for target in self._slots.pop(slot):
            target.tick()
