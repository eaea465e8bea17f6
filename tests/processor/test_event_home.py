"""The home province written with each event row, and the cases listed when it may be stale.

The provincial rollups read the home from the event row unless the case is in `cases_rehomed`
(rollups.py); these tests hold the worker's side of that bargain: a row's written home is its
case's home, or its case is listed.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest

from services.processor.batch import apply_batch
from services.processor.case_state import CASE_HOME
from services.processor.facts import EVENT_COLUMNS, Fact, province_of

pytestmark = pytest.mark.unit

CASE = "20-POLICE/2024/7"
HOME = EVENT_COLUMNS.index("home_province_code")


def ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def fact(kind: str, agency: str, day: str, case_id: str = CASE, **payload) -> Fact:
    return Fact(str(uuid.uuid4()), kind, case_id, agency, ms(day), 420, None, payload)


def opened(agency: str = "20-POLICE", day: str = "2024-03-01", case_id: str = CASE) -> Fact:
    return fact("case_opened", agency, day, case_id, origin="inspection", damage_vnd=5_000_000)


def run(batches: list[list[Fact]], state: dict | None = None):
    """Apply the batches in turn; (state, per batch: event homes by event id, listed cases)."""
    state = {} if state is None else state
    out = []
    for facts in batches:
        result = apply_batch(facts, state.get)
        state.update(result.changed)
        homes = {row[0]: row[HOME] for row in result.rows.rows["events"]}
        out.append((homes, [row[0] for row in result.rows.rows["cases_rehomed"]]))
    return state, out


def test_a_case_opened_first_writes_its_home_on_every_row_and_is_not_listed():
    first = opened()
    later = fact("stage_changed", "20-POLICE", "2024-03-05", stage="investigation")
    _, [(homes1, listed1), (homes2, listed2)] = run([[first], [later]])
    assert homes1 == {first.event_id: "20"} and homes2 == {later.event_id: "20"}
    assert listed1 == listed2 == []


def test_an_opening_after_facts_of_another_province_lists_the_case():
    early = fact("case_transferred", "79-INSP", "2024-03-05", transfer_id="T", to_agency_id="x")
    opening = opened()
    state, [(homes1, listed1), (homes2, listed2)] = run([[early], [opening]])
    assert homes1 == {early.event_id: ""} and listed1 == []  # no opening known yet
    # the early row reads its agency's province, 79, and the case's home is 20
    assert homes2 == {opening.event_id: "20"} and listed2 == [CASE]
    # Replayed after a crash (the state already holds the opening): listed again.
    _, [(homes3, listed3)] = run([[opening]], state)
    assert homes3 == {opening.event_id: "20"} and listed3 == [CASE]


def test_an_opening_after_facts_of_its_own_province_does_not_list_the_case():
    """A row written without a home reads its agency's province: already the case's home."""
    early = fact("stage_changed", "20-POLICE", "2024-03-05", stage="investigation")
    _, [(homes1, listed1), (homes2, listed2)] = run([[early], [opened()]])
    assert homes1 == {early.event_id: ""} and listed1 == listed2 == []


def test_a_case_whose_facts_all_arrive_in_one_batch_is_not_listed():
    facts = [fact("stage_changed", "20-POLICE", "2024-03-05", stage="investigation"), opened()]
    _, [(homes, listed)] = run([facts])
    assert set(homes.values()) == {"20"} and listed == []


def test_every_row_has_its_cases_final_home_unless_the_case_is_listed():
    """Many cases, their facts shuffled and cut into batches, with forged and second openings:
    what the rollups would read (the written home, or the case's for a listed case) is always
    the case's final home."""
    rng = random.Random(7)
    facts: list[Fact] = []
    for n in range(60):
        case = f"{20 + n % 3}-POLICE/2024/{n}"
        owner = case.split("/")[0]
        facts.append(opened(owner, "2024-03-01", case))
        facts += [
            fact("stage_changed", owner, f"2024-03-{d:02d}", case, stage="investigation")
            for d in range(2, 2 + n % 5)
        ]
        if n % 3 == 0:  # a transfer to another province, and its receipt there
            tid = f"T{n}"
            facts.append(
                fact(
                    "case_transferred",
                    owner,
                    "2024-03-09",
                    case,
                    transfer_id=tid,
                    to_agency_id="79-PROC",
                )
            )
            facts.append(fact("transfer_received", "79-PROC", "2024-03-10", case, transfer_id=tid))
        if n % 4 == 0:  # a second opening by the owner, dated earlier: it becomes the opening
            facts.append(opened(owner, "2024-02-01", case))
        if n % 5 == 0:  # an opening by an agency the case id does not name: a violation
            facts.append(opened("79-INSP", "2024-01-15", case))
    rng.shuffle(facts)
    state: dict = {}
    written: dict[str, tuple[str, str]] = {}  # event id -> (case, home written last)
    agency = {f.event_id: f.agency_id for f in facts}
    listed: set[str] = set()
    final: dict[str, str] = {}
    for start in range(0, len(facts), 17):
        result = apply_batch(facts[start : start + 17], state.get)
        state.update(result.changed)
        for row in result.rows.rows["events"]:
            written[row[0]] = (row[2], row[HOME])
        listed.update(row[0] for row in result.rows.rows["cases_rehomed"])
        for row in result.rows.rows["cases_state"]:
            final[row[0]] = row[CASE_HOME]
    assert listed and len(listed) < len(final)  # the shuffle made some, not all, stale
    # what the rollups read (rollups.py): the written home, or the case's for a listed case,
    # and the agency's own province where that is ''
    read = {
        eid: (final[case] if case in listed else home) or province_of(agency[eid])
        for eid, (case, home) in written.items()
    }
    assert read == {
        eid: final[case] or province_of(agency[eid]) for eid, (case, _) in written.items()
    }
    assert set(final.values()) == {"20", "21", "22"}
