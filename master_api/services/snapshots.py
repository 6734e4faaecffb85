"""Short-lived snapshots of database reads that many callers share (STYLE D3: why it exists).

The AgentService answers a heartbeat from every node every few seconds; reading the active
pointers, the whole inventory (a render's peers) and the node itself from the database for each
call would make the store the bottleneck of a large fleet (nx-27017 does ~1.5k operations per
second on one thread). Callers that can accept a value ``max_age`` seconds old share one read;
``max_age=0`` always reads. Thread-safe: a snapshot being refreshed is read once, not by every
waiting thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Snapshot", "SnapshotMap"]

T = TypeVar("T")
K = TypeVar("K")


class Snapshot(Generic[T]):
    """One value, loaded by ``load`` and reused while younger than the caller's ``max_age``."""

    def __init__(self, load: Callable[[], T], clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = -float("inf")

    def get(self, max_age: float = 0.0) -> T:
        """The value, read afresh unless the last read is at most ``max_age`` seconds old.
        Errors of ``load`` propagate (nothing is cached then)."""
        if max_age <= 0:
            return self._load()
        with self._lock:
            if self._value is None or self._clock() - self._at > max_age:
                self._value = self._load()
                self._at = self._clock()
            return self._value


class SnapshotMap(Generic[K, T]):
    """Values by key, each with the time it was stored; stale entries are simply replaced."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[K, tuple[T, float]] = {}

    def get(self, key: K, max_age: float) -> T | None:
        """The value stored for ``key`` at most ``max_age`` seconds ago, else None."""
        with self._lock:
            item = self._items.get(key)
        if item is None or self._clock() - item[1] > max_age:
            return None
        return item[0]

    def put(self, key: K, value: T) -> None:
        with self._lock:
            self._items[key] = (value, self._clock())

    def drop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)
