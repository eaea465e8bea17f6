"""The facts offsets the worker may commit: never past a fact that was not written."""

from __future__ import annotations

import pytest

from services.processor.written_offsets import Skip, WrittenOffsets

pytestmark = pytest.mark.unit


def test_a_contiguous_batch_moves_the_offset_to_one_past_its_last_fact():
    written = WrittenOffsets()
    written.assigned("p0", 10)
    assert written.committable("p0") == 10
    assert written.written([("p0", 10), ("p0", 11), ("p0", 12)]) == []
    assert written.committable("p0") == 13


def test_a_skipped_offset_is_reported_and_the_offset_stops_before_it():
    written = WrittenOffsets()
    written.assigned("p0", 10)
    # 11 and 12 never reached a batch (faust dropped them); 13 did.
    skips = written.written([("p0", 10), ("p0", 13), ("p0", 14)])
    assert skips == [Skip("p0", 11, 12)]
    assert skips[0].describe() == "p0: offsets 11..12 (2) never processed"
    assert written.committable("p0") == 11
    # Later batches cannot move it over the hole either.
    assert written.written([("p0", 15)]) == [Skip("p0", 11, 14)]
    assert written.committable("p0") == 11


def test_a_batch_starting_past_the_committed_offset_is_a_skip():
    written = WrittenOffsets()
    written.assigned("p1", 100)
    assert written.written([("p1", 101)]) == [Skip("p1", 100, 100)]
    assert written.committable("p1") == 100


def test_replayed_offsets_below_the_committed_one_are_ignored():
    written = WrittenOffsets()
    written.assigned("p0", 5)
    assert written.written([("p0", 3), ("p0", 4), ("p0", 5), ("p0", 5), ("p0", 6)]) == []
    assert written.committable("p0") == 7


def test_partitions_are_independent_and_order_within_a_batch_does_not_matter():
    written = WrittenOffsets()
    written.assigned("p0", 0)
    written.assigned("p1", 7)
    assert written.written([("p1", 8), ("p0", 1), ("p1", 7), ("p0", 0)]) == []
    assert (written.committable("p0"), written.committable("p1")) == (2, 9)


def test_without_a_committed_offset_the_first_fact_seen_starts_the_count():
    written = WrittenOffsets()
    written.assigned("p0", None)
    assert written.committable("p0") is None
    assert written.written([("p0", 42), ("p0", 43)]) == []
    assert written.committable("p0") == 44


def test_a_new_generation_restarts_a_partition_at_its_committed_offset():
    written = WrittenOffsets()
    written.assigned("p0", 0, generation=1)
    written.written([("p0", 0), ("p0", 1)])
    assert written.knows("p0", 1) and not written.knows("p0", 2)
    written.assigned("p0", 1, generation=2)  # another worker committed 1 before handing over
    assert written.committable("p0") == 1
    assert written.written([("p0", 1)]) == []
    assert written.committable("p0") == 2


def test_holes_lists_every_gap_of_a_batch_without_recording_it():
    written = WrittenOffsets()
    written.assigned("p0", 10)
    written.assigned("p1", 0)
    batch = [("p0", 9), ("p0", 12), ("p0", 13), ("p0", 16), ("p1", 0), ("p1", 1)]
    assert written.holes(batch) == [Skip("p0", 10, 11), Skip("p0", 14, 15)]
    assert written.committable("p0") == 10  # nothing recorded
    refetched = [("p0", 10), ("p0", 11), ("p0", 14), ("p0", 15)]
    assert written.holes(batch + refetched) == []
    assert written.written(batch + refetched) == []
    assert written.committable("p0") == 17


def test_a_batch_derived_while_the_previous_one_is_written_has_no_holes():
    written = WrittenOffsets()
    written.assigned("p0", 10)
    written.derived([("p0", 10), ("p0", 11)])  # its rows are being written
    assert written.holes([("p0", 12), ("p0", 13)]) == []
    assert written.holes([("p0", 13)]) == [Skip("p0", 12, 12)]
    assert written.committable("p0") == 10  # nothing is committed before its write
    assert written.written([("p0", 10), ("p0", 11)]) == []
    assert written.committable("p0") == 12


def test_a_new_assignment_forgets_the_batches_being_written():
    written = WrittenOffsets()
    written.assigned("p0", 10)
    written.derived([("p0", 10), ("p0", 11)])
    written.assigned("p0", 10, generation=1)  # the rebalance: replayed from the commit
    assert written.holes([("p0", 12)]) == [Skip("p0", 10, 11)]
