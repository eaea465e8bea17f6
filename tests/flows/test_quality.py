"""The data-quality flow flags what was planted in year 2019 (a year no other test uses).

2019 is after the report test's 2018, so these never-resolved cases change no stock that test
reads; tests asserting national stocks must use years before 2018.

    Q1  20-INSP opens 01-05, transfers T1 → 20-POLICE on 01-10: never received  → stale transfer
    Q2  22-INSP opens 03-01; 22-POLICE "receives" T-orphan that was never sent  → orphan receipt
    Q3  22-POLICE stage_changed 05-01, no case_opened                          → case without opening
    Q4  00-FOREST opens 12-01 with sequences 900000001, 900000002, 900000004  → a sequence gap;
        the 12-01 opening is also delivered twice (a second outbox)           → duplicate delivery

Every event is ingested years after it occurred, so the agencies also show late arrivals. The
checks are platform-wide, so the assertions look for the planted ids and agencies only.
"""

from __future__ import annotations

import pytest

from services.agency.publisher import Publisher
from tests.helpers import make_event, new_tag, wait_for

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
def planted(stack, worker, tmp_path_factory):
    tag = new_tag()
    events, duplicate = _events(tag)
    with Publisher(None, stack) as operator:
        operator.publish_many(events)
    # A second outbox does not know the event was sent: the broker gets it a second time.
    outbox = tmp_path_factory.mktemp("dup") / "outbox.sqlite"
    with Publisher(None, stack, outbox_path=outbox) as again:
        again.publish(duplicate)
    ch = stack.clickhouse_client()
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}",
                parameters={"p": f"{tag}:%"},
            )
            == len(events)
            and ch.command(
                "SELECT count() FROM transfers WHERE transfer_id = {t:String}",
                parameters={"t": f"{tag}:T1"},
            )
            == 1
            and ch.command("SELECT sum(events) FROM agency_activity WHERE agency_id = '00-FOREST'")
            > ch.command("SELECT uniqExact(event_id) FROM events WHERE agency_id = '00-FOREST'")
        ),
        timeout=180,
        what="the planted 2019 events (and the duplicate delivery) in ClickHouse",
    )
    return tag


def test_quality_flags_planted_problems_and_stores_results(planted, stack):
    from flows.quality import CHECKS, check_data_quality

    tag = planted
    result = check_data_quality(stale_transfer_days=90, late_arrival_days=30)
    checks = result["checks"]
    assert set(checks) == set(CHECKS)
    assert result["status"] == "warn"

    stale = checks["stale_transfers"]
    assert f"{tag}:T1" in stale["examples"]
    assert stale["status"] == "warn" and stale["by_scope"]["20-INSP"] >= 1

    orphans = checks["orphan_receipts"]
    assert f"{tag}:T-orphan" in orphans["examples"]
    assert orphans["status"] == "warn" and orphans["by_scope"]["22-POLICE"] >= 1

    assert f"{tag}:Q3" in checks["cases_without_opening"]["examples"]
    assert f"{tag}:Q2" not in checks["cases_without_opening"]["examples"]
    assert checks["sequence_gaps"]["by_scope"]["00-FOREST"] >= 1
    assert checks["duplicate_deliveries"]["by_scope"]["00-FOREST"] >= 1
    assert checks["late_arrivals"]["by_scope"]["22-POLICE"] >= 2
    assert checks["late_arrivals"]["status"] == "warn"

    # stored: one row per check for the platform, plus the flagged agencies
    ch = stack.clickhouse_client()
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
