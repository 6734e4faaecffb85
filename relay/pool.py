"""Idle keep-alive upstream connections of one service, shared by all its client connections.

Opening a tunnel costs the chain's handshakes (TCP, TLS or WebSocket, the relay header); an
SSE request that finds an idle one starts at once. Connections are kept per destination (the
first-hop node and target the selectors chose), so pooling never overrides node selection or
fail-back. Each destination's list is LIFO (the most recently used connection is the least
likely to have been closed by its peer) and bounded, and connections idle longer than
``idle_timeout`` are dropped: when the pool is next used, or by a sweep timer (one per pool,
armed only while it holds connections), so a pool nobody uses any more does not hold its
tunnels, and the origin connections behind them, forever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Reusable(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


T = TypeVar("T", bound=Reusable)


class UpstreamPool(Generic[T]):
    def __init__(self, max_idle: int = 128, idle_timeout: float = 30.0) -> None:
        #: Idle connections kept per destination.
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, deque[tuple[T, float]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def take(self, key: Hashable, now: float) -> T | None:
        """The most recently returned live connection to ``key``, or None."""
        idle = self._idle.get(key)
        while idle:
            connection, since = idle.pop()
            if connection.closed:
                continue
            if now - since > self.idle_timeout:
                connection.close()
                continue
            return connection
        return None

    def put(self, key: Hashable, connection: T, now: float) -> None:
        """Keep ``connection`` for the next request to ``key``; the oldest goes when full."""
        idle = self._idle.setdefault(key, deque())
        while idle and (idle[0][0].closed or now - idle[0][1] > self.idle_timeout):
            stale, _ = idle.popleft()
            stale.close()
        if len(idle) >= self.max_idle:
            oldest, _ = idle.popleft()
            oldest.close()
        idle.append((connection, now))
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_at(now + self.idle_timeout, self._sweep, loop)

    def expire(self, now: float) -> None:
        """Close the connections idle longer than ``idle_timeout`` (and forget closed ones)."""
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (idle[0][0].closed or now - idle[0][1] > self.idle_timeout):
                stale, _ = idle.popleft()
                stale.close()
            if not idle:
                del self._idle[key]

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        self.expire(now)
        if self._idle:
            oldest = min(idle[0][1] for idle in self._idle.values())
            self._sweeper = loop.call_at(oldest + self.idle_timeout + 0.001, self._sweep, loop)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            while idle:
                connection, _ = idle.pop()
                connection.close()
        self._idle.clear()
