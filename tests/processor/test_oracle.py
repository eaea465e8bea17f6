"""The contract oracle (tests/oracle.py) on hand-worked cases, then the worker against it.

The hand-worked expectations are computed in the comments from the contract, not by running
anything: they check the oracle. The last tests run the worker's pure derivation (the code the
stream worker runs on each batch) over a generated history and compare every column of every
table with the oracle: the fast check that the worker reads the contract the way it is written.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import pytest

from services.agency.generator import GeneratorOptions, write_jsonl
from services.contracts.codec import encode
from services.contracts.events import parse_event, topic_for_agency
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.contracts.registry import SchemaCache, register_agency_subject
from services.processor.batch import apply_batch
from services.processor.facts import Fact
from services.processor.ingest import Ingestor
from tests.helpers import REPO, make_event
from tests.oracle import (
    APPRAISAL_COLUMNS,
    CASE_COLUMNS,
    COLUMNS,
    EVENT_COLUMNS,
    TRANSFER_COLUMNS,
    assert_tables_match,
    expected_tables,
    province_at,
    table_differences,
)

pytestmark = pytest.mark.unit

# Every datetime the oracle returns is naive UTC (what clickhouse-connect returns for
# DateTime64(3, 'UTC')): 09:30+07:00 is written datetime(..., 2, 30) below.
OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": False}


def ev(event_type: str, agency: str, case: str, at: str, **payload: Any) -> dict:
    """A JSON-form event; the keyword arguments are its payload."""
    return make_event(event_type, agency, case, at, payload)


def opened(agency: str, case: str, at: str, **payload: Any) -> dict:
    return make_event("case_opened", agency, case, at, {**OPENED, **payload})


def sent(agency: str, case: str, at: str, tid: str, to: str, reason: str) -> dict:
    return ev("case_transferred", agency, case, at, transfer_id=tid, to_agency_id=to, reason=reason)


def rows(events: list[dict], table: str) -> list[dict]:
    """The oracle's rows of one table as dicts (column -> value), sorted by id."""
    return [dict(zip(COLUMNS[table], row, strict=True)) for row in expected_tables(events)[table]]


def only(events: list[dict], table: str) -> dict:
    (row,) = rows(events, table)
    return row


def pick(row: dict, *columns: str) -> dict:
    return {c: row[c] for c in columns}


# --------------------------------------------------------------------------- transfers

C1 = "20-INSP/2024/0001"


def transfer_history() -> list[dict]:
    """A case with four transfers: received; received then returned; pending; returned unread."""
    return [
        opened("20-INSP", C1, "2024-03-01T08:00:00+07:00", damage_vnd=5_000_000_000),
        # T1 received: lag 2024-03-05 02:30Z -> 2024-03-07 08:00Z = 48 h + 5.5 h = 53.5 h
        sent("20-INSP", C1, "2024-03-05T09:30:00+07:00", "T1", "20-POLICE", "signs_of_crime"),
        ev("transfer_received", "20-POLICE", C1, "2024-03-07T15:00:00+07:00", transfer_id="T1"),
        # T2 received after 24 h, then returned by the procuracy that held it
        sent("20-POLICE", C1, "2024-04-01T10:00:00+07:00", "T2", "20-PROC", "prosecution"),
        ev("transfer_received", "20-PROC", C1, "2024-04-02T10:00:00+07:00", transfer_id="T2"),
        ev(
            "transfer_returned",
            "20-PROC",
            C1,
            "2024-04-20T16:00:00+07:00",
            transfer_id="T2",
            reason="jurisdiction",
        ),
        # T3 never acknowledged: pending, in flight
        sent("20-POLICE", C1, "2024-05-02T08:00:00+07:00", "T3", "20-PIC", "party_discipline"),
        # T4 returned without a receipt, by a system that writes UTC
        sent("20-POLICE", C1, "2024-05-03T01:00:00+07:00", "T4", "00-POLICE", "jurisdiction"),
        ev("transfer_returned", "00-POLICE", C1, "2024-05-10T02:00:00Z", transfer_id="T4",
           reason="other"),
    ]  # fmt: skip


def test_transfers_received_returned_and_pending():
    got = {row["transfer_id"]: row for row in rows(transfer_history(), "transfers")}
    for row in got.values():
        assert pick(row, "case_id", "from_province_code") == {
            "case_id": C1,
            "from_province_code": "20",
        }
    assert got["T1"] == {
        **pick(got["T1"], "case_id", "from_province_code"),
        "transfer_id": "T1",
        "from_agency_id": "20-INSP",
        "to_agency_id": "20-POLICE",
        "to_province_code": "20",
        "to_agency_type": "POLICE",
        "reason": "signs_of_crime",
        "sent_at": datetime(2024, 3, 5, 2, 30),
        "received_at": datetime(2024, 3, 7, 8, 0),
        "returned_at": None,
        "return_reason": None,
        "status": "received",
        "lag_hours": 53.5,
    }
    # returned after its receipt: status returned, and the receipt's lag is still reported
    assert pick(
        got["T2"], "from_agency_id", "to_agency_type", "sent_at", "received_at", "returned_at"
    ) == {
        "from_agency_id": "20-POLICE",
        "to_agency_type": "PROC",
        "sent_at": datetime(2024, 4, 1, 3, 0),
        "received_at": datetime(2024, 4, 2, 3, 0),
        "returned_at": datetime(2024, 4, 20, 9, 0),
    }
    assert pick(got["T2"], "return_reason", "status", "lag_hours") == {
        "return_reason": "jurisdiction",
        "status": "returned",
        "lag_hours": 24.0,
    }
    assert pick(got["T3"], "to_agency_id", "received_at", "returned_at", "status", "lag_hours") == {
        "to_agency_id": "20-PIC",
        "received_at": None,
        "returned_at": None,
        "status": "pending",
        "lag_hours": None,
    }
    # 2024-05-03 01:00+07:00 is 2024-05-02 18:00 UTC; the receiver is central (province 00)
    assert pick(got["T4"], "to_province_code", "sent_at", "received_at", "returned_at") == {
        "to_province_code": "00",
        "sent_at": datetime(2024, 5, 2, 18, 0),
        "received_at": None,
        "returned_at": datetime(2024, 5, 10, 2, 0),
    }
    assert pick(got["T4"], "return_reason", "status", "lag_hours") == {
        "return_reason": "other",
        "status": "returned",
        "lag_hours": None,
    }


def test_case_row_of_the_transfer_history():
    assert only(transfer_history(), "cases") == {
        "case_id": C1,
        "opened_agency_id": "20-INSP",
        "province_code": "20",
        "opened_at": datetime(2024, 3, 1, 1, 0),
        "origin": "inspection",
        "field": "land",
        "subject_kind": "official",
        "prominent": 0,
        "damage_vnd": 5_000_000_000,
        # 20-INSP opens; 20-POLICE receives T1; 20-PROC receives T2 and returns it to its sender
        # 20-POLICE; 00-POLICE returns T4, which it never held: the file stays at 20-POLICE.
        "current_agency_id": "20-POLICE",
        "current_stage": "",
        "status": "open",
        "outcome": "",
        "resolved_at": None,
        "reopened_count": 0,
        "monitored": 0,
        "monitoring_level": "",
        "monitored_at": None,
        "transfers_sent": 4,
        "transfers_in_flight": 1,  # T3
        "discipline_party_members": 0,
        "discipline_party_orgs": 0,
        "assets_identified_vnd": 0,
        "assets_recovered_vnd": 0,
        "last_event_at": datetime(2024, 5, 10, 2, 0),
        "event_count": 9,
    }


def test_a_receipt_without_its_transfer_has_no_transfer_row_yet():
    lone = ev("transfer_received", "20-COURT", C1, "2024-06-01T09:00:00+07:00", transfer_id="T9")
    events = [*transfer_history(), lone]
    assert [r["transfer_id"] for r in rows(events, "transfers")] == ["T1", "T2", "T3", "T4"]
    # ...but it is one of the case's events, and the court now holds the file
    assert pick(only(events, "cases"), "event_count", "transfers_sent", "current_agency_id") == {
        "event_count": 10,
        "transfers_sent": 4,
        "current_agency_id": "20-COURT",
    }


# --------------------------------------------------------------------------- resolution

C2 = "01-INSP/2023/0007"
RESOLUTION = ("status", "outcome", "resolved_at", "reopened_count")


def reopened_history() -> list[dict]:
    return [
        opened("01-INSP", C2, "2023-01-10T08:00:00+07:00"),
        ev("case_resolved", "01-INSP", C2, "2023-06-01T10:00:00+07:00", outcome="administrative"),
        ev("case_reopened", "01-INSP", C2, "2023-09-01T10:00:00+07:00", reason="signs_of_crime"),
    ]


def test_a_reopened_case_is_pending_again():
    case = only(reopened_history(), "cases")
    assert pick(case, *RESOLUTION) == {
        "status": "open",
        "outcome": "",
        "resolved_at": None,
        "reopened_count": 1,
    }
    assert case["last_event_at"] == datetime(2023, 9, 1, 3, 0)


def test_a_case_resolved_again_after_reopening():
    again = ev("case_resolved", "01-POLICE", C2, "2023-12-01T10:00:00+07:00", outcome="convicted")
    case = only([*reopened_history(), again], "cases")
    # the latest resolution counts: convicted on 2023-12-01 03:00 UTC; one reopening so far
    assert pick(case, *RESOLUTION) == {
        "status": "resolved",
        "outcome": "convicted",
        "resolved_at": datetime(2023, 12, 1, 3, 0),
        "reopened_count": 1,
    }
    assert pick(case, "event_count", "current_agency_id") == {
        "event_count": 4,
        "current_agency_id": "01-INSP",
    }


# --------------------------------------------------------------------------- monitoring

C3 = "00-INSP/2024/0002"


def test_monitoring_counts_from_the_first_assignment_at_the_latest_level():
    events = [
        opened("00-INSP", C3, "2024-02-01T09:00:00+07:00", prominent=True),
        ev("monitoring_assigned", "20-SC", C3, "2024-03-01T09:00:00+07:00", level="provincial"),
        ev("monitoring_assigned", "00-SC", C3, "2024-04-01T09:00:00+07:00", level="central"),
    ]
    # monitored since the first assignment (2024-03-01 02:00 UTC), now by the central committee
    case = only(events, "cases")
    assert pick(case, "prominent", "monitored", "monitoring_level", "monitored_at") == {
        "prominent": 1,
        "monitored": 1,
        "monitoring_level": "central",
        "monitored_at": datetime(2024, 3, 1, 2, 0),
    }
    assert pick(case, "province_code", "current_agency_id") == {
        "province_code": "00",
        "current_agency_id": "00-INSP",
    }


# --------------------------------------------------------------------------- appraisals

C4 = "79-POLICE/2024/0003"


def test_appraisals_completed_pending_and_completion_only():
    def appraisal(kind: str, agency: str, at: str, aid: str, what: str) -> dict:
        return ev(f"appraisal_{kind}", agency, C4, at, appraisal_id=aid, kind=what)

    events = [
        opened("79-POLICE", C4, "2024-01-01T08:00:00+07:00"),
        # A1: 2024-01-02 01:00Z -> 2024-02-01 07:00Z = 30 days + 6 h = 726 h
        appraisal("requested", "79-POLICE", "2024-01-02T08:00:00+07:00", "A1", "valuation"),
        appraisal("completed", "79-POLICE", "2024-02-01T14:00:00+07:00", "A1", "valuation"),
        appraisal("requested", "79-POLICE", "2024-03-01T08:00:00+07:00", "A2", "technical"),
        # A3: only its completion is known (the request not delivered yet)
        appraisal("completed", "79-PROC", "2024-04-01T08:00:00+07:00", "A3", "forensic_accounting"),
    ]
    got = {row["appraisal_id"]: row for row in rows(events, "appraisals")}
    assert got["A1"] == {
        "appraisal_id": "A1",
        "case_id": C4,
        "agency_id": "79-POLICE",
        "kind": "valuation",
        "requested_at": datetime(2024, 1, 2, 1, 0),
        "completed_at": datetime(2024, 2, 1, 7, 0),
        "status": "completed",
        "lag_hours": 726.0,
    }
    assert pick(got["A2"], "kind", "requested_at", "completed_at", "status", "lag_hours") == {
        "kind": "technical",
        "requested_at": datetime(2024, 3, 1, 1, 0),
        "completed_at": None,
        "status": "pending",
        "lag_hours": None,
    }
    assert pick(got["A3"], "agency_id", "kind", "requested_at", "status", "lag_hours") == {
        "agency_id": "79-PROC",
        "kind": "forensic_accounting",
        "requested_at": None,
        "status": "completed",
        "lag_hours": None,
    }


# --------------------------------------------------------------------------- discipline, assets

C5 = "22-PIC/2022/0004"


def test_discipline_and_assets_are_summed_the_stage_is_the_latest():
    def discipline(at: str, target: str, count: int, form: str) -> dict:
        return ev("discipline_imposed", "22-PIC", C5, at, target=target, count=count, form=form)

    def assets(at: str, identified: int, recovered: int) -> dict:
        return ev("assets_recovered", "22-CJE", C5, at, identified_vnd=identified,
                  recovered_vnd=recovered)  # fmt: skip

    events = [
        opened("22-PIC", C5, "2022-05-02T08:00:00+07:00", subject_kind="party_member"),
        discipline("2022-06-01T08:00:00+07:00", "party_member", 3, "warning"),
        discipline("2022-06-02T08:00:00+07:00", "party_member", 2, "reprimand"),
        discipline("2022-06-03T08:00:00+07:00", "party_organization", 1, "reprimand"),
        ev("stage_changed", "22-POLICE", C5, "2022-07-01T08:00:00+07:00",
           stage="investigation_opened"),
        ev("stage_changed", "22-POLICE", C5, "2022-08-01T08:00:00+07:00",
           stage="suspects_charged", count=4),
        assets("2022-09-01T08:00:00+07:00", 100_000_000, 40_000_000),
        assets("2022-10-01T08:00:00+07:00", 50_000_000, 60_000_000),
    ]  # fmt: skip
    case = only(events, "cases")
    # members 3 + 2 = 5, organizations 1; identified 100 + 50 M, recovered 40 + 60 M
    assert pick(case, "discipline_party_members", "discipline_party_orgs") == {
        "discipline_party_members": 5,
        "discipline_party_orgs": 1,
    }
    assert pick(case, "assets_identified_vnd", "assets_recovered_vnd") == {
        "assets_identified_vnd": 150_000_000,
        "assets_recovered_vnd": 100_000_000,
    }
    # no transfer was received: the file is still with the party inspection commission
    assert pick(case, "current_stage", "current_agency_id", "event_count") == {
        "current_stage": "suspects_charged",
        "current_agency_id": "22-PIC",
        "event_count": 8,
    }
    # the events table: `stage` filled for stage_changed, the payload record complete
    assert {r["stage"]: r["payload"] for r in rows(events, "events") if r["stage"]} == {
        "investigation_opened": {"stage": "investigation_opened", "count": None},
        "suspects_charged": {"stage": "suspects_charged", "count": 4},
    }


# --------------------------------------------------------------------------- the 2025 merger

C6 = "34-INSP/2025/0001"


def merger_history() -> list[dict]:
    """Opened in Thái Bình (34), sent to its police the evening before the merger, received by
    Hưng Yên's police (33): Thái Bình joined Hưng Yên on 2025-07-01."""
    return [
        opened("34-INSP", C6, "2025-06-20T09:00:00+07:00"),
        # local date 2025-06-30: 34-POLICE still exists; 16:30 UTC
        sent("34-INSP", C6, "2025-06-30T23:30:00+07:00", "T-M", "34-POLICE", "signs_of_crime"),
        # 2025-06-30 16:30Z -> 2025-07-02 01:00Z = 24 h + 8.5 h = 32.5 h
        ev("transfer_received", "33-POLICE", C6, "2025-07-02T08:00:00+07:00", transfer_id="T-M"),
        ev("stage_changed", "33-POLICE", C6, "2025-07-10T08:00:00+07:00",
           stage="investigation_opened"),
        # written in UTC: its local date is 2025-06-30, so 34-INSP is still known
        ev("assets_recovered", "34-INSP", C6, "2025-06-30T20:00:00Z", identified_vnd=7,
           recovered_vnd=0),
    ]  # fmt: skip


def test_province_of_an_agency_follows_the_reference_dates():
    assert province_at("34-POLICE", date(2025, 6, 30)) == "34"
    assert province_at("33-POLICE", date(2025, 7, 1)) == "33"
    assert province_at("15-INSP", date(2025, 6, 30)) == "15"  # Yên Bái
    assert province_at("15-INSP", date(2025, 7, 1)) == "15"  # Lào Cai, on Yên Bái's code
    assert province_at("00-SC", date(1990, 1, 1)) == "00"
    for agency, on in [
        ("34-POLICE", date(2025, 7, 1)),
        ("99-POLICE", date(2024, 1, 1)),
        ("20-NOPE", date(2024, 1, 1)),
    ]:
        with pytest.raises(ValueError):
            province_at(agency, on)


def test_the_merger_keeps_the_province_of_the_time():
    events = merger_history()
    assert {
        (r["agency_id"], r["event_type"]): r["province_code"] for r in rows(events, "events")
    } == {
        ("34-INSP", "case_opened"): "34",
        ("34-INSP", "case_transferred"): "34",
        ("33-POLICE", "transfer_received"): "33",
        ("33-POLICE", "stage_changed"): "33",
        ("34-INSP", "assets_recovered"): "34",
    }
    transfer = only(events, "transfers")
    assert pick(transfer, "to_agency_id", "to_province_code", "status", "lag_hours") == {
        "to_agency_id": "34-POLICE",
        "to_province_code": "34",
        "status": "received",
        "lag_hours": 32.5,
    }
    assert pick(only(events, "cases"), "province_code", "current_agency_id", "current_stage") == {
        "province_code": "34",
        "current_agency_id": "33-POLICE",
        "current_stage": "investigation_opened",
    }


def test_an_agency_that_no_longer_exists_is_refused():
    # the same instant as 2025-06-30T20:00:00Z, but its local date is 2025-07-01
    late = opened("34-INSP", "34-INSP/2025/0002", "2025-07-01T03:00:00+07:00")
    with pytest.raises(ValueError, match="34-INSP"):
        expected_tables([late])


# --------------------------------------------------------------------------- events rows


def test_event_rows_carry_the_whole_payload_and_the_written_offset():
    event = make_event(
        "case_opened",
        "00-AUDIT",
        "00-AUDIT/2024/0001",
        "2024-03-05T02:30:00.123456Z",  # sub-millisecond digits are truncated
        {"origin": "audit", "field": "finance", "subject_kind": "enterprise", "prominent": False},
        event_id="0B6F1C2E-4A1D-4C6B-9F7E-0123456789AB",
        sequence=17,
    )
    assert only([event], "events") == {
        "event_id": "0b6f1c2e-4a1d-4c6b-9f7e-0123456789ab",
        "event_type": "case_opened",
        "case_id": "00-AUDIT/2024/0001",
        "agency_id": "00-AUDIT",
        "province_code": "00",
        "agency_type": "AUDIT",
        "occurred_at": datetime(2024, 3, 5, 2, 30, 0, 123000),
        "utc_offset_minutes": 0,
        "sequence": 17,
        "transfer_id": "",
        "to_agency_id": "",
        "stage": "",
        "outcome": "",
        # the whole record: the absent optional damage_vnd is there, null
        "payload": {**event["payload"], "damage_vnd": None},
    }
    row = only([transfer_history()[1]], "events")
    assert pick(row, "transfer_id", "to_agency_id", "utc_offset_minutes", "sequence") == {
        "transfer_id": "T1",
        "to_agency_id": "20-POLICE",
        "utc_offset_minutes": 420,
        "sequence": None,
    }


# --------------------------------------------------------------------------- sets, not streams


@pytest.mark.parametrize("seed", range(4))
def test_duplicates_and_delivery_order_change_nothing(seed):
    events = [*transfer_history(), *reopened_history(), *merger_history()]
    reference = expected_tables(events)
    rng = random.Random(seed)
    delivered = events + rng.sample(events, 5) + [dict(e) for e in events[:2]]
    rng.shuffle(delivered)
    assert expected_tables(delivered) == reference
    assert len(reference["events"]) == len(events)


def test_one_event_id_with_two_contents_is_refused():
    first = transfer_history()[0]
    changed = {**first, "occurred_at": "2024-03-01T09:00:00+07:00"}
    with pytest.raises(ValueError, match=first["event_id"]):
        expected_tables([first, changed])


# --------------------------------------------------------------------------- the columns


def _migration_columns(table: str) -> list[str]:
    """Column names of a CREATE TABLE in 0001_facts.sql (one column per line)."""
    sql = (REPO / "infra/clickhouse/migrations/0001_facts.sql").read_text()
    body = re.search(rf"CREATE TABLE IF NOT EXISTS {table}\s*\((.*?)\n\)", sql, re.S)
    assert body, table
    return [line.split()[0] for line in body.group(1).splitlines() if line.strip()]


def test_the_oracle_has_exactly_the_views_columns():
    def without_version(table: str) -> list[str]:
        return [c for c in _migration_columns(table) if c != "version"]

    assert list(CASE_COLUMNS) == without_version("cases_state")
    assert list(TRANSFER_COLUMNS) == without_version("transfers_state")
    assert list(APPRAISAL_COLUMNS) == without_version("appraisals_state")
    assert list(EVENT_COLUMNS) == _migration_columns("events")  # ingested_at (0005) left out


def test_the_comparison_names_each_differing_column():
    expected = expected_tables(transfer_history())
    actual = {name: list(table) for name, table in expected.items()}
    lag = TRANSFER_COLUMNS.index("lag_hours")
    actual["transfers"][0] = (*actual["transfers"][0][:lag], 54.5)
    actual["cases"] = []
    problems = [p for t in COLUMNS for p in table_differences(t, actual[t], expected[t])]
    assert problems == [
        f"cases: 1 expected rows missing: '{C1}'",
        "transfers.lag_hours: 1 of 4 rows differ, e.g. T1: got 54.5, expected 53.5",
    ]
    with pytest.raises(pytest.fail.Exception, match="lag_hours"):
        assert_tables_match(actual, expected)
    # float noise is no difference
    actual["transfers"][0] = (*actual["transfers"][0][:lag], 53.5 + 1e-12)
    assert table_differences("transfers", actual["transfers"], expected["transfers"]) == []


# --------------------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def generated_history(tmp_path_factory) -> list[dict]:
    """~3,000 published lines across the 2025 merger (Thái Bình 34 and Quảng Trị 45 end), in
    the order agencies deliver them, with repeated and late lines."""
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
    return [json.loads(line) for line in path.read_text().splitlines()]


def facts_as_the_worker_builds_them(events: list[dict]) -> list[Fact]:
    """JSON form -> Avro on the agency's topic -> the worker's Ingestor -> the re-keyed facts
    topic (JSON): the facts `apply_batch` receives in production."""
    registry = InMemorySchemaRegistry()
    ingestor = Ingestor(SchemaCache(registry))
    schema_ids: dict[str, int] = {}
    facts = []
    for event in events:
        agency = event["agency_id"]
        if agency not in schema_ids:
            schema_ids[agency] = register_agency_subject(registry, agency)
        raw = encode(parse_event(event), schema_ids[agency])
        fact = ingestor.accept(raw, topic_for_agency(agency))
        facts.append(Fact.from_json(fact.to_json()))
    return facts


def worker_tables(facts: list[Fact], batch_size: int) -> dict[str, list[tuple]]:
    """Run the worker's derivation batch by batch with a dict as its state, and keep what the
    ReplacingMergeTree views show: per id, the row with the highest version (the last written
    among equal versions), without the version column."""
    state: dict = {}
    latest: dict[str, dict] = {"cases": {}, "transfers": {}, "appraisals": {}, "events": {}}
    for start in range(0, len(facts), batch_size):
        result = apply_batch(facts[start : start + batch_size], state.get)
        state.update(result.changed)
        for view in ("cases", "transfers", "appraisals"):
            for row in result.rows.rows[f"{view}_state"]:
                kept = latest[view].get(row[0])
                if kept is None or row[-1] >= kept[-1]:
                    latest[view][row[0]] = row
        for row in result.rows.rows["events"]:
            latest["events"][row[0]] = row
    return {
        # events: without the home written with the row (tests/processor/test_event_home.py);
        # the others: without the version
        view: [tuple(row[:-1]) for row in kept.values()]
        for view, kept in latest.items()
    }


def test_the_generated_history_exercises_the_rules(generated_history):
    expected = expected_tables(generated_history)

    def count(table: str, test: Callable[[dict], Any]) -> int:
        return sum(
            1 for row in expected[table] if test(dict(zip(COLUMNS[table], row, strict=True)))
        )

    receivers = {
        e["payload"]["transfer_id"]: e["agency_id"]
        for e in generated_history
        if e["event_type"] == "transfer_received"
    }
    assert len(generated_history) > len(expected["events"]) > 2000
    assert count("transfers", lambda t: t["status"] == "received") > 100
    assert count("transfers", lambda t: t["status"] == "returned" and t["received_at"]) > 0
    assert count("transfers", lambda t: t["status"] == "returned" and not t["received_at"]) > 0
    assert count("transfers", lambda t: t["status"] == "pending") > 0
    assert count("cases", lambda c: c["reopened_count"] > 0) > 0
    assert count("cases", lambda c: c["monitored"]) > 0
    assert count("cases", lambda c: c["discipline_party_orgs"] > 0) > 0
    assert count("cases", lambda c: c["assets_recovered_vnd"] > 0) > 0
    assert count("appraisals", lambda a: a["status"] == "pending") > 0
    assert count("appraisals", lambda a: a["status"] == "completed") > 0
    # the merger: Thái Bình's agencies before it, Hưng Yên's after, and a transfer to an agency
    # that ended with the merger, received by its successor
    assert count("events", lambda e: e["province_code"] == "34") > 0
    assert count("events", lambda e: e["province_code"] == "33") > 0

    def received_by_a_successor(t: dict) -> bool:
        return receivers.get(t["transfer_id"]) not in (None, t["to_agency_id"])

    assert count("transfers", received_by_a_successor) > 0


def test_the_workers_derivation_matches_the_oracle_on_every_column(generated_history):
    facts = facts_as_the_worker_builds_them(generated_history)
    assert_tables_match(worker_tables(facts, batch_size=97), expected_tables(generated_history))
