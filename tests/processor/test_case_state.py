"""Case state folding and batch derivation with in-memory state (no Kafka, no ClickHouse)."""

from __future__ import annotations

import random

import pytest

from services.processor.batch import apply_batch
from services.processor.case_state import CASE_COLUMNS, fold
from services.processor.facts import Fact
from services.processor.transfer_lag import TRANSFER_COLUMNS

pytestmark = pytest.mark.unit
D = 86_400_000


def case_history() -> list[Fact]:
    c = "20-INSP/2024/0001"
    return [
        Fact(
            "e1",
            "case_opened",
            c,
            "20-INSP",
            1 * D,
            420,
            1,
            {
                "origin": "inspection",
                "field": "land",
                "subject_kind": "official",
                "prominent": True,
                "damage_vnd": 5_000_000,
            },
        ),
        Fact(
            "e2",
            "case_transferred",
            c,
            "20-INSP",
            3 * D,
            420,
            2,
            {"transfer_id": "T1", "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
        ),
        Fact("e3", "transfer_received", c, "20-POLICE", 5 * D, 420, 1, {"transfer_id": "T1"}),
        Fact("e4", "monitoring_assigned", c, "20-SC", 6 * D, 420, 1, {"level": "provincial"}),
        Fact(
            "e5", "stage_changed", c, "20-POLICE", 7 * D, 420, 2, {"stage": "investigation_opened"}
        ),
        Fact(
            "e6",
            "discipline_imposed",
            c,
            "20-PIC",
            8 * D,
            420,
            1,
            {"target": "party_member", "count": 3, "form": "warning"},
        ),
        Fact(
            "e7",
            "assets_recovered",
            c,
            "20-CJE",
            9 * D,
            420,
            1,
            {"identified_vnd": 100, "recovered_vnd": 40},
        ),
        Fact("e8", "case_resolved", c, "20-COURT", 10 * D, 420, 1, {"outcome": "convicted"}),
    ]


def test_fold_gives_the_latest_state():
    s = fold(case_history())
    assert (s.opened_agency_id, s.current_agency_id, s.current_stage, s.status, s.outcome) == (
        "20-INSP",
        "20-POLICE",
        "investigation_opened",
        "resolved",
        "convicted",
    )
    assert s.monitored and s.monitoring_level == "provincial"
    assert (s.discipline_party_members, s.assets_identified_vnd, s.assets_recovered_vnd) == (
        3,
        100,
        40,
    )
    assert (s.transfers_sent, s.transfers_in_flight, s.event_count) == (1, 0, 8)


def test_reopened_case_is_open_again():
    reopened = Fact(
        "e9",
        "case_reopened",
        "20-INSP/2024/0001",
        "20-PROC",
        11 * D,
        420,
        1,
        {"reason": "new evidence"},
    )
    s = fold([*case_history(), reopened])
    assert (s.status, s.outcome, s.resolved_ms, s.reopened_count) == ("open", "", None, 1)


def _derive_all(facts, batch_size, seed):
    """Feed facts through apply_batch in shuffled batches; return the last rows per key."""
    rng = random.Random(seed)
    facts = facts[:]
    rng.shuffle(facts)
    state: dict = {}
    cases, transfers = {}, {}
    for i in range(0, len(facts), batch_size):
        result = apply_batch(facts[i : i + batch_size], state.get)
        state.update(result.changed)
        for row in result.rows.rows["cases_state"]:
            cases[row[0]] = row
        for row in result.rows.rows["transfers_state"]:
            transfers[row[0]] = row
    return cases, transfers


@pytest.mark.parametrize("seed", range(5))
def test_rows_do_not_depend_on_arrival_order_batching_or_duplicates(seed):
    history = case_history()
    reference = _derive_all(history, batch_size=100, seed=0)
    with_duplicates = history + history[:3]
    assert _derive_all(with_duplicates, batch_size=1 + seed, seed=seed) == reference


def test_duplicate_still_yields_rows_and_is_counted():
    history = case_history()
    first = apply_batch(history, {}.get)
    state = dict(first.changed)
    replay = apply_batch(history[:2], state.get)
    assert replay.duplicates == 2 and replay.changed == {}
    assert replay.rows.rows["cases_state"] == first.rows.rows["cases_state"]


def test_row_shapes_match_their_columns():
    result = apply_batch(case_history(), {}.get)
    (case_row,) = result.rows.rows["cases_state"]
    (transfer_row,) = result.rows.rows["transfers_state"]
    assert len(case_row) == len(CASE_COLUMNS) and len(transfer_row) == len(TRANSFER_COLUMNS)
    assert dict(zip(TRANSFER_COLUMNS, transfer_row, strict=True))["lag_hours"] == 48.0
