"""The idle upstream pool lets go of connections nobody came back for (found by bench/soak.py:
after the load stopped, pooled tunnels and the origin connections behind them stayed open)."""

from __future__ import annotations

import asyncio

from relay.pool import UpstreamPool


class Conn:
    """An in-memory stand-in for an upstream connection: only closed/close matter here."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_idle_connections_are_closed_without_further_use() -> None:
    loop = asyncio.get_running_loop()
    pool: UpstreamPool[Conn] = UpstreamPool(idle_timeout=0.2)
    first, second = Conn(), Conn()
    pool.put("a", first, loop.time())
    await asyncio.sleep(0.1)
    pool.put("b", second, loop.time())
    await asyncio.sleep(0.15)
    assert first.closed and not second.closed  # each goes at its own deadline
    await asyncio.sleep(0.15)
    assert second.closed and len(pool) == 0
    third = Conn()
    pool.put("a", third, loop.time())  # the sweep re-arms for later arrivals
    await asyncio.sleep(0.3)
    assert third.closed


async def test_a_connection_taken_back_is_not_swept() -> None:
    loop = asyncio.get_running_loop()
    pool: UpstreamPool[Conn] = UpstreamPool(idle_timeout=0.2)
    conn = Conn()
    pool.put("a", conn, loop.time())
    assert pool.take("a", loop.time()) is conn
    await asyncio.sleep(0.3)
    assert not conn.closed
    pool.close_all()
