"""The data-quality flow flags exactly what was planted, in a database of this module's own.

The events are derived into a private database (tests/pipeline.py), so every check sees only
these cases and its counts are asserted exactly.

    Q1  20-INSP opens 01-05, transfers T1 → 20-POLICE on 01-10: never received  → stale transfer
    Q2  22-INSP opens 03-01; 22-POLICE "receives" T-orphan that was never sent  → orphan receipt
    Q3  22-POLICE stage_changed 05-01, no case_opened                          → case without opening
    Q4  00-FOREST opens 12-01 with sequences 900000001, 900000002, 900000004  → a sequence gap;
        the 12-01 opening is also delivered twice (a second outbox)           → duplicate delivery

Every event is ingested years after it occurred, so the agencies also show late arrivals.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import make_event, new_tag
from tests.pipeline import OwnDatabase

pytestmark = pytest.mark.integration

OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": False}


def _events(tag: str) -> tuple[list[dict], dict]:
    def c(n: int) -> str:
        return f"{tag}:Q{n}"

    def at(day: str) -> str:
        return f"2019-{day}T09:00:00+07:00"

    forest_open = make_event(
        "case_opened", "00-FOREST", c(4), at("12-01"), OPENED, sequence=900000001
    )
    events = [
        make_event("case_opened", "20-INSP", c(1), at("01-05"), OPENED),
        make_event(
            "case_transferred",
            "20-INSP",
            c(1),
            at("01-10"),
            {"transfer_id": f"{tag}:T1", "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
        ),
        # a court resolving a case it was never sent: breaks an authority rule
        make_event("case_resolved", "20-COURT", c(1), at("02-01"), {"outcome": "convicted"}),
        make_event("case_opened", "22-INSP", c(2), at("03-01"), OPENED),
        make_event(
            "transfer_received", "22-POLICE", c(2), at("03-20"), {"transfer_id": f"{tag}:T-orphan"}
        ),
        make_event(
            "stage_changed", "22-POLICE", c(3), at("05-01"), {"stage": "investigation_opened"}
        ),
        forest_open,
        make_event(
            "stage_changed",
            "00-FOREST",
            c(4),
            at("12-02"),
            {"stage": "suspects_charged"},
            sequence=900000002,
        ),
        make_event(
            "stage_changed",
            "00-FOREST",
            c(4),
            at("12-03"),
            {"stage": "indicted"},
            sequence=900000004,
        ),
    ]
    return events, forest_open


@pytest.fixture(scope="module")
def planted(stack) -> Iterator[tuple[str, OwnDatabase]]:
    """The planted events derived into this module's own database, selected for the flow."""
    tag = new_tag()
    events, duplicate = _events(tag)
    with OwnDatabase(stack, "quality", tag) as own:
        own.derive(events)
        # Delivered a second time (a second outbox does not know it was sent): the worker
        # counts it in agency_activity again, while the events table keeps one row.
        own.derive([duplicate])
        with own.selected():
            yield tag, own


def test_quality_flags_planted_problems_and_stores_results(planted):
    from flows.quality import CHECKS, check_data_quality

    tag, own = planted
    result = check_data_quality(stale_transfer_days=90, late_arrival_days=30)
    checks = result["checks"]
    assert set(checks) == set(CHECKS)
    assert result["status"] == "warn"

    stale = checks["stale_transfers"]
    assert stale["examples"] == [f"{tag}:T1"]
    assert stale["status"] == "warn" and stale["by_scope"] == {"20-INSP": 1}

    orphans = checks["orphan_receipts"]
    assert orphans["examples"] == [f"{tag}:T-orphan"]
    assert orphans["status"] == "warn" and orphans["by_scope"] == {"22-POLICE": 1}

    # Q2 has its opening; Q3 has none
    assert checks["cases_without_opening"]["examples"] == [f"{tag}:Q3"]
    assert checks["sequence_gaps"]["by_scope"] == {"00-FOREST": 1}
    assert checks["sequence_gaps"]["examples"] == ["00-FOREST 900000001..900000004"]
    assert checks["duplicate_deliveries"]["by_scope"] == {"00-FOREST": 1}
    # every planted event arrived years late: each agency's count is its number of events
    forged = checks["integrity_violations"]
    assert forged["status"] == "warn" and forged["by_scope"] == {"20-COURT": 1}
    assert len(forged["examples"]) == 1 and forged["examples"][0].startswith("not_a_holder ")
    assert checks["late_arrivals"]["by_scope"] == {
        "00-FOREST": 3,
        "20-COURT": 1,
        "20-INSP": 2,
        "22-INSP": 1,
        "22-POLICE": 2,
    }
    assert checks["late_arrivals"]["status"] == "warn"

    # stored: one row per check for the platform, plus the flagged agencies
    ch = own.client()
    rows = ch.query(
        "SELECT check_name, scope, value, status FROM data_quality_checks "
        "WHERE run_id = {r:String}",
        parameters={"r": result["run_id"]},
    ).result_rows
    platform = {name: (value, status) for name, scope, value, status in rows if scope == "all"}
    assert set(platform) == set(CHECKS)
    assert platform["stale_transfers"][1] == "warn"
    assert ("orphan_receipts", "22-POLICE") in {(n, s) for n, s, _, _ in rows}
    latest = ch.query("SELECT DISTINCT run_id FROM data_quality_latest").result_rows
    assert latest == [(result["run_id"],)]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-quality"]))
        )
    assert artifacts and artifacts[0].type == "table"
    assert any(f"{tag}:T1" in str(a.data) for a in artifacts)
