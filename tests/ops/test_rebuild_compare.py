"""How a rebuild decides "the rebuilt tables equal the live ones", on the real ClickHouse endpoint.

The comparison it replaced (row count plus an XOR of `cityHash64(*)` per table) said "equal" for
tables that were not: two equal rows cancel out of an XOR, and `cityHash64(*)` is NULL for a row
with any NULL column, which the aggregate skips. Each test below first shows that the old scheme
is fooled by its data, then that the comparison now finds the difference and names it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.ops import rebuild as rebuild_module
from services.ops.rebuild import (
    COMPARE_ATTEMPTS,
    COMPARED_TABLES,
    KeyDifference,
    RebuildResult,
    TableDifference,
    rows_difference,
    rows_digest,
    table_differences,
    table_digests,
)
from services.serving.migrations import migrate
from services.settings import Settings
from tests.clickhouse_endpoint.conftest import start_endpoint


def old_checksum(client, query: str) -> tuple[int, int]:
    """The comparison this replaced, verbatim."""
    count, digest = client.query(
        f"SELECT count(), groupBitXor(cityHash64(*)) FROM ({query})"
    ).result_rows[0]
    return int(count), int(digest or 0)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    endpoint = start_endpoint(tmp_path_factory.mktemp("rebuild-compare"))
    try:
        yield replace(
            Settings.from_env(),
            clickhouse_url=endpoint.url,
            clickhouse_user="casestream",
            clickhouse_password="s3cret pass",
        )
    finally:
        code = endpoint.stop()
        log = endpoint.log_text()
        assert code == 0 and "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture
def client(settings: Settings):
    c = settings.clickhouse_client(database="default")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def databases(settings: Settings, request) -> tuple[str, str]:
    """A live and a rebuilt database with the platform's migrations, unique to the test."""
    suffix = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    live, rebuilt = f"live_{suffix}", f"rebuilt_{suffix}"
    for database in (live, rebuilt):
        migrate(settings, database=database, log=lambda m: None)
    return live, rebuilt


CASE_COLUMNS = ["case_id", "province_code", "current_stage", "status", "last_event_at", "version"]
AT = datetime(2017, 1, 3, 1, 0, tzinfo=UTC)


def open_case(case_id: str, stage: str) -> list:
    # Every other column keeps its default: opened_at, resolved_at, damage_vnd ... are NULL.
    return [case_id, "20", stage, "open", AT, 3]


def insert_cases(client, database: str, rows: list[list]) -> None:
    client.insert(f"{database}.cases_state", rows, column_names=CASE_COLUMNS)


EVENT_COLUMNS = ["event_id", "event_type", "case_id", "agency_id", "occurred_at", "payload"]


def insert_events(client, database: str, rows: list[list]) -> None:
    client.insert(f"{database}.events", rows, column_names=EVENT_COLUMNS)


@pytest.mark.integration
def test_a_changed_row_with_a_null_column_makes_the_tables_differ(client, databases):
    live, rebuilt = databases
    insert_cases(client, live, [open_case("C-1", "verification"), open_case("C-2", "indicted")])
    insert_cases(
        client, rebuilt, [open_case("C-1", "verification"), open_case("C-2", "investigation")]
    )
    event_id = uuid.UUID("0b6f1c2e-4a1d-4c6b-9f7e-0123456789ab")
    insert_events(client, live, [[event_id, "case_opened", "C-1", "20-INSP", AT, '{"a": 1}']])
    insert_events(client, rebuilt, [[event_id, "case_opened", "C-1", "20-INSP", AT, '{"a": 2}']])

    # The old scheme: sequence and opened_at are NULL, so neither row was hashed at all.
    for table in ("cases", "events"):
        query = COMPARED_TABLES[table][1]
        assert old_checksum(client, query.format(db=live)) == old_checksum(
            client, query.format(db=rebuilt)
        )

    before, after = table_digests(client, live), table_digests(client, rebuilt)
    assert {name for name in COMPARED_TABLES if before[name] != after[name]} == {"cases", "events"}
    assert before["cases"].rows == after["cases"].rows == 2
    assert before["transfers"] == after["transfers"] and before["transfers"].rows == 0

    differences = table_differences(client, live, rebuilt, ["cases", "events"])
    assert differences == [
        TableDifference("events", 1, (KeyDifference(str(event_id), 1, 1, ("payload",)),)),
        TableDifference("cases", 1, (KeyDifference("C-2", 1, 1, ("current_stage",)),)),
    ]
    assert (
        differences[1].describe() == "cases: 1 case_id value(s) differ\n  C-2: current_stage differ"
    )


@pytest.mark.integration
def test_a_case_only_the_rebuild_has_is_named(client, databases):
    """The live side has no row for the differing key, so its query's result is empty: as
    from ClickHouse, that empty result names no columns, and the comparison must not need them.
    """
    live, rebuilt = databases
    insert_cases(client, rebuilt, [open_case("C-9", "verification")])
    differences = table_differences(client, live, rebuilt, ["cases"])
    assert differences == [TableDifference("cases", 1, (KeyDifference("C-9", 0, 1, ()),))]


@pytest.mark.integration
def test_a_duplicated_pair_of_rows_does_not_cancel_out(client, databases):
    live, rebuilt = databases
    for database in databases:
        client.command(
            f"CREATE TABLE {database}.plain (id String, n Nullable(Int64)) "
            f"ENGINE = MergeTree ORDER BY id"
        )
    # Same count, same XOR (A^A = D^D = 0), different rows.
    client.insert(f"{live}.plain", [["A", 1], ["A", 1], ["B", 2], ["C", None]])
    client.insert(f"{rebuilt}.plain", [["B", 2], ["C", None], ["D", 4], ["D", 4]])
    live_query, rebuilt_query = f"SELECT * FROM {live}.plain", f"SELECT * FROM {rebuilt}.plain"
    assert old_checksum(client, live_query) == old_checksum(client, rebuilt_query)

    assert rows_digest(client, live_query) != rows_digest(client, rebuilt_query)
    assert rows_digest(client, live_query).rows == rows_digest(client, rebuilt_query).rows == 4
    difference = rows_difference(client, live_query, rebuilt_query, "id", table="plain")
    assert difference == TableDifference(
        "plain", 2, (KeyDifference("A", 2, 0), KeyDifference("D", 0, 2))
    )
    # A third copy of a row that is there twice: one surplus row of that key.
    tripled = f"{live_query} UNION ALL SELECT 'A' AS id, toNullable(toInt64(1)) AS n"
    assert rows_digest(client, live_query) != rows_digest(client, tripled)
    assert rows_difference(client, live_query, tripled, "id") == TableDifference(
        "", 1, (KeyDifference("A", 0, 1),)
    )


@pytest.mark.integration
def test_equal_rows_in_another_order_compare_equal(client, databases):
    live, rebuilt = databases
    rows = [open_case(f"C-{i:03d}", ["verification", "indicted"][i % 2]) for i in range(40)]
    insert_cases(client, live, rows)
    for start in (30, 10, 0, 20):  # other insert order, several parts
        insert_cases(client, rebuilt, rows[start : start + 10][::-1])
    assert table_digests(client, live) == table_digests(client, rebuilt)
    assert table_digests(client, live)["cases"].rows == 40
    assert table_differences(client, live, rebuilt) == [
        TableDifference(name, 0, ()) for name in COMPARED_TABLES
    ]


@pytest.mark.integration
def test_rebuild_compares_until_equal_and_names_what_still_differs(
    settings, client, databases, monkeypatch
):
    live, rebuilt = databases
    waits: list[str] = []
    monkeypatch.setattr(
        rebuild_module, "wait_caught_up", lambda s, *, group, timeout: waits.append(group)
    )
    settings = replace(settings, clickhouse_database=live)
    insert_cases(client, live, [open_case("C-1", "verification")])
    insert_cases(client, rebuilt, [open_case("C-1", "verification")])
    catch_ups: list[int] = []
    result = RebuildResult(rebuilt, "rebuild-group", 0.0)
    rebuild_module._compare(settings, client, result, 1, lambda: catch_ups.append(1))
    assert result.equal and result.differences == []
    # Equal at once: one comparison, after the live worker and the replay caught up.
    assert waits == [settings.worker_app_id] and len(catch_ups) == 1

    waits.clear()
    catch_ups.clear()
    insert_cases(client, live, [open_case("C-2", "indicted")])
    rebuild_module._compare(settings, client, result, 1, lambda: catch_ups.append(1))
    assert not result.equal
    assert len(waits) == len(catch_ups) == COMPARE_ATTEMPTS
    assert result.live["cases"].rows == 2 and result.rebuilt["cases"].rows == 1
    assert result.differences == [TableDifference("cases", 1, (KeyDifference("C-2", 1, 0),))]


@pytest.mark.unit
def test_differences_are_described_for_an_operator():
    examples = (
        KeyDifference("C-1", 1, 1, ("status", "resolved_at")),
        KeyDifference("C-2", 1, 0),
        KeyDifference("C-3", 0, 2),
        KeyDifference("C-4", 2, 1),
    )
    assert TableDifference("cases", 9, examples).describe().splitlines() == [
        "cases: 9 case_id value(s) differ",
        "  C-1: status, resolved_at differ",
        "  C-2: only in the live tables (1 row(s))",
        "  C-3: only in the rebuilt tables (2 row(s))",
        "  C-4: 2 live row(s) and 1 rebuilt row(s) without a twin",
        "  ... and 5 more",
    ]
    assert "moved meanwhile" in TableDifference("events", 0, ()).describe()
