"""Write-behind: one write in flight, finished in order, and before a new consumer generation."""

from __future__ import annotations

import asyncio

import pytest

from services.processor.write_behind import WriteBehind
from services.processor.written_offsets import Skip, WrittenOffsets

pytestmark = pytest.mark.unit


def _run(coro):
    return asyncio.run(coro)


def test_each_write_starts_after_the_previous_one_finished_and_is_noted_in_order():
    log: list[str] = []

    async def write(name: str, seconds: float) -> None:
        log.append(f"start {name}")
        await asyncio.sleep(seconds)
        log.append(f"noted {name}")

    async def main() -> None:
        behind = WriteBehind()
        await behind.submit(write("a", 0.05), generation=1)
        await asyncio.sleep(0.01)
        log.append("derive b")  # the next batch is derived while a is written
        await behind.submit(write("b", 0.0), generation=1)
        await behind.settle()

    _run(main())
    assert log == ["start a", "derive b", "noted a", "start b", "noted b"]


def test_a_new_generation_finishes_the_write_in_flight_first_and_the_same_one_does_not():
    async def main() -> tuple[bool, bool]:
        behind = WriteBehind()
        await behind.submit(asyncio.sleep(0.05), generation=1)
        await behind.settle_before(1)
        same = behind.in_flight
        await behind.settle_before(2)
        return same, behind.in_flight

    assert _run(main()) == (True, False)


def test_a_failed_write_is_raised_to_the_next_batch():
    async def fail() -> None:
        raise RuntimeError("ClickHouse refused")

    async def main() -> None:
        behind = WriteBehind()
        await behind.submit(fail(), generation=1)
        await behind.submit(asyncio.sleep(0), generation=1)

    with pytest.raises(RuntimeError, match="refused"):
        _run(main())


def test_why_a_rebalance_must_not_come_between_a_batch_and_its_note():
    """The hazard `settle_before` prevents: after a new assignment resets the committable
    offset to an older commit, the note of a write derived before it reads as a skip (and the
    worker would restart)."""
    written = WrittenOffsets()
    written.assigned("p0", 0)
    written.written([("p0", 0), ("p0", 1)])  # batch 1, noted; the broker still has commit 0
    written.derived([("p0", 2), ("p0", 3)])  # batch 2, write in flight
    written.assigned("p0", 0, generation=1)  # the rebalance, seen by the next batch
    assert written.written([("p0", 2), ("p0", 3)]) == [Skip("p0", 0, 1)]
