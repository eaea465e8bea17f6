"""Statement analysis: the lexer decisions that routing and read-only checks depend on."""

from __future__ import annotations

import pytest

from services.clickhouse_endpoint import sql

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        ("SELECT 1; ; -- trailing comment\n", ["SELECT 1"]),
        ("SELECT 1; DROP TABLE t", ["SELECT 1", "DROP TABLE t"]),
        ("SELECT ';' AS x", ["SELECT ';' AS x"]),
        ("SELECT 1 /* ; DROP TABLE t */", ["SELECT 1 /* ; DROP TABLE t */"]),
        ("SELECT `a;b` FROM t", ["SELECT `a;b` FROM t"]),
        ("SELECT $$;$$", ["SELECT $$;$$"]),
        ("SELECT 'it\\'s;' -- ;\n; SELECT 2", ["SELECT 'it\\'s;' -- ;", "SELECT 2"]),
        ("/* only a comment */ ;", []),
    ],
)
def test_split_statements_ignores_semicolons_in_literals_and_comments(
    text: str, expected: list[str]
) -> None:
    assert sql.split_statements(text) == expected


def test_nested_block_comments_are_one_comment() -> None:
    assert sql.split_statements("/* a /* b */ ; c */ SELECT 1") == ["/* a /* b */ ; c */ SELECT 1"]
    assert sql.strip_comments("/* a /* b */ c */ SELECT 1 -- x") == "SELECT 1"


@pytest.mark.parametrize(
    ("text", "kind", "returns_rows", "is_read"),
    [
        ("  select 1", "SELECT", True, True),
        ("/* DROP */ SELECT 1", "SELECT", True, True),
        ("-- SELECT\nDROP TABLE t", "DROP", False, False),
        ("WITH 1 AS x SELECT x", "WITH", True, True),
        ("(SELECT 1)", "(", True, True),
        ("SHOW TABLES", "SHOW", True, True),
        ("DESC t", "DESC", True, True),
        ("EXISTS TABLE t", "EXISTS", True, True),
        ("EXPLAIN SELECT 1", "EXPLAIN", True, True),
        ("INSERT INTO t VALUES (1)", "INSERT", False, False),
        ("SET max_threads = 1", "SET", False, False),
        ("system shutdown", "SYSTEM", False, False),
    ],
)
def test_statement_kind(text: str, kind: str, returns_rows: bool, is_read: bool) -> None:
    statement = sql.parse_statement(text)
    assert statement.kind == kind
    assert statement.returns_rows is returns_rows
    assert statement.is_read is is_read


@pytest.mark.parametrize(
    ("text", "kills"),
    [
        ("SYSTEM SHUTDOWN", True),
        ("system  kill", True),
        ("/* x */ SYSTEM /* y */ SHUTDOWN;", True),
        ("SYSTEM FLUSH LOGS", False),
        ("SELECT 'SYSTEM SHUTDOWN'", False),
    ],
)
def test_host_killing_statements(text: str, kills: bool) -> None:
    assert sql.parse_statement(text).kills_host is kills


def test_parse_statement_drops_trailing_semicolons() -> None:
    assert sql.parse_statement("SELECT 1 ; ;").text == "SELECT 1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1", None),
        ("SELECT 1 FORMAT JSON", "JSON"),
        ("SELECT 1 FORMAT JSONEachRow;", "JSONEachRow"),
        ("SELECT 1 FORMAT CSV SETTINGS max_threads = 1", "CSV"),
        ("SELECT 1\n FORMAT Native", "Native"),
        ("SELECT format FROM t", None),
        ("SELECT * FROM (SELECT 1 FORMAT JSON)", None),
        ("SELECT 'FORMAT JSON'", None),
        ("SELECT 1 -- FORMAT JSON", None),
    ],
)
def test_output_format(text: str, expected: str | None) -> None:
    assert sql.output_format(text) == expected


def _split(text: str, eof: bool = True):
    return sql.split_insert(text, eof)


def test_split_insert_format_data_starts_after_one_newline() -> None:
    text = "INSERT INTO t (a, b) FORMAT TSV\n1\tx\n"
    split = _split(text)
    assert isinstance(split, sql.InsertSplit)
    assert split.statement == "INSERT INTO t (a, b)"
    assert split.input_format == "TSV"
    assert text[split.data_offset :] == "1\tx\n"


def test_split_insert_keeps_binary_data_that_starts_with_a_newline() -> None:
    text = "INSERT INTO t FORMAT Native\n\n\x01rest"
    split = _split(text)
    assert isinstance(split, sql.InsertSplit)
    assert text[split.data_offset :] == "\n\x01rest"


def test_split_insert_values() -> None:
    text = "insert into db.t values (1, 'a;b'), (2, 'c')"
    split = _split(text)
    assert isinstance(split, sql.InsertSplit)
    assert split.statement == "insert into db.t"
    assert split.input_format == "Values"
    assert text[split.data_offset :] == " (1, 'a;b'), (2, 'c')"


def test_split_insert_with_settings_and_odd_names() -> None:
    split = _split(
        "INSERT INTO format (values, format) SETTINGS async_insert = 0 FORMAT CSV\r\n1,2"
    )
    assert isinstance(split, sql.InsertSplit)
    assert split.statement == "INSERT INTO format (values, format) SETTINGS async_insert = 0"
    assert split.input_format == "CSV"


def test_split_insert_select_and_non_inserts_have_no_inline_data() -> None:
    assert _split("INSERT INTO t SELECT * FROM u") is None
    assert _split("INSERT INTO t (a) WITH 1 AS x SELECT x") is None
    assert _split("SELECT 1") is None
    assert _split("/* INSERT */ SELECT 'INSERT INTO t FORMAT TSV'") is None


@pytest.mark.parametrize(
    "partial",
    [
        "",
        "INS",
        "INSERT INTO t",
        "INSERT INTO t FORMAT",
        "INSERT INTO t FORMAT Nat",
        "INSERT INTO t FORMAT Native  ",
        "INSERT INTO t FORMAT Native\r",
        "INSERT INTO t /* comment not closed",
        "INSERT INTO t (a) VALUE",
    ],
)
def test_split_insert_asks_for_more_until_the_data_start_is_certain(partial: str) -> None:
    assert sql.split_insert(partial, eof=False) is sql.NEED_MORE


def test_split_insert_at_eof_without_data() -> None:
    split = _split("INSERT INTO t FORMAT Native")
    assert isinstance(split, sql.InsertSplit)
    assert split.data_offset == len("INSERT INTO t FORMAT Native")


def test_parse_set() -> None:
    assignments = sql.parse_set("SET max_threads = 1, date_time_output_format = 'iso', x = [1, 2]")
    assert assignments is not None
    assert [(a.name, a.value_sql) for a in assignments] == [
        ("max_threads", "1"),
        ("date_time_output_format", "'iso'"),
        ("x", "[1, 2]"),
    ]
    assert sql.parse_set("SET ROLE admin") is None
    assert sql.parse_set("SELECT 1") is None


def test_parse_use() -> None:
    assert sql.parse_use("USE analytics") == "analytics"
    assert sql.parse_use("use `my db`;") == "my db"
    assert sql.parse_use("USE DATABASE x") == "x"
    assert sql.parse_use("USE a b") is None


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "tab\tnew\nline", "\\'"])
def test_quote_string_round_trips_through_the_lexer(value: str) -> None:
    literal = sql.quote_string(value)
    tokens = sql.significant_tokens(f"SELECT {literal}")
    assert [t.kind for t in tokens] == [sql.Kind.WORD, sql.Kind.STRING]
    assert tokens[1].text == literal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1\n FORMAT Native", "SELECT 1"),
        ("SELECT 1 SETTINGS a = 1 FORMAT Native;", "SELECT 1 SETTINGS a = 1"),
        ("SELECT format FROM t", "SELECT format FROM t"),
    ],
)
def test_without_format_clause(text: str, expected: str) -> None:
    assert sql.without_format_clause(text) == expected


def test_split_top_level_and_balance() -> None:
    assert sql.split_top_level("UInt8, Tuple(a UInt8, b String), Decimal(10, 2)", ",") == [
        "UInt8",
        "Tuple(a UInt8, b String)",
        "Decimal(10, 2)",
    ]
    assert sql.is_balanced("a UInt8, b Array(String) DEFAULT ['x)']")
    assert not sql.is_balanced("a UInt8) ENGINE = Memory; DROP TABLE t; (b UInt8")
    assert not sql.is_balanced("a UInt8; DROP TABLE t")
    assert not sql.is_balanced("a String DEFAULT 'unterminated")


def test_split_insert_after_a_with_clause() -> None:
    """ClickHouse parses ``WITH ... INSERT INTO t FORMAT f`` with the data after the format."""
    text = "WITH {SELECT:Int32} AS value INSERT INTO t (s) FORMAT TabSeparated\nvalue_1;\n"
    split = _split(text)
    assert isinstance(split, sql.InsertSplit)
    assert split.statement == "WITH {SELECT:Int32} AS value INSERT INTO t (s)"
    assert split.input_format == "TabSeparated"
    assert text[split.data_offset :] == "value_1;\n"
    values = _split("WITH t AS (SELECT 1) INSERT INTO x VALUES (1)")
    assert isinstance(values, sql.InsertSplit) and values.input_format == "Values"
    # A top-level SELECT after WITH is a query, whatever words the WITH clause holds.
    assert _split("WITH {INSERT:Int32} AS value SELECT value") is None
    assert _split("WITH (SELECT 1) AS y SELECT y") is None
    assert _split("WITH 1 AS y", eof=False) is sql.NEED_MORE
