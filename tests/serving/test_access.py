"""An analyst's scope as SQL: the filtered views and ClickHouse's own access statements."""

from __future__ import annotations

import re

import chdb
import pytest

from services.serving import access

pytestmark = pytest.mark.unit


def _parses(statement: str) -> None:
    try:
        chdb.query(f"EXPLAIN AST {statement}", "TSV")
    except Exception as exc:  # noqa: BLE001 - the parser's message is the assertion
        pytest.fail(f"ClickHouse cannot parse:\n{statement}\n{exc}")


def test_a_merged_province_covers_the_codes_merged_into_it():
    # Ho Chi Minh City (79) took in Binh Duong (74) and Ba Ria - Vung Tau (77) in 2025
    assert access.province_scope("79").codes == ("74", "77", "79")
    assert access.province_scope("01").codes == ("01",)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("74", "merged into 79; give today's code"),
        ("00", "central agencies belong to no province; use --national"),
        ("99", "unknown province code (today's: 01, "),
        ("7", "a province code is two digits"),
        ("'; DROP", "a province code is two digits"),
    ],
)
def test_a_province_that_cannot_be_scoped_is_refused_by_value(code, message):
    with pytest.raises(access.ScopeError, match=re.escape(message)):
        access.province_scope(code)


@pytest.mark.parametrize("name", ["", "1abc", "a b", "x'y", "a-b", "a" * 64, "hà_nội"])
def test_analyst_names_are_plain_identifiers(name):
    with pytest.raises(access.ScopeError, match="analyst name"):
        access.check_name(name)


def test_the_scope_database_holds_one_filtered_view_per_analyst_object():
    scope = access.province_scope("79")
    statements = access.scope_views(scope, "casestream")
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS casestream_p79"
    views = {
        re.match(r"CREATE OR REPLACE VIEW casestream_p79\.(\w+) AS", s)[1]: s
        for s in statements[1:]
    }
    assert set(views) == set(access.row_filters(scope))
    assert "rollup_national" not in views  # the national figures are not a province's
    assert views["cases"].endswith(
        "FROM casestream.cases WHERE province_code IN ('74', '77', '79')"
    )
    assert "from_province_code IN ('74', '77', '79') OR to_province_code IN" in views["transfers"]
    assert (
        "(geography = 'current' AND province_code = '79') OR "
        "(geography = 'historical' AND province_code IN ('74', '77', '79'))"
    ) in views["rollup_province"]
    for statement in statements:
        _parses(statement)
    assert access.scope_views(access.national(), "casestream") == []
    assert access.national().database("casestream") == "casestream"


def test_clickhouse_statements_give_a_province_role_row_policies_on_every_scoped_table():
    scope = access.province_scope("01")
    digest = "ab" * 32
    statements = access.clickhouse_statements(
        "hanoi", scope, "casestream", digest, "casestream", on_cluster="national"
    )
    for statement in statements:
        _parses(statement)
    text = "\n".join(statements)
    for table in access.POLICY_TABLES:
        assert (
            f"CREATE ROW POLICY OR REPLACE casestream_province_01 ON CLUSTER national "
            f"ON casestream.{table} USING "
        ) in text
        # the platform and national analysts keep every row once a table has policies
        assert (
            f"CREATE ROW POLICY OR REPLACE casestream_all_provinces ON CLUSTER national "
            f"ON casestream.{table} USING 1 AS PERMISSIVE TO casestream_all_provinces"
        ) in text
    assert "GRANT ON CLUSTER national casestream_all_provinces TO casestream" in text
    assert "rollup_national" not in text.split("casestream_province_01", 1)[1]
    assert (
        f"CREATE USER IF NOT EXISTS hanoi ON CLUSTER national IDENTIFIED WITH sha256_hash BY "
        f"'{digest}' DEFAULT DATABASE casestream"
    ) in text
    assert statements[-2:] == [
        "GRANT ON CLUSTER national casestream_province_01 TO hanoi",
        "ALTER USER hanoi ON CLUSTER national DEFAULT ROLE casestream_province_01",
    ]
    assert "MODIFY SQL SECURITY INVOKER" in text  # views read with the reader's policies


def test_a_national_analyst_gets_the_all_provinces_role_and_no_filter():
    statements = access.clickhouse_statements(
        "ministry", access.national(), "casestream", "cd" * 32, "casestream"
    )
    assert not any("casestream_province_" in s for s in statements)
    assert statements[-2] == "GRANT casestream_all_provinces TO ministry"
    for statement in statements:
        _parses(statement)
