"""The derivation gives exactly the rows of its frozen reference (legacy_derive.py), batch by batch.

Every table, every column, every row in order (agency_activity apart from its wall-clock
column), over generated histories delivered shuffled, duplicated, in batches of many sizes, and
in the order that is hardest for a per-case state kept between batches: each case's history in
event-time order, but with one of its earlier facts held back and delivered last.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from functools import cache
from typing import Any

import pytest

from services.agency.generator import GeneratorOptions, generate
from services.contracts.events import parse_event
from services.processor import envelope
from services.processor.batch import apply_batch, decode_state, encode_state
from services.processor.case_state import CASE_HOME, derive_rows
from services.processor.facts import Fact, event_row
from tests.processor import legacy_derive

pytestmark = pytest.mark.unit

TABLES = (
    "events",
    "cases_state",
    "transfers_state",
    "appraisals_state",
    "integrity_violations_state",
)


@cache
def history() -> tuple[Fact, ...]:
    """A generated history with forged events, duplicates, disorder and the province merger."""
    options = GeneratorOptions(
        seed=11,
        events=4000,
        provinces=("00", "20", "33", "34", "79"),
        duplicates=0.03,
        out_of_order=0.1,
        violations=0.1,
        sorted=False,
    )
    return tuple(Fact.from_event(parse_event(e)) for e in generate(options))


def run_both(deliveries: list[list[Fact]]) -> None:
    """Feed the same batches to the new and the frozen `apply_batch`; assert equal outputs."""
    new_state: dict[str, bytes] = {}
    old_state: dict[str, bytes] = {}
    for number, batch in enumerate(deliveries):
        new = apply_batch(batch, new_state.get)
        old = legacy_derive.apply_batch(batch, old_state.get)
        new_state.update(new.changed)
        old_state.update(old.changed)
        for table in TABLES[1:]:
            assert new.rows.rows[table] == old.rows.rows[table], f"batch {number}: {table}"
        # `events` rows now end with their case's home as derived in this batch (test_event_home)
        events = new.rows.rows["events"]
        assert [row[:-1] for row in events] == old.rows.rows["events"], f"batch {number}: events"
        homes = {row[0]: row[CASE_HOME] for row in new.rows.rows["cases_state"]}
        assert [row[-1] for row in events] == [homes[row[2]] for row in events]
        activity = [row[:-1] for row in new.rows.rows["agency_activity"]]
        assert activity == [row[:-1] for row in old.rows.rows["agency_activity"]]
        assert new.duplicates == old.duplicates, f"batch {number}: duplicates"
        assert new.changed.keys() == old.changed.keys(), f"batch {number}: changed cases"
    for case_id, raw in new_state.items():  # the states hold the same facts
        stored = sorted(decode_state(raw), key=lambda f: f.event_id)
        old = sorted((Fact(*f) for f in json.loads(old_state[case_id])), key=lambda f: f.event_id)
        assert stored == old, case_id


def batches(facts: list[Fact], size: int) -> list[list[Fact]]:
    return [facts[i : i + size] for i in range(0, len(facts), size)]


@pytest.mark.parametrize(("seed", "size"), [(0, 1), (1, 7), (2, 97), (3, 1000)])
def test_shuffled_and_duplicated_deliveries_give_the_reference_rows(seed: int, size: int) -> None:
    facts = list(history())
    rng = random.Random(seed)
    facts += rng.sample(facts, len(facts) // 10)  # redelivered
    rng.shuffle(facts)
    run_both(batches(facts, size))


@pytest.mark.parametrize("size", [1, 50, 500])
def test_the_generators_order_gives_the_reference_rows(size: int) -> None:
    run_both(batches(list(history()), size))


@pytest.mark.parametrize("seed", range(3))
def test_an_earlier_fact_arriving_after_later_ones_rewrites_the_past(seed: int) -> None:
    """Per case, in event-time order, one fact held back (not the last) and delivered later:
    every held-back fact lands before facts the case's stored state already derived from."""
    rng = random.Random(seed)
    by_case: dict[str, list[Fact]] = defaultdict(list)
    for fact in sorted(set_of(history()), key=lambda f: f.order_key):
        by_case[fact.case_id].append(fact)
    in_time: list[Fact] = []
    held_back: list[Fact] = []
    for facts in by_case.values():
        if len(facts) > 2:
            held_back.append(facts.pop(rng.randrange(len(facts) - 1)))
        in_time += facts
    assert len(held_back) > 300
    in_time.sort(key=lambda f: f.order_key)
    deliveries = [[fact] for fact in in_time[:300]] + batches(in_time[300:], 40)
    run_both(deliveries + batches(held_back, 25) + batches(in_time[:50], 10))


def set_of(facts: tuple[Fact, ...]) -> list[Fact]:
    return list({f.event_id: f for f in facts}.values())


def test_each_cases_rows_equal_the_reference_derivation() -> None:
    by_case: dict[str, list[Fact]] = defaultdict(list)
    for fact in history():
        by_case[fact.case_id].append(fact)
    for case_id, facts in by_case.items():
        new, old = derive_rows(facts), legacy_derive.derive_rows(facts)
        assert vars(new) == vars(old), case_id


def test_the_previous_json_state_is_read() -> None:
    """A worker upgraded over an old changelog reads the JSON lists it finds there."""
    facts = list(history())
    first, second = facts[: len(facts) // 2], facts[len(facts) // 2 :]
    old_state: dict[str, bytes] = {}
    for batch in batches(first, 200):
        old_state.update(legacy_derive.apply_batch(batch, old_state.get).changed)
    for raw in old_state.values():
        assert raw.startswith(b"[")
        assert decode_state(raw) == [Fact(*f) for f in json.loads(raw)]
    mixed = dict(old_state)
    for number, batch in enumerate(batches(second, 200)):
        new = apply_batch(batch, mixed.get)
        old = legacy_derive.apply_batch(batch, old_state.get)
        mixed.update(new.changed)
        old_state.update(old.changed)
        for table in TABLES[1:]:
            assert new.rows.rows[table] == old.rows.rows[table], f"batch {number}: {table}"
        # `events` rows now end with their case's home as derived in this batch (test_event_home)
        events = new.rows.rows["events"]
        assert [row[:-1] for row in events] == old.rows.rows["events"], f"batch {number}: events"
        homes = {row[0]: row[CASE_HOME] for row in new.rows.rows["cases_state"]}
        assert [row[-1] for row in events] == [homes[row[2]] for row in events]


def test_the_state_codec_round_trips_what_the_facts_can_hold() -> None:
    odd = Fact(
        "e-1",
        "case_opened",
        "79-INSP/2024/1",
        "79-INSP",
        -1,
        -660,
        2**63 - 1,
        {"damage_vnd": 10**30, "note": "Việt \u2028 \x00 \ud7ff 🇻🇳", "flag": False, "none": None},
    )
    plain = Fact("e-2", "stage_changed", "79-INSP/2024/1", "79-INSP", 5, 420, None, {})
    for facts in ([odd, plain], [plain], []):
        assert decode_state(encode_state(facts)) == facts
        assert envelope.decode(envelope.encode(facts)) == facts
    assert decode_state(None) == []


def test_event_rows_serialise_the_payload_as_before() -> None:
    every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    payload = {"z": every_character, "a": 10**30, "m": [1, {"b": None, "a": True}], "f": 1.5e16}
    fact = Fact("e", "stage_changed", "C", "20-POLICE", 0, 420, None, payload)
    assert event_row(fact)[:-1] == legacy_derive.event_row(fact)
    for fact in history()[:500]:
        assert event_row(fact)[:-1] == legacy_derive.event_row(fact)


def _fact(event_id: str, kind: str, agency: str, day: int, **payload: Any) -> Fact:
    return Fact(event_id, kind, "20-POLICE/2024/9", agency, day * 86_400_000, 420, None, payload)


@pytest.mark.parametrize(
    "deliveries",
    [
        pytest.param(  # an opening later than everything stored turns it into violations
            [
                [_fact("a", "stage_changed", "20-POLICE", 1, stage="investigation")],
                [_fact("b", "case_opened", "20-POLICE", 2, origin="inspection")],
            ],
            id="late-opening",
        ),
        pytest.param(  # a receipt dated before its transfer: the transfer comes later in time
            [
                [_fact("a", "case_opened", "20-POLICE", 1, origin="inspection")],
                [_fact("b", "transfer_received", "20-PROC", 2, transfer_id="T1")],
                [
                    _fact(
                        "c",
                        "case_transferred",
                        "20-POLICE",
                        3,
                        transfer_id="T1",
                        to_agency_id="20-PROC",
                    )
                ],
                [_fact("d", "stage_changed", "20-PROC", 4, stage="prosecution")],
            ],
            id="transfer-after-its-receipt",
        ),
    ],
)
def test_facts_that_change_what_was_derived_before(deliveries: list[list[Fact]]) -> None:
    """Later in time than every stored fact, yet they change the past: an opening, and a
    transfer that a stored receipt names."""
    run_both(deliveries)


def test_a_batch_that_fails_leaves_no_half_derived_case_behind() -> None:
    """A fact that breaks the derivation (a receipt without its transfer_id) fails the batch
    after its case's kept derivation took the batch's first facts; the batch is then replayed
    without it, over the state from before: the rows are those of a derivation from scratch."""
    opened = _fact("a", "case_opened", "20-POLICE", 1, origin="inspection")
    good = _fact("b", "stage_changed", "20-POLICE", 2, stage="investigation")
    broken = _fact("c", "transfer_received", "20-PROC", 3)
    state: dict[str, bytes] = {}
    state.update(apply_batch([opened], state.get).changed)
    with pytest.raises(KeyError, match="transfer_id"):
        apply_batch([good, broken], state.get)
    replayed = apply_batch([good], state.get)
    reference = legacy_derive.apply_batch([opened, good], {}.get)
    for table in TABLES[1:]:
        assert replayed.rows.rows[table] == reference.rows.rows[table], table
