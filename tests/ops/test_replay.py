"""The replay's derivation (spill by case, derive each case once) gives the worker's rows.

The worker derives batch by batch from its stored state (`apply_batch`); the replay spills the
same facts into bucket files and derives every case once from all of them. What analysts see
(per key, the row with the highest version, the last written among equal versions) must be the
same, duplicates and out-of-order events included. The Kafka half is covered against the real
stack by tests/integration/test_rebuild.py.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from msgspec.structs import replace

from services.agency.generator import GeneratorOptions, write_jsonl
from services.ops import spill
from services.ops.replay import _balanced, case_rows, fact_rows
from services.ops.spill import BucketWriter, bucket_of, bucket_paths, read_facts
from services.processor.batch import apply_batch
from services.processor.case_state import CASE_HOME
from services.processor.facts import Fact, province_of
from services.serving.sink import RowBatch
from tests.processor.test_oracle import facts_as_the_worker_builds_them

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEYS = {  # table -> index of its natural key (the view's key)
    "events": 0,
    "cases_state": 0,
    "transfers_state": 0,
    "appraisals_state": 0,
    "integrity_violations_state": 1,
}


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> list[Fact]:
    """~3,000 facts as the worker gets them, with repeated and late events (as in the oracle
    test of the worker)."""
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    summary = write_jsonl(
        GeneratorOptions(
            seed=11,
            start=date(2024, 7, 1),
            end=date(2025, 12, 31),
            events=3000,
            provinces=("00", "20", "34", "45", "79"),
            duplicates=0.03,
            out_of_order=0.05,
            sorted=False,
        ),
        path,
    )
    assert summary.duplicates > 0 and summary.out_of_order > 0
    return facts_as_the_worker_builds_them(
        [json.loads(line) for line in path.read_text().splitlines()]
    )


def latest(batches: list[RowBatch]) -> dict[str, dict]:
    """Per table and key, what a Replacing engine keeps: the highest version (last column),
    the last written among equal versions; `events` has no version: the last written. Then
    what the views show of it (migrations 0001 and 0007)."""
    kept: dict[str, dict] = {table: {} for table in KEYS}
    for batch in batches:
        for table, key in KEYS.items():
            for row in batch.rows.get(table, []):
                old = kept[table].get(row[key])
                if table == "events" or old is None or row[-1] >= old[-1]:
                    kept[table][row[key]] = tuple(row)
    # The violations view shows those of each case's latest version only.
    cases = kept["cases_state"]
    # The province the rollups count an event in (rollups.py): its case's home, from
    # `cases_state` when the case is listed in `cases_rehomed`, else the one written with the
    # row; the agency's own province when that is ''.
    rehomed = {row[0] for batch in batches for row in batch.rows.get("cases_rehomed", [])}
    kept["events"] = {
        k: (
            *row[:-1],
            (cases[row[2]][CASE_HOME] if row[2] in rehomed else row[-1]) or province_of(row[3]),
        )
        for k, row in kept["events"].items()
    }
    kept["integrity_violations_state"] = {
        k: row
        for k, row in kept["integrity_violations_state"].items()
        if row[-1] == cases[row[0]][-1]
    }
    return kept


def worker_rows(facts: list[Fact], batch_size: int) -> dict[str, dict]:
    state: dict = {}
    batches = []
    for start in range(0, len(facts), batch_size):
        result = apply_batch(facts[start : start + batch_size], state.get)
        state.update(result.changed)
        batches.append(result.rows)
    return latest(batches)


def replay_rows(facts: list[Fact], directory: Path, buckets: int, writers: int = 2) -> dict:
    """Spill as `writers` readers would (each its share of the facts, in order), derive every
    bucket from all its files."""
    names = [f"r{i}" for i in range(writers)]
    shares: list[list[Fact]] = [[] for _ in names]
    for fact in facts:  # a partition (here: an agency) is read by one reader
        shares[bucket_of(fact.agency_id, writers)].append(fact)
    for name, share in zip(names, shares, strict=True):
        with BucketWriter(directory, buckets, name) as writer:
            for fact in share:
                writer.add(fact)
    batches = []
    for bucket in range(buckets):
        bucket_facts = list(read_facts(bucket_paths(directory, bucket, names)))
        rows = RowBatch()
        homes: dict[str, str] = {}
        case_rows(bucket_facts, rows, homes=homes)
        fact_rows(bucket_facts, rows, NOW, homes)
        batches.append(rows)
    return latest(batches)


def forged(facts: list[Fact], n: int) -> list[Fact]:
    """Resolutions by an agency that never held the case: violations that stay."""
    openings = [f for f in facts if f.event_type == "case_opened"][:n]
    stranger = "79-PROC"
    return [
        replace(
            f,
            event_id=str(uuid.UUID(int=i + 1)),
            event_type="case_resolved",
            agency_id=stranger if f.agency_id != stranger else "20-PROC",
            occurred_ms=f.occurred_ms + 60_000,
            payload={"outcome": "convicted"},
            sequence=None,
        )
        for i, f in enumerate(openings)
    ]


def test_the_replay_derives_the_workers_rows(history, tmp_path):
    facts = history[:1500] + forged(history, 10) + history[1500:]
    expected = worker_rows(facts, batch_size=97)
    assert len(expected["integrity_violations_state"]) >= 10 and len(expected["transfers_state"])
    assert replay_rows(facts, tmp_path, buckets=7) == expected


def test_a_duplicate_event_id_keeps_its_first_copy_as_the_worker_does(history, tmp_path):
    facts = history
    opened = next(f for f in facts if f.event_type == "case_opened" and f.payload.get("field"))
    other_field = "land" if opened.payload["field"] != "land" else "finance"
    later_copy = replace(opened, payload={**opened.payload, "field": other_field})
    facts = [*facts, later_copy]
    expected = worker_rows(facts, batch_size=97)
    case = expected["cases_state"][opened.case_id]
    assert case[5] == opened.payload["field"]  # the first copy shaped the case (column field)
    assert replay_rows(facts, tmp_path, buckets=5) == expected


def test_a_case_is_derived_once_from_all_its_facts(history):
    facts = history
    shuffled = facts[:]
    random.Random(3).shuffle(shuffled)
    rows = RowBatch()
    cases = case_rows(shuffled, rows)
    assert cases == len({f.case_id for f in facts}) == len(rows.rows["cases_state"])
    only = {facts[0].case_id}
    some = RowBatch()
    assert case_rows(facts, some, only) == 1
    assert [r[0] for r in some.rows["cases_state"]] == [facts[0].case_id]


def test_spilled_facts_come_back_by_bucket_in_write_order(history, tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "CHUNK", 10)  # several envelopes per bucket file
    facts = history
    with BucketWriter(tmp_path, 4, "r0") as first, BucketWriter(tmp_path, 4, "c1") as later:
        for i, fact in enumerate(facts):
            (first if i < 2000 else later).add(fact)
    assert first.facts + later.facts == len(facts)
    for bucket in range(4):
        back = list(read_facts(bucket_paths(tmp_path, bucket, ["r0", "c1"])))
        assert back == [f for f in facts if bucket_of(f.case_id, 4) == bucket]


def test_a_payload_messagepack_cannot_hold_is_spilled_as_json(history, tmp_path):
    huge = replace(history[0], payload={**history[0].payload, "damage_vnd": 10**30})
    with BucketWriter(tmp_path, 1, "r0") as writer:
        for fact in [huge, *history[1:20]]:
            writer.add(fact)
    assert list(read_facts(bucket_paths(tmp_path, 0, ["r0"]))) == [huge, *history[1:20]]


def test_a_truncated_bucket_file_names_the_file(history, tmp_path):
    facts = history[:50]
    with BucketWriter(tmp_path, 1, "r0") as writer:
        for fact in facts:
            writer.add(fact)
    path = bucket_paths(tmp_path, 0, ["r0"])[0]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"b00000\.r0: truncated chunk"):
        list(read_facts([path]))


def test_work_is_shared_by_weight():
    shares = _balanced(["a", "b", "c", "d"], [10, 1, 6, 5], 2)
    assert sorted(map(sorted, shares)) == [["a", "b"], ["c", "d"]]


def test_offsets_are_listed_again_when_a_leader_moves(monkeypatch):
    """A benchmark run met UNKNOWN_LEADER_EPOCH while a leader moved: a moment, not a failure."""
    from concurrent.futures import Future

    import confluent_kafka.admin
    from confluent_kafka import KafkaError, KafkaException

    from services.ops import replay
    from services.settings import Settings

    calls: list[int] = []

    class Admin:
        def __init__(self, _config) -> None:
            pass

        def list_offsets(self, request, request_timeout):
            calls.append(1)
            if len(calls) == 1:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_LEADER_EPOCH))
            futures = {}
            for tp in request:
                future: Future = Future()
                future.set_result(type("Info", (), {"offset": 7 * len(calls)})())
                futures[tp] = future
            return futures

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Admin)
    monkeypatch.setattr(replay.time, "sleep", lambda s: None)
    marks = replay.watermarks(Settings.from_env(), [("agency.20-INSP.events", 0)])
    assert marks == {("agency.20-INSP.events", 0): (14, 21)}
    assert len(calls) == 3
