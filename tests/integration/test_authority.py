"""A dishonest agency's forgeries: listed as violations, and no figure moves.

Through the real gateway (tokens of three agencies) → Kafka → the session's worker → ClickHouse,
then, for the rollups, the same events derived into databases of their own (tests/pipeline.py)
with and without the forgeries, duplicated and shuffled.
"""

from __future__ import annotations

import random
import uuid
from datetime import date

import pytest
from fastapi.testclient import TestClient

from services.agency.gateway import GatewayConfig, create_app
from services.agency.tokens import TokenStore
from tests.helpers import make_event, new_tag, wait_for
from tests.pipeline import OwnDatabase

pytestmark = pytest.mark.integration

OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": True}


def _histories(tag: str) -> tuple[str, list[dict], list[dict]]:
    """(police case id, the honest history, 20-INSP's forgeries against it, one with 20-COURT)."""
    case = f"20-POLICE/{tag}/7"

    def at(day: str) -> str:
        return f"{day}T09:00:00+07:00"

    honest = [
        make_event(
            "case_opened",
            "20-POLICE",
            case,
            at("2024-03-01"),
            {**OPENED, "damage_vnd": 5_000_000_000},
        ),
        make_event(
            "case_transferred",
            "20-POLICE",
            case,
            at("2024-03-10"),
            {"transfer_id": f"{tag}/T1", "to_agency_id": "20-PROC", "reason": "prosecution"},
        ),
        make_event(
            "transfer_received", "20-PROC", case, at("2024-03-12"), {"transfer_id": f"{tag}/T1"}
        ),
    ]
    forged = [
        # back-dated opening of the police's case, damage zero
        make_event(
            "case_opened", "20-INSP", case, "1970-01-01T00:00:01Z", {**OPENED, "damage_vnd": 0}
        ),
        # a resolution of a case it does not hold
        make_event("case_resolved", "20-INSP", case, at("2024-04-01"), {"outcome": "no_violation"}),
        # a receipt of the procuracy's transfer
        make_event(
            "transfer_received", "20-INSP", case, at("2024-03-11"), {"transfer_id": f"{tag}/T1"}
        ),
        # a custody hijack: a transfer to an accomplice, and the accomplice's receipt
        make_event(
            "case_transferred",
            "20-INSP",
            case,
            at("2024-04-02"),
            {"transfer_id": f"{tag}/T2", "to_agency_id": "20-COURT", "reason": "other"},
        ),
        make_event(
            "transfer_received", "20-COURT", case, at("2024-04-03"), {"transfer_id": f"{tag}/T2"}
        ),
    ]
    return case, honest, forged


EXPECTED_RULES = {
    ("case_opened", "opened_by_another_agency"),
    ("case_resolved", "not_a_holder"),
    ("transfer_received", "not_the_addressee"),
    ("case_transferred", "not_a_holder"),
    ("transfer_received", "transfer_not_admitted"),
}
CASE_COLUMNS = (
    "opened_agency_id, opened_at, damage_vnd, current_agency_id, status, outcome, "
    "transfers_sent, event_count"
)


def test_forgeries_through_the_gateway_are_listed_and_leave_the_case_as_it_was(
    stack, worker, ch, tmp_path
):
    tag = new_tag()
    case, honest, forged = _histories(tag)
    store = TokenStore(tmp_path / "tokens.json")
    tokens = {
        agency: store.create(agency)[0]
        for agency in ("20-POLICE", "20-PROC", "20-INSP", "20-COURT")
    }
    config = GatewayConfig(outbox_dir=tmp_path / "outbox")
    with TestClient(create_app(stack, store, config=config)) as client:

        def post(event: dict) -> dict:
            r = client.post(
                "/v1/events?wait=true&timeout=30",
                json={"events": [event]},
                headers={"Authorization": f"Bearer {tokens[event['agency_id']]}"},
            )
            assert r.status_code == 200, r.text
            return r.json()

        # The gateway refuses the opening back-dated to 1970 at the edge (five-year horizon) …
        back_dated = forged[0]
        refused = post(back_dated)["results"][0]
        assert refused["status"] == "rejected"
        assert refused["error"]["field"] == "occurred_at"
        assert "more than 1827 days old" in refused["error"]["reason"]
        # … so the dishonest agency dates its opening plausibly; the worker lists it.
        forged[0] = {
            **back_dated,
            "event_id": str(uuid.uuid4()),
            "occurred_at": "2024-02-01T09:00:00+07:00",
        }
        for event in honest + forged:
            assert post(event)["accepted"] == 1

    def violations() -> set[tuple[str, str]] | None:
        rows = ch.query(
            "SELECT event_type, rule, agency_id, first_seen IS NOT NULL FROM integrity_violations "
            "WHERE case_id = {c:String}",
            parameters={"c": case},
        ).result_rows
        found = {(kind, rule) for kind, rule, agency, seen in rows if seen}
        return found if len(rows) == len(forged) else None

    assert wait_for(violations, timeout=180, what="the five violations") == EXPECTED_RULES
    row = ch.query(
        f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = {{c:String}}", parameters={"c": case}
    ).result_rows
    assert len(row) == 1
    opened_by, opened_at, damage, holder, status, outcome, sent, count = row[0]
    assert (opened_by, opened_at.year, damage) == ("20-POLICE", 2024, 5_000_000_000)
    assert (holder, status, outcome, sent, count) == ("20-PROC", "open", "", 1, len(honest))
    # The record keeps every event, forged or not.
    assert ch.command(
        "SELECT count() FROM events WHERE case_id = {c:String}", parameters={"c": case}
    ) == len(honest + forged)
    # Everything the rollups read of this case, as the real worker wrote it from Kafka, equals
    # what the honest history alone derives to (the next test shows equal inputs, equal rollups).
    with OwnDatabase(stack, "authority") as own:
        own.derive(honest)
        assert _rollup_inputs(ch, case) == _rollup_inputs(own.client(), case)


def _rollup_inputs(client, case: str) -> dict[str, list[tuple]]:
    """The rows of one case the rollups are computed from (events: those that count)."""
    queries = {
        "cases": "SELECT * FROM cases WHERE case_id = {c:String}",
        "transfers": "SELECT * FROM transfers WHERE case_id = {c:String} ORDER BY transfer_id",
        "appraisals": "SELECT * FROM appraisals WHERE case_id = {c:String} ORDER BY appraisal_id",
        "events": "SELECT * EXCEPT (ingested_at, home_province_code) FROM events FINAL "
        "WHERE case_id = {c:String} "
        "AND event_id NOT IN (SELECT event_id FROM violating_events) ORDER BY event_id",
    }
    return {
        name: client.query(sql, parameters={"c": case}).result_rows for name, sql in queries.items()
    }


ROLLUP_QUERIES = {
    "national": "SELECT * FROM rollup_national",
    "province": "SELECT * FROM rollup_province",
    "cases": "SELECT * FROM cases",
    "transfers": "SELECT * FROM transfers",
    "violations": "SELECT * EXCEPT first_seen FROM integrity_violations",
}


def _figures(stack, events: list[dict]) -> dict[str, list[tuple]]:
    from flows.rollups import build_rollups

    with OwnDatabase(stack, "authority") as own:
        own.derive(events, batch_size=3)
        with own.selected():
            build_rollups(date(2024, 1, 1), date(2024, 12, 31), period_kinds=["month", "year"])
        client = own.client()
        return {
            name: sorted(client.query(sql).result_rows, key=repr)
            for name, sql in ROLLUP_QUERIES.items()
        }


def test_rollups_with_forgeries_equal_those_without_and_any_order_gives_the_same_lists(stack):
    _, honest, forged = _histories(new_tag())
    without = _figures(stack, honest)
    rng = random.Random(11)
    shuffled = honest + forged + rng.sample(honest + forged, 4)  # duplicates, too
    rng.shuffle(shuffled)
    with_forgeries = _figures(stack, shuffled)
    assert without["national"], "no rollup rows: nothing compared"
    for name in ("national", "province", "transfers", "cases"):
        assert with_forgeries[name] == without[name], name
    assert without["violations"] == []
    assert {(r[2], r[5]) for r in with_forgeries["violations"]} == EXPECTED_RULES
    rng.shuffle(shuffled)
    assert _figures(stack, shuffled) == with_forgeries
