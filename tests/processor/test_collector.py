"""The worker's processes collect reference cycles on a clock, not on allocation counts."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.processor.collector import ClockedCollector

pytestmark = pytest.mark.unit


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def clock() -> Iterator[list[float]]:
    now = [100.0]
    enabled = gc.isenabled()
    yield now
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_cycles_wait_for_the_clock_not_for_allocations(clock: list[float]) -> None:
    collector = ClockedCollector(young_every=5, full_every=60, clock=lambda: clock[0])
    collector.start()
    assert not gc.isenabled()
    garbage = _cycle()
    kept = [[i] for i in range(50_000)]  # far past the automatic collector's 700 allocations
    assert garbage() is not None and collector.tick() is None
    clock[0] += 5
    assert collector.tick() == "young"
    assert garbage() is None  # collected within one period
    assert len(kept) == 50_000


def test_a_full_collection_comes_when_due_and_resets_the_young_clock(
    clock: list[float],
) -> None:
    collector = ClockedCollector(young_every=5, full_every=12, clock=lambda: clock[0])
    collector.start()
    ticks = []
    for _ in range(6):
        clock[0] += 4
        ticks.append(collector.tick())
    # t=4: none, 8: young (due at 5), 12: full (due at 12), 16: none (young due at 17), 20: young
    assert ticks == [None, "young", "full", None, "young", "full"]
    assert collector.collections == {"young": 2, "full": 2}


def test_what_existed_at_start_is_frozen_out_of_the_collections(clock: list[float]) -> None:
    ClockedCollector(clock=lambda: clock[0]).start()
    assert gc.get_freeze_count() > 0
