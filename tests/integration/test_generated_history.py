"""A generated history through the real stack gives exactly the tables the contract implies.

The expected rows come from tests/oracle.py, an independent reading of the contract that shares
no code with the worker: every column of `cases`, `transfers`, `appraisals` and of the `events`
rows is compared. If the worker and the oracle disagree, one of them misreads the contract.
"""

from __future__ import annotations

import json
import time
from datetime import date

import pytest

from services.agency.generator import GeneratorOptions, write_jsonl
from services.agency.publisher import Publisher
from services.ops.consumer_lag import wait_caught_up
from tests.helpers import new_tag, retag, table_snapshot, wait_for
from tests.oracle import COLUMNS, assert_tables_match, expected_tables

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history(stack, worker, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    summary = write_jsonl(
        GeneratorOptions(
            seed=11,
            start=date(2021, 1, 1),
            end=date(2023, 12, 31),
            events=4000,
            provinces=("01", "20", "34", "79"),
            duplicates=0.02,
            out_of_order=0.05,
        ),
        path,
    )
    assert summary.duplicates > 0 and summary.out_of_order > 0
    tag = new_tag()
    lines = [retag(json.loads(line), tag) for line in path.read_text().splitlines()]
    with Publisher(None, stack) as operator:
        for start in range(0, len(lines), 1000):
            operator.publish_many(lines[start : start + 1000])
    unique = {e["event_id"]: e for e in lines}
    ch = stack.clickhouse_client()
    wait_caught_up(stack, timeout=300)
    like = {"p": f"{tag}:%"}
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}", parameters=like
            )
            == len(unique)
        ),
        timeout=120,
        what="every unique event in ClickHouse",
    )
    # Also give every case's last row time to land (a case row counts the events it was derived
    # from). Not fatal: if it never happens, the comparison says which rows differ.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ch.command(
        "SELECT sum(event_count) FROM cases WHERE case_id LIKE {p:String}", parameters=like
    ) != len(unique):
        time.sleep(0.5)
    return tag, lines


@pytest.fixture(scope="module")
def expected(history) -> dict[str, list[tuple]]:
    _, lines = history
    return expected_tables(lines)  # from every published line, duplicates included


@pytest.mark.parametrize("view", ["cases", "transfers", "appraisals"])
def test_the_views_have_exactly_the_oracles_columns(ch, view):
    assert tuple(ch.query(f"SELECT * FROM {view} LIMIT 0").column_names) == COLUMNS[view]


def test_the_events_table_has_exactly_the_oracles_columns(ch):
    names = ch.query(
        "SELECT * EXCEPT (ingested_at, home_province_code) FROM events LIMIT 0"
    ).column_names
    assert tuple(names) == COLUMNS["events"]


def test_the_history_is_worth_comparing(expected):
    def as_dicts(table: str) -> list[dict]:
        return [dict(zip(COLUMNS[table], row, strict=True)) for row in expected[table]]

    transfers, cases = as_dicts("transfers"), as_dicts("cases")
    assert sum(1 for t in transfers if t["status"] == "received") > 50
    assert any(t["status"] == "returned" for t in transfers)
    assert any(t["status"] == "pending" for t in transfers)
    assert any(c["reopened_count"] for c in cases) and any(c["monitored"] for c in cases)
    assert any(a["status"] == "completed" for a in as_dicts("appraisals"))


@pytest.mark.parametrize("table", ["cases", "transfers", "appraisals", "events"])
def test_every_column_matches_the_oracle(history, ch, expected, table):
    tag, _ = history
    assert_tables_match(table_snapshot(ch, tag), expected, tables=[table])


def test_each_event_row_has_its_cases_home_or_its_case_is_listed(history, ch):
    """The provincial rollups read the home written with each event (the agency's province when
    it is '') unless its case is in `cases_rehomed` (rollups.py): through the real worker, with
    late and repeated events, that is the case's home (the agency's province for a case with
    no home), or the case is listed."""
    tag, _ = history
    rows, wrong, listed = ch.query(
        "SELECT count(), countIf(if(e.home_province_code != '', e.home_province_code, "
        "e.province_code) != if(c.province_code != '', c.province_code, e.province_code) "
        "AND e.case_id NOT IN (SELECT case_id FROM cases_rehomed)), uniqExactIf(e.case_id, "
        "e.case_id IN (SELECT case_id FROM cases_rehomed)) "
        "FROM events AS e FINAL INNER JOIN cases AS c ON c.case_id = e.case_id "
        "WHERE e.case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows[0]
    assert rows > 3000 and wrong == 0, (rows, wrong, listed)
