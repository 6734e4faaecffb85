"""``relay.deadlines``: many connections' deadlines on one loop timer, never early."""

from __future__ import annotations

import asyncio

import pytest

from relay import deadlines
from relay.deadlines import GRAIN, Deadlines


class Recorder:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, log: list[tuple[str, float]]):
        self.loop = loop
        self.name = name
        self.log = log
        self.then: list[object] = []  # what to do when woken (callables)

    def on_deadline(self) -> None:
        self.log.append((self.name, self.loop.time()))
        for action in self.then:
            action()  # type: ignore[operator]


async def test_each_waker_fires_once_in_order_never_before_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    slots = Deadlines(loop)
    log: list[tuple[str, float]] = []
    start = loop.time()
    # More than a slot apart: within one slot the order is not kept (they are all due).
    wanted = {"c": start + 0.30, "a": start + 0.10, "b": start + 0.10 + 2 * GRAIN}
    for name, when in wanted.items():
        slots.add(Recorder(loop, name, log), when)

    while len(log) < 3 and loop.time() < start + 5:
        await asyncio.sleep(GRAIN)

    assert [name for name, _ in log] == ["a", "b", "c"]
    for name, fired in log:
        # Never early, but for the loop's own clock resolution (a timer may run ~1 ms early).
        assert fired >= wanted[name] - 0.002


async def test_a_removed_waker_never_fires_even_when_removed_by_a_neighbour_in_its_slot() -> None:
    loop = asyncio.get_running_loop()
    slots = Deadlines(loop)
    log: list[tuple[str, float]] = []
    when = loop.time() + 0.05
    first, second, third = (Recorder(loop, n, log) for n in ("first", "second", "third"))
    slots.remove(first, slots.add(first, when))
    second_slot = slots.add(second, when)
    third_slot = slots.add(third, when)
    # Whichever of the two fires first takes the other one out (a callback closing another
    # connection): exactly one of them fires.
    second.then.append(lambda: slots.remove(third, third_slot))
    third.then.append(lambda: slots.remove(second, second_slot))

    await asyncio.sleep(0.05 + 3 * GRAIN)

    names = [name for name, _ in log]
    assert second_slot == third_slot
    assert len(names) == 1 and names[0] in ("second", "third")


async def test_a_waker_that_asks_again_for_a_past_deadline_is_woken_on_a_later_turn() -> None:
    loop = asyncio.get_running_loop()
    slots = Deadlines(loop)
    log: list[tuple[str, float]] = []
    waker = Recorder(loop, "w", log)
    waker.then.append(lambda: len(log) < 3 and slots.add(waker, loop.time() - 1))
    slots.add(waker, loop.time())

    await asyncio.sleep(5 * GRAIN)

    assert len(log) == 3  # three turns, not a loop inside one


async def test_one_set_of_slots_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert deadlines.for_loop(loop) is deadlines.for_loop(loop)
    other = asyncio.new_event_loop()
    try:
        assert deadlines.for_loop(other) is not deadlines.for_loop(loop)
    finally:
        other.close()


async def test_a_failing_waker_is_logged_and_its_neighbours_still_wake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    slots = Deadlines(loop)
    log: list[tuple[str, float]] = []
    when = loop.time() + 0.05
    wakers = [Recorder(loop, f"w{i}", log) for i in range(5)]
    wakers[2].then.append(lambda: 1 / 0)
    for waker in wakers:
        slots.add(waker, when)

    await asyncio.sleep(0.05 + 3 * GRAIN)

    assert sorted(name for name, _ in log) == [f"w{i}" for i in range(5)]
    assert "deadline callback" in caplog.text and "ZeroDivisionError" in caplog.text
