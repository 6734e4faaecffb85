"""The bounded per-IP table (relay.policy.table): expiry, the cap, LRU eviction, holds."""

from __future__ import annotations

import pytest

from relay.policy.table import FOREVER, BoundedTable, Slot


class Counter(Slot):
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def make(max_entries: int = 3, ttl: float = 10.0) -> BoundedTable[Counter]:
    return BoundedTable(max_entries, ttl)


def test_get_add_and_touch() -> None:
    table = make()
    assert table.get("a", 0.0) is None
    entry = Counter()
    assert table.add("a", entry, 0.0)
    assert table.get("a", 5.0) is entry
    # Touched at 5: still there at 14.9 (less than ttl after the touch).
    assert table.get("a", 14.9) is entry
    assert len(table) == 1 and "a" in table


def test_expired_entries_are_dropped_on_get() -> None:
    table = make(ttl=10.0)
    table.add("a", Counter(), 0.0)
    assert table.peek("a", 10.0) is not None  # exactly ttl: still current
    assert table.get("a", 10.01) is None
    assert "a" not in table


def test_cap_evicts_least_recently_used() -> None:
    table = make(max_entries=3)
    for i, key in enumerate("abc"):
        table.add(key, Counter(), float(i))
    table.get("a", 3.0)  # a is now the most recently used; b the least
    assert table.add("d", Counter(), 4.0)
    assert len(table) == 3
    assert "b" not in table and {"a", "c", "d"} <= {k for k in "abcd" if k in table}
    assert table.evictions == 1


def test_expired_entries_go_before_lru_ones_and_are_not_counted_as_evictions() -> None:
    table = make(max_entries=3, ttl=10.0)
    table.add("old", Counter(), 0.0)
    table.add("b", Counter(), 8.0)
    table.add("c", Counter(), 9.0)
    assert table.add("d", Counter(), 10.5)  # "old" expired at 10
    assert "old" not in table and "b" in table
    assert table.evictions == 0


def test_peek_does_not_touch() -> None:
    table = make(max_entries=2)
    table.add("a", Counter(), 0.0)
    table.add("b", Counter(), 1.0)
    assert table.peek("a", 2.0) is not None
    table.add("c", Counter(), 3.0)  # a is still the LRU one, despite the peek
    assert "a" not in table and "b" in table


def test_held_entries_survive_pressure_and_expiry_until_their_hold_ends() -> None:
    table = make(max_entries=3, ttl=1.0)
    blocked = Counter()
    table.add("bad", blocked, 0.0)
    table.hold("bad", 60.0)
    for i in range(1000):
        table.add(f"k{i}", Counter(), 0.5 + i * 0.01)
        assert len(table) <= 3
    assert table.get("bad", 59.9) is blocked  # far past ttl, still held
    assert table.held_count == 1
    # Once the hold ends the entry is stale: the IP starts afresh.
    assert table.get("bad", 60.0) is None
    assert "bad" not in table


def test_table_full_of_holds_refuses_new_keys() -> None:
    table = make(max_entries=2, ttl=1.0)
    for key in "ab":
        table.add(key, Counter(), 0.0)
        table.hold(key, 100.0)
    assert not table.add("c", Counter(), 50.0)
    assert "c" not in table and len(table) == 2
    # When a hold ends, its slot is reusable.
    assert table.add("c", Counter(), 100.0)
    assert len(table) == 2


def test_hold_again_extends_and_discard() -> None:
    table = make()
    table.add("a", Counter(), 0.0)
    table.hold("a", 10.0)
    table.hold("a", 20.0)
    assert table.get("a", 15.0) is not None
    table.discard("a")
    table.discard("a")  # no-op
    assert "a" not in table
    with pytest.raises(KeyError):
        table.hold("missing", 1.0)


def test_forever_holds_never_end() -> None:
    table = make(max_entries=1, ttl=1.0)
    table.add("pinned", Counter(), 0.0)
    table.hold("pinned", FOREVER)
    assert not table.add("other", Counter(), 1e12)
    assert table.get("pinned", 1e12) is not None


def test_expire_sweeps_stale_entries() -> None:
    table = make(max_entries=100, ttl=1.0)
    for i in range(50):
        table.add(f"k{i}", Counter(), float(i) / 100)
    table.add("held", Counter(), 0.0)
    table.hold("held", 5.0)
    assert table.expire(0.9) == 0
    assert table.expire(10.0, budget=20) == 20
    assert table.expire(10.0) == 31  # the other 30 live entries and the ended hold
    assert len(table) == 0


def test_adding_new_keys_sweeps_expired_ones() -> None:
    # With traffic moving on to new keys, stale ones are collected without any timer.
    table = make(max_entries=10_000, ttl=1.0)
    for i in range(1000):
        table.add(f"a{i}", Counter(), 0.0)
    for i in range(400):
        table.add(f"b{i}", Counter(), 2.0)
    assert len(table) == 400 + (1000 - 2 * 400)  # each addition swept two stale keys
    for i in range(100):
        table.add(f"c{i}", Counter(), 2.0)
    assert len(table) == 500


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        BoundedTable(0, 1.0)
    with pytest.raises(ValueError):
        BoundedTable(1, 0.0)
