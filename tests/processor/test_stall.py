"""The per-partition stall rule of the worker's watchdogs."""

from __future__ import annotations

import pytest

from services.ops.consumer_lag import PartitionLag
from services.processor.stall import StallTracker

pytestmark = pytest.mark.unit

FACTS = "casestream-worker-facts-by-case"


def lags(*committed_high: tuple[int, int]) -> list[PartitionLag]:
    return [PartitionLag(FACTS, i, c, h) for i, (c, h) in enumerate(committed_high)]


def test_one_moving_partition_does_not_hide_a_stuck_one():
    tracker = StallTracker(window=45)
    assert tracker.stuck(lags((100, 500), (10, 10)), now=0) == []
    assert tracker.stuck(lags((100, 500), (11, 12)), now=30) == []
    assert tracker.stuck(lags((100, 510), (12, 13)), now=60) == [(FACTS, 0, 410, 60)]


def test_a_moving_or_caught_up_partition_is_never_stuck():
    tracker = StallTracker(window=45)
    for t, committed in enumerate([100, 150, 200, 250]):
        assert tracker.stuck(lags((committed, 1000)), now=t * 40) == []
    tracker = StallTracker(window=45)
    for t in range(5):
        assert tracker.stuck(lags((500, 500)), now=t * 40) == []


def test_the_clock_starts_when_messages_wait_not_at_the_last_commit():
    tracker = StallTracker(window=45)
    assert tracker.stuck(lags((500, 500)), now=0) == []  # idle for an hour, nothing waiting
    assert tracker.stuck(lags((500, 500)), now=3600) == []  # last check with nothing waiting
    assert tracker.stuck(lags((500, 501)), now=3610) == []  # a message arrived meanwhile
    assert tracker.stuck(lags((500, 501)), now=3645) == []  # 45 s after: within the window
    assert tracker.stuck(lags((500, 501)), now=3650) == [(FACTS, 0, 1, 50)]


def test_an_excuse_restarts_the_clocks():
    tracker = StallTracker(window=45)
    tracker.stuck(lags((100, 500)), now=0)
    tracker.excuse(now=40)  # e.g. a batch waits for ClickHouse
    assert tracker.stuck(lags((100, 500)), now=60) == []
    assert tracker.stuck(lags((100, 500)), now=90) == [(FACTS, 0, 400, 50)]
    tracker.excuse(now=100, topics=["agency.20-INSP.events"])  # other topics only
    assert tracker.stuck(lags((100, 500)), now=101) == [(FACTS, 0, 400, 61)]


def test_a_shorter_window_names_suspects_without_moving_the_clocks():
    tracker = StallTracker(window=45)
    tracker.stuck(lags((100, 500)), now=0)
    assert tracker.stuck(lags((100, 500)), now=20, window=15) == [(FACTS, 0, 400, 20)]
    assert tracker.stuck(lags((100, 500)), now=20) == []  # not yet stuck for the real window
    assert tracker.stuck(lags((100, 500)), now=50) == [(FACTS, 0, 400, 50)]


def test_only_the_partitions_this_process_owns_are_judged():
    tracker = StallTracker(window=45)
    owned = {(FACTS, 0)}
    assert tracker.stuck(tracker.only(lags((10, 50), (10, 50)), owned), now=0) == []
    judged = tracker.only(lags((10, 50), (10, 50)), owned)
    assert [p.partition for p in judged] == [0]
    assert tracker.stuck(judged, now=60) == [(FACTS, 0, 40, 60)]


def test_a_partition_given_back_later_starts_a_fresh_clock():
    tracker = StallTracker(window=45)
    both = {(FACTS, 0), (FACTS, 1)}
    tracker.stuck(tracker.only(lags((10, 50), (10, 50)), both), now=0)
    tracker.only(lags((10, 50), (10, 50)), {(FACTS, 0)})  # partition 1 moved to another member
    back = tracker.only(lags((10, 50), (10, 50)), both)  # and came back, still not moved
    assert tracker.stuck(back, now=60) == [(FACTS, 0, 40, 60)]
