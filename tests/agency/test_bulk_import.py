"""Bulk import (`casestream publish FILE`): bad rows are reported by line, field and value, the good
rows are published once, and `casestream generate` output publishes without a single rejection.

Unit tests drive `import_file` with an in-memory publisher; integration tests publish to the
session's Kafka and read the agency topics back (each test tags its case ids).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import pytest

from services.agency.bulk_import import LineError, format_summary, import_file
from services.agency.generator import GeneratorOptions, write_jsonl
from services.agency.publisher import Accepted
from services.contracts.events import parse_event, topic_for_agency
from services.ops.consumer_lag import wait_caught_up
from services.ops.topics import DLQ_TOPIC
from tests.agency.test_publishing import decoded_events, read_topics
from tests.helpers import make_event, new_tag, retag, wait_for

REPO = Path(__file__).resolve().parents[2]
OPENED = {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": True}
FUTURE = "2099-01-01T00:00:00+07:00"


# --------------------------------------------------------------------------- files with bad rows


def _uuid() -> str:
    return str(uuid.uuid4())


def jsonl_file(path: Path, tag: str) -> tuple[list[dict], list[tuple[int, str, object]]]:
    """A JSONL file with good and bad rows; returns (good events, expected (line, field, value))."""
    case = f"{tag}:20-INSP/2024/0001"
    good = [
        make_event("case_opened", "20-INSP", case, "2024-02-01T08:00:00+07:00", OPENED),
        make_event(
            "case_transferred",
            "20-INSP",
            case,
            "2024-02-03T08:00:00+07:00",
            {"transfer_id": f"{tag}:T1", "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
        ),
        make_event(
            "transfer_received",
            "20-POLICE",
            case,
            "2024-02-05T10:30:00+07:00",
            {"transfer_id": f"{tag}:T1"},
        ),
        make_event(
            "stage_changed",
            "20-POLICE",
            case,
            "2024-03-01T09:00:00+07:00",
            {"stage": "investigation_opened"},
        ),
    ]
    opened = good[0]
    missing_case = {k: v for k, v in opened.items() if k != "case_id"}
    lines = [
        json.dumps(good[0]),  # 1
        json.dumps(good[1]),  # 2
        '{"event_id": "' + _uuid() + '", "event_type": "case_opened", ',  # 3 bad JSON
        "",  # 4 blank
        json.dumps({**opened, "event_id": _uuid(), "agency_id": "20-FBI"}),  # 5
        json.dumps(
            {
                **opened,
                "event_id": _uuid(),  # 6
                "payload": {**OPENED, "origin": "rumour"},
            }
        ),
        json.dumps({**missing_case, "event_id": _uuid()}),  # 7
        json.dumps({**opened, "event_id": "1234"}),  # 8
        json.dumps({**opened, "event_id": _uuid(), "occurred_at": FUTURE}),  # 9
        json.dumps(good[2]),  # 10
        json.dumps(good[3], ensure_ascii=False),  # 11
        json.dumps(good[0]),  # 12: the same event twice in one file: a duplicate
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [
        (3, "<line>", None),
        (5, "agency_id", "20-FBI"),
        (6, "payload.origin", "rumour"),
        (7, "case_id", None),
        (8, "event_id", "1234"),
        (9, "occurred_at", FUTURE),
    ]
    return good, expected


CSV_COLUMNS = [
    "event_id",
    "event_type",
    "case_id",
    "agency_id",
    "occurred_at",
    "sequence",
    "payload.origin",
    "payload.field",
    "payload.subject_kind",
    "payload.prominent",
    "payload.damage_vnd",
    "payload.transfer_id",
    "payload.to_agency_id",
    "payload.reason",
]


def _csv_row(event: dict) -> list[str]:
    flat = {k: v for k, v in event.items() if k != "payload"}
    flat.update({f"payload.{k}": v for k, v in event["payload"].items()})
    cells = []
    for column in CSV_COLUMNS:
        value = flat.get(column, "")
        cells.append(str(value).lower() if isinstance(value, bool) else str(value))
    return cells


def csv_file(path: Path, tag: str) -> tuple[list[dict], list[tuple[int, str, object]]]:
    case = f"{tag}:20-AUDIT/2024/0002"
    transfer = f'{tag}:T2,"b"'  # a comma and quotes: a quoted CSV cell
    good = [
        make_event(
            "case_opened",
            "20-AUDIT",
            case,
            "2024-04-01T08:00:00+07:00",
            {**OPENED, "damage_vnd": 2_000_000_000},
            sequence=None,
        ),
        make_event(
            "case_transferred",
            "20-AUDIT",
            case,
            "2024-04-02T08:00:00+07:00",
            {"transfer_id": transfer, "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
        ),
        make_event(
            "transfer_returned",
            "20-POLICE",
            case,
            "2024-04-09T08:00:00+07:00",
            {"transfer_id": transfer, "reason": "jurisdiction"},
        ),
    ]
    opened = good[0]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)  # 1
    writer.writerow(_csv_row(good[0]))  # 2
    writer.writerow(_csv_row(good[1]))  # 3
    writer.writerow(
        _csv_row(
            {
                **opened,
                "event_id": _uuid(),  # 4
                "payload": {**OPENED, "field": "fishing"},
            }
        )
    )
    writer.writerow([*_csv_row({**opened, "event_id": _uuid()}), "surplus"])  # 5
    writer.writerow(_csv_row({**opened, "event_id": _uuid(), "agency_id": "99-INSP"}))  # 6
    writer.writerow(_csv_row({**opened, "event_id": _uuid(), "case_id": ""}))  # 7
    writer.writerow(_csv_row({**opened, "event_id": "not-a-uuid"}))  # 8
    writer.writerow(_csv_row({**opened, "event_id": _uuid(), "occurred_at": FUTURE}))  # 9
    writer.writerow(
        _csv_row(
            {
                **opened,
                "event_id": _uuid(),  # 10
                "payload": {**OPENED, "prominent": "maybe"},
            }
        )
    )
    writer.writerow(_csv_row(good[2]))  # 11
    path.write_text(out.getvalue(), encoding="utf-8")
    expected = [
        (4, "payload.field", "fishing"),
        (5, "<row>", ["surplus"]),
        (6, "agency_id", "99-INSP"),
        (7, "case_id", None),
        (8, "event_id", "not-a-uuid"),
        (9, "occurred_at", FUTURE),
        (10, "payload.prominent", "maybe"),
    ]
    return good, expected


def _errors(summary) -> list[tuple[int, str, object]]:
    return [(e.line, e.field, None if e.field == "<line>" else e.value) for e in summary.errors]


class MemoryPublisher:
    """Stands in for `Publisher(None, settings)`: validates and remembers event_ids."""

    def __init__(self) -> None:
        self.published: dict[str, dict] = {}
        self.closed = 0

    def publish_many(self, events):
        normalized = [parse_event(e) for e in events]  # raises like the real one
        results = []
        for event in normalized:
            new = event["event_id"] not in self.published
            self.published.setdefault(event["event_id"], event)
            results.append(Accepted(event["event_id"], new))
        return results

    def close(self, timeout: float = 30.0) -> int:
        self.closed += 1
        return 0


# =========================================================================== unit


@pytest.fixture(autouse=True)
def _audit_in_tmp(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> None:
    """Unit imports build their settings from the environment: keep their audit record in tmp."""
    if request.node.get_closest_marker("unit"):
        monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path / "home"))


@pytest.mark.unit
def test_every_import_is_recorded_for_audit_with_operator_file_hash_and_counts(
    tmp_path, monkeypatch
):
    import hashlib

    from services.agency.import_audit import read_records

    monkeypatch.setenv("CASESTREAM_OPERATOR", "nguyen.van.a")
    path = tmp_path / "records.jsonl"
    jsonl_file(path, "a")
    summary = import_file(path, publisher_factory=MemoryPublisher)
    again = import_file(path, publisher_factory=MemoryPublisher)
    records = read_records(tmp_path / "home")
    assert [r["import_id"] for r in records] == [summary.import_id, again.import_id]
    first = records[0]
    assert first["operator"] == "nguyen.van.a"
    assert first["file"] == str(path.resolve())
    assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (first["lines"], first["accepted"], first["rejected"]) == (11, 4, 6)
    assert first["by_agency"] == {"20-INSP": 2, "20-POLICE": 2}
    assert first["started_at"] <= first["finished_at"]
    assert f"audit: import {summary.import_id} recorded in " in format_summary(summary)


@pytest.mark.unit
def test_jsonl_bad_rows_are_reported_by_line_field_and_value(tmp_path):
    path = tmp_path / "records.jsonl"
    good, expected = jsonl_file(path, "u")
    memory = MemoryPublisher()
    summary = import_file(path, publisher_factory=lambda: memory)
    assert _errors(summary) == expected
    assert summary.errors[0].reason.startswith("invalid JSON")
    assert (summary.lines, summary.accepted, summary.duplicates, summary.rejected) == (11, 4, 1, 6)
    assert set(memory.published) == {e["event_id"] for e in good}
    assert dict(summary.by_agency) == {"20-INSP": 2, "20-POLICE": 2}
    assert memory.closed == 1

    text = format_summary(summary)
    assert 'line 5: agency_id = "20-FBI": unknown agency' in text
    assert 'line 9: occurred_at = "2099-01-01T00:00:00+07:00": is in the future' in text
    assert "11 lines: 4 accepted, 1 duplicates (already published), 6 rejected" in text

    again = import_file(path, publisher_factory=lambda: memory)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 5, 6)


@pytest.mark.unit
def test_csv_bad_rows_are_reported_by_line_field_and_value(tmp_path):
    path = tmp_path / "records.csv"
    good, expected = csv_file(path, "u")
    memory = MemoryPublisher()
    summary = import_file(path, publisher_factory=lambda: memory)
    assert _errors(summary) == expected
    assert summary.errors[1].reason == "more cells than header columns"
    assert (summary.accepted, summary.rejected) == (3, 7)
    published = {eid: e for eid, e in memory.published.items()}
    assert set(published) == {e["event_id"] for e in good}
    # numbers, booleans and quoted cells (comma, quotes) are read back to the JSON form
    opened = published[good[0]["event_id"]]
    assert opened["payload"]["damage_vnd"] == 2_000_000_000
    assert opened["payload"]["prominent"] is True
    returned = published[good[2]["event_id"]]
    assert returned["payload"]["transfer_id"] == 'u:T2,"b"'


@pytest.mark.unit
def test_import_as_one_agency_rejects_other_agencies_rows(tmp_path):
    path = tmp_path / "records.jsonl"
    jsonl_file(path, "u")
    summary = import_file(path, only_agency="20-INSP", publisher_factory=MemoryPublisher)
    police = [e for e in summary.errors if e.field == "agency_id" and e.value == "20-POLICE"]
    assert [e.line for e in police] == [10, 11]
    assert "only publish its own events" in police[0].reason
    assert summary.accepted == 2


@pytest.mark.unit
def test_missing_file_and_line_error_formatting(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_file(tmp_path / "absent.jsonl", publisher_factory=MemoryPublisher)
    long = LineError(3, "<line>", "x" * 200, "invalid JSON")
    assert str(long).startswith('line 3: <line> = "xxx') and str(long).endswith("...: invalid JSON")


# =========================================================================== real stack


def _tagged_events(stack, agencies, tag: str) -> list[dict]:
    return decoded_events(stack, read_topics(stack, [topic_for_agency(a) for a in agencies]), tag)


@pytest.mark.integration
def test_good_rows_are_published_once_and_bad_rows_reported(stack, tmp_path):
    tag = new_tag()
    jsonl_good, jsonl_expected = jsonl_file(tmp_path / "records.jsonl", tag)
    csv_good, csv_expected = csv_file(tmp_path / "records.csv", tag)
    good_ids = {e["event_id"] for e in [*jsonl_good, *csv_good]}
    agencies = {e["agency_id"] for e in [*jsonl_good, *csv_good]}

    summary = import_file(tmp_path / "records.jsonl", stack)
    assert _errors(summary) == jsonl_expected
    assert (summary.accepted, summary.duplicates, summary.rejected, summary.pending) == (4, 1, 6, 0)
    summary = import_file(tmp_path / "records.csv", stack)
    assert _errors(summary) == csv_expected
    assert (summary.accepted, summary.rejected, summary.pending) == (3, 7, 0)

    published = _tagged_events(stack, agencies, tag)
    assert sorted(e["event_id"] for e in published) == sorted(good_ids)

    # importing again publishes nothing new: every good row is a duplicate
    for name, good, expected in (
        ("records.jsonl", jsonl_good, jsonl_expected),
        ("records.csv", csv_good, csv_expected),
    ):
        again = import_file(tmp_path / name, stack)
        assert again.accepted == 0 and again.pending == 0
        assert again.duplicates == len(good) + (1 if name.endswith("jsonl") else 0)
        assert _errors(again) == expected
    assert len(_tagged_events(stack, agencies, tag)) == len(good_ids)


def _cli_publish(path: Path) -> subprocess.CompletedProcess:
    uv = shutil.which("uv")
    command = (
        [uv, "run", "--no-sync", "casestream"] if uv else [sys.executable, "-m", "services.cli"]
    )
    return subprocess.run(
        [*command, "publish", str(path)],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_publish_command(stack, tmp_path):
    tag = new_tag()
    path = tmp_path / "records.jsonl"
    good, _expected = jsonl_file(path, tag)

    first = _cli_publish(path)
    assert first.returncode == 1, first.stdout + first.stderr
    out = first.stdout
    assert "line 3: <line> = " in out and "invalid JSON" in out
    assert 'line 5: agency_id = "20-FBI": unknown agency' in out
    assert 'line 6: payload.origin = "rumour": must be one of' in out
    assert "line 7: case_id = null: required field is missing" in out
    assert 'line 8: event_id = "1234": must be a UUID' in out
    assert "line 9: occurred_at = " in out and "is in the future" in out
    assert "11 lines: 4 accepted, 1 duplicates (already published), 6 rejected, 0 waiting" in out
    published = _tagged_events(stack, {"20-INSP", "20-POLICE"}, tag)
    assert sorted(e["event_id"] for e in published) == sorted(e["event_id"] for e in good)

    second = _cli_publish(path)
    assert second.returncode == 1
    assert "11 lines: 0 accepted, 5 duplicates (already published), 6 rejected" in second.stdout

    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(e) + "\n" for e in good))
    third = _cli_publish(clean)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "4 lines: 0 accepted, 4 duplicates" in third.stdout and "0 rejected" in third.stdout
    assert len(_tagged_events(stack, {"20-INSP", "20-POLICE"}, tag)) == len(good)


@pytest.mark.integration
@pytest.mark.slow
def test_generated_output_publishes_without_a_single_rejection(stack, worker, ch, tmp_path):
    raw = tmp_path / "generated.jsonl"
    generated = write_jsonl(
        GeneratorOptions(
            seed=23,
            # Years after every hand-computed rollup test (2011-2019): cumulative national figures
            # (pending, monitored) of earlier periods must not see these cases.
            start=date(2024, 1, 1),
            end=date(2025, 6, 30),
            events=3000,
            provinces=("01", "20", "45", "79"),
            duplicates=0.03,
            out_of_order=0.05,
        ),
        raw,
    )
    assert generated.duplicates > 0 and generated.out_of_order > 0
    # the file exactly as generated validates without a rejection
    as_written = import_file(raw, publisher_factory=MemoryPublisher)
    assert as_written.rejected == 0, format_summary(as_written)
    assert as_written.duplicates > 0

    # its tagged copy (ids unique to this test) goes through the real stack
    tag = new_tag()
    tagged = tmp_path / "tagged.jsonl"
    lines = [retag(json.loads(line), tag) for line in raw.read_text().splitlines()]
    tagged.write_text("".join(json.dumps(e) + "\n" for e in lines))
    unique = {e["event_id"] for e in lines}
    summary = import_file(tagged, stack)
    assert summary.rejected == 0, format_summary(summary)
    assert summary.accepted == len(unique)
    assert summary.duplicates == len(lines) - len(unique)
    assert summary.pending == 0

    try:
        wait_caught_up(stack, timeout=420)
    except TimeoutError as exc:
        pytest.fail(f"{exc}; worker alive: {worker.alive()}; its log:\n{worker.log_tail()}")
    like = {"p": f"{tag}:%"}
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}", parameters=like
            )
            == len(unique)
        ),
        timeout=300,
        what="every unique event in ClickHouse",
    )
    stored = ch.query(
        "SELECT toString(event_id) FROM events FINAL WHERE case_id LIKE {p:String}", parameters=like
    ).result_rows
    assert {row[0] for row in stored} == unique
    dead = [
        m
        for m in read_topics(stack, [DLQ_TOPIC])
        if (m.key() or b"").startswith(f"{tag}:".encode())
    ]
    assert dead == [], [dict(m.headers() or []) for m in dead[:5]]
