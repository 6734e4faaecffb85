"""Deadlines of many connections on one loop timer, in slots of ``GRAIN`` seconds.

An armed asyncio timer costs ~540 bytes on uvloop (handle, libuv timer, callback), and an
HTTP client connection needs one for its whole life: keep-alive, request head and response
timeouts. Here a connection waiting for a deadline is one entry in the set of its time slot
(~40 bytes), and one loop timer serves every slot. Deadlines fire up to ``GRAIN`` late, never
early: timeouts are seconds long, and what matters is that they fire.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import weakref
from typing import Protocol

log = logging.getLogger(__name__)

#: Slot width in seconds: how late a deadline may fire.
GRAIN = 0.05


class Waker(Protocol):
    def on_deadline(self) -> None:
        """The deadline it was added for has passed (it is no longer in any slot)."""


class Deadlines:
    """The slots of one event loop (``for_loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Waker]] = {}
        #: Slot numbers that have a set, earliest first (each pushed once per set).
        self._order: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        #: The last slot fired: later additions go after it, never into a set being fired.
        self._fired = 0

    def add(self, waker: Waker, when: float) -> int:
        """Call ``waker.on_deadline()`` once, at ``when`` or up to ``GRAIN`` later; return the
        slot, which ``remove`` needs to take it back."""
        slot = max(math.ceil(when / GRAIN), self._fired + 1)
        wakers = self._slots.get(slot)
        if wakers is None:
            wakers = self._slots[slot] = set()
            heapq.heappush(self._order, slot)
            if self._timer is None or slot < self._timer_slot:
                self._arm(slot)
        wakers.add(waker)
        return slot

    def remove(self, waker: Waker, slot: int) -> None:
        wakers = self._slots.get(slot)
        if wakers is not None:
            wakers.discard(waker)  # an emptied set stays until its slot comes: one wake-up

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * GRAIN, self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = math.floor(self._loop.time() / GRAIN + 1e-6)  # a timer a hair early is on time
        order = self._order
        firing = []
        while order and order[0] <= due:
            firing.append(heapq.heappop(order))
        self._fired = max(self._fired, due)
        for slot in firing:
            wakers = self._slots[slot]
            for waker in list(wakers):
                if waker in wakers:  # not removed by an earlier one's callback
                    wakers.discard(waker)
                    try:
                        waker.on_deadline()
                    except Exception:  # a bug in one connection: the others still wake
                        log.exception("deadline callback of %r failed", waker)
            del self._slots[slot]
        if order and self._timer is None:
            self._arm(order[0])


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The deadlines of ``loop`` (one set of slots and one timer per loop)."""
    deadlines = _LOOPS.get(loop)
    if deadlines is None:
        deadlines = _LOOPS[loop] = Deadlines(loop)
    return deadlines
