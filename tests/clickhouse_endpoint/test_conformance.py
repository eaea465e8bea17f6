"""Behaviour clickhouse-connect's own integration suite expects of a ClickHouse server.

Each test pins one thing ClickHouse does (cited in its docstring) that the endpoint once did
differently; ``scripts/clickhouse_connect_suite.py`` runs the whole suite.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration


def test_binary_heredoc_reaches_the_engine_byte_for_byte(client) -> None:
    """ClickHouse parses the query as bytes: a ``$x$...$x$`` literal may hold any byte.

    clickhouse-connect sends binary parameters that way ("embedded binary data" in its docs),
    e.g. a whole Parquet file read with ``format(Parquet, $p$...$p$)``.
    """
    raw = client.raw_query("SELECT hex($b$\xff\x00\xfe$b$)", fmt="TabSeparated")
    assert raw == b"C3BF00C3BE\n"  # the str is sent as UTF-8; the check below sends raw bytes
    assert (
        client.raw_query(
            "SELECT hex($b$) AS h", parameters={"$b$": b"\xff\x00\xfe"}, fmt="TabSeparated"
        )
        == b"FF00FE\n"
    )
    sink = io.BytesIO()
    pq.write_table(pa.table({"movie": ["12 Angry Men", "Alien"], "rating": [9.0, 8.5]}), sink)
    result = client.query(
        "SELECT movie, rating FROM format(Parquet, $p$) ORDER BY movie",
        parameters={"$p$": sink.getvalue()},
    )
    assert result.result_rows == [("12 Angry Men", 9.0), ("Alien", 8.5)]


def test_insert_after_a_with_clause_takes_its_inline_data_verbatim(client, table_name) -> None:
    """ClickHouse accepts ``WITH ... INSERT INTO t FORMAT f`` followed by inline data.

    The data after ``FORMAT TabSeparated`` is TSV, not SQL: a trailing ``;`` is part of the
    value, and ``{name:Type}`` parameters in the WITH clause are bound.
    """
    client.command(f"CREATE TABLE {table_name} (s String) ENGINE = MergeTree ORDER BY s")
    try:
        client.query(
            f"WITH {{SELECT:Int32}} AS value INSERT INTO {table_name} (s) "
            "FORMAT TabSeparated\nvalue_1;\n",
            parameters={"SELECT": 13},
        )
        client.command(f"WITH 1 AS y INSERT INTO {table_name} (s) FORMAT TabSeparated\nvalue_2;\n")
        client.command(f"INSERT INTO {table_name} (s) FORMAT TabSeparated\nvalue_3;\n")
        rows = client.query(f"SELECT s FROM {table_name} ORDER BY s").result_rows
        assert rows == [("value_1;",), ("value_2;",), ("value_3;",)]
    finally:
        client.command(f"DROP TABLE IF EXISTS {table_name}")


def test_kill_query_test_lists_in_the_requested_format(client) -> None:
    """``KILL QUERY WHERE query_id = 'x' TEST`` only lists matches (ClickHouse docs, KILL).

    Clients append ``FORMAT Native`` to it; with nothing matched the Native body is empty, in
    TabSeparated it is no line at all.
    """
    statement = "KILL QUERY WHERE query_id = 'no_such_query_id' TEST"
    with client.query_rows_stream(statement + "; -- trailing") as stream:
        assert list(stream) == []
    assert client.raw_query(statement + " FORMAT Native") == b""
    assert client.raw_query(statement, fmt="TabSeparated") == b""
    assert client.raw_query(statement + " FORMAT JSONEachRow") == b""
