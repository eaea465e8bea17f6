"""Unmodified clickhouse-connect against the endpoint: every call the project relies on."""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.summary import QuerySummary

pytestmark = pytest.mark.integration

COLUMNS = ["id", "name", "ts", "score", "tags"]
DDL = (
    "CREATE TABLE {t} (id UInt32, name String, ts DateTime, score Nullable(Float64), "
    "tags Array(String)) ENGINE = MergeTree ORDER BY id"
)


def _rows(start: int, count: int) -> list[list]:
    return [
        [
            i,
            f"name '{i}' \\ \t\n ü",
            dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i),
            None if i % 3 == 0 else i / 4,
            [f"t{i}", "x'y"],
        ]
        for i in range(start, start + count)
    ]


def test_client_connects_and_reports_server(endpoint) -> None:
    client = endpoint.client()
    assert client.server_version.count(".") >= 2
    assert client.command("SELECT 1") == 1
    assert client.command("SELECT 'a', 2") == ["a", "2"]
    assert client.command("SELECT timezone()") == "Etc/UTC"
    assert client.server_tz == dt.UTC
    assert client.ping()


def test_command_ddl_returns_summary(client, table_name) -> None:
    result = client.command(f"CREATE TABLE {table_name} (a UInt8) ENGINE = MergeTree ORDER BY a")
    assert isinstance(result, QuerySummary)
    summary = client.command(f"INSERT INTO {table_name} SELECT number FROM numbers(7)")
    assert isinstance(summary, QuerySummary)
    assert summary.written_rows == 7
    assert client.command(f"SELECT count() FROM {table_name} WHERE a > 100") == 0
    assert client.command(f"SELECT name FROM system.tables WHERE name = '{table_name}x'") == ""


@pytest.mark.parametrize("compress", [True, "lz4", "zstd", "gzip", False])
def test_round_trip_every_call_under_every_compression(endpoint, table_name, compress) -> None:
    client = endpoint.client(compress=compress)
    client.command(DDL.format(t=table_name))

    # insert(): a multi-block Native insert (many compressed frames in one chunked body).
    rows = _rows(0, 3000)
    context = client.create_insert_context(table_name, COLUMNS)
    context.req_block_size = 400
    context.data = rows
    assert context.block_row_count == 400
    summary = client.insert(context=context)
    assert summary.written_rows == 3000

    result = client.query(f"SELECT * FROM {table_name} ORDER BY id")
    assert result.column_names == tuple(COLUMNS)
    assert result.result_rows == [tuple(r) for r in rows]
    assert result.summary["read_rows"] == "3000"

    df_in = pd.DataFrame(
        {
            "id": pd.Series([5001, 5002], dtype="uint32"),
            "name": ["df-a", "df-b"],
            "ts": [pd.Timestamp("2024-02-02 10:00:00"), pd.Timestamp("2024-02-03 11:00:00")],
            "score": [1.5, None],
            "tags": [["p"], []],
        }
    )
    client.insert_df(table_name, df_in)
    df_out = client.query_df(f"SELECT * FROM {table_name} WHERE id > 5000 ORDER BY id")
    assert df_out["id"].tolist() == [5001, 5002]
    assert df_out["name"].tolist() == ["df-a", "df-b"]
    assert [t.to_pydatetime() for t in df_out["ts"]] == [
        dt.datetime(2024, 2, 2, 10),
        dt.datetime(2024, 2, 3, 11),
    ]
    assert df_out["score"].tolist()[0] == 1.5 and pd.isna(df_out["score"].tolist()[1])
    assert [list(t) for t in df_out["tags"]] == [["p"], []]

    arrow_in = pa.table(
        {
            "id": pa.array([6001], pa.uint32()),
            "name": ["arrow"],
            "ts": pa.array([dt.datetime(2024, 3, 3, 3, 3, 3)], pa.timestamp("s")),
            "score": pa.array([None], pa.float64()),
            "tags": pa.array([["a", "b"]], pa.list_(pa.string())),
        }
    )
    client.insert_arrow(table_name, arrow_in)
    arrow_out = client.query_arrow(f"SELECT id, name, tags FROM {table_name} WHERE id > 6000")
    assert arrow_out.to_pylist() == [{"id": 6001, "name": "arrow", "tags": ["a", "b"]}]

    raw = client.raw_query(
        f"SELECT id, name FROM {table_name} WHERE id IN (1, 2) ORDER BY id", fmt="CSV"
    )
    assert raw == b"1,\"name '1' \\ \t\n \xc3\xbc\"\n2,\"name '2' \\ \t\n \xc3\xbc\"\n"
    client.raw_insert(
        table_name, COLUMNS, b"7001\traw\t2024-04-04 04:04:04\t\\N\t['r']\n", fmt="TSV"
    )
    assert client.query(
        f"SELECT name, score, tags FROM {table_name} WHERE id = 7001"
    ).result_rows == [("raw", None, ["r"])]
    assert client.command(f"SELECT count() FROM {table_name}") == 3000 + 2 + 1 + 1


def test_streaming_calls(client, table_name) -> None:
    client.command(DDL.format(t=table_name))
    rows = _rows(0, 20000)
    client.insert(table_name, rows, column_names=COLUMNS)
    small_blocks = {"max_block_size": 1000}
    query = f"SELECT id, name FROM {table_name} ORDER BY id"
    expected_ids = list(range(20000))

    with client.query_rows_stream(query, settings=small_blocks) as stream:
        streamed = list(stream)
    assert [r[0] for r in streamed] == expected_ids
    assert streamed[5][1] == rows[5][1]

    with client.query_column_block_stream(query, settings=small_blocks) as stream:
        blocks = list(stream)
    assert len(blocks) > 1
    assert [i for block in blocks for i in block[0]] == expected_ids

    with client.query_df_stream(query, settings=small_blocks) as stream:
        frames = list(stream)
    assert len(frames) > 1
    assert pd.concat(frames)["id"].tolist() == expected_ids

    with client.query_arrow_stream(query, settings=small_blocks) as stream:
        batches = list(stream)
    assert len(batches) > 1
    assert pa.Table.from_batches(batches).column("id").to_pylist() == expected_ids


def test_stream_closed_early_leaves_client_usable(client) -> None:
    with client.query_rows_stream(
        "SELECT number FROM numbers(1000000)", settings={"max_block_size": 1000}
    ) as stream:
        first = [row for _, row in zip(range(5), stream, strict=False)]
    assert first == [(0,), (1,), (2,), (3,), (4,)]
    assert client.command("SELECT 42") == 42


def test_error_mid_stream_raises_with_server_message(client) -> None:
    query = "SELECT throwIf(number = 150000, 'boom at 150000') AS x FROM numbers(300000)"
    with (
        pytest.raises(DatabaseError) as excinfo,
        client.query_rows_stream(query, settings={"max_block_size": 1000}) as stream,
    ):
        for _ in stream:
            pass
    assert "boom at 150000" in str(excinfo.value)
    assert client.command("SELECT 1") == 1


def test_database_error_carries_code_and_message(client) -> None:
    with pytest.raises(DatabaseError) as excinfo:
        client.query("SELECT * FROM table_that_does_not_exist")
    assert "Code: 60" in str(excinfo.value)
    assert "UNKNOWN_TABLE" in str(excinfo.value)
    with pytest.raises(DatabaseError, match="Code: 62"):
        client.command("SELEC 1")


def test_server_side_query_parameters(client) -> None:
    tricky = "it's a \\ backslash, a \t tab, a\nnewline and \\N and {braces} 'quotes'"
    params = {
        "s": tricky,
        "arr": ["x'y", "back\\slash", ""],
        "ints": [1, -2, 3],
        "when": dt.datetime(2024, 5, 6, 7, 8, 9),
        "nothing": None,
        "num": 12345678901234,
    }
    result = client.query(
        "SELECT {s:String} AS s, {arr:Array(String)} AS arr, {ints:Array(Int32)} AS ints, "
        "{when:DateTime} AS when, {nothing:Nullable(Int32)} AS nothing, {num:UInt64} AS num",
        parameters=params,
    )
    assert result.result_rows == [
        (
            tricky,
            ["x'y", "back\\slash", ""],
            [1, -2, 3],
            dt.datetime(2024, 5, 6, 7, 8, 9),
            None,
            12345678901234,
        )
    ]
    # command() returns TabSeparated text, which escapes quotes and backslashes, as in ClickHouse.
    assert (
        client.command("SELECT {a:String} || {b:String}", parameters={"a": "x'", "b": "\\y"})
        == "x\\'\\\\y"
    )


def test_long_parameters_use_form_encoding(client) -> None:
    values = [f"value-{i}-'quoted'" for i in range(2000)]  # > 4 KiB: sent as multipart/form-data
    result = client.query(
        "SELECT length({v:Array(String)}), {v:Array(String)}[2000]", parameters={"v": values}
    )
    assert result.result_rows == [(2000, values[-1])]


def test_client_side_binding(client) -> None:
    result = client.query("SELECT %(x)s AS x, %(y)s AS y", parameters={"x": "o'k\\", "y": [1, 2]})
    assert result.result_rows == [("o'k\\", [1, 2])]


def test_per_request_settings_do_not_leak(endpoint) -> None:
    client = endpoint.client()  # has an auto-generated session id, like production
    default = client.command("SELECT getSetting('max_block_size')")
    assert client.query(
        "SELECT getSetting('max_block_size')", settings={"max_block_size": 123}
    ).result_rows == [(123,)]
    assert client.command("SELECT getSetting('max_block_size')") == default
    assert client.command("SELECT getSetting('max_threads')", settings={"max_threads": 1}) == 1
    assert client.command("SELECT getSetting('max_threads')") != 1

    sessionless = endpoint.client(autogenerate_session_id=False)
    assert sessionless.query(
        "SELECT getSetting('max_block_size')", settings={"max_block_size": 77}
    ).result_rows == [(77,)]
    assert sessionless.command("SELECT getSetting('max_block_size')") == default


def test_unknown_setting_is_rejected_like_clickhouse(client) -> None:
    with pytest.raises(DatabaseError) as excinfo:
        client.query("SELECT 1", settings={"definitely_not_a_setting": 1})
    assert "Code: 115" in str(excinfo.value)
    assert "UNKNOWN_SETTING" in str(excinfo.value)
    assert client.command("SELECT 1") == 1


def test_session_keeps_set_use_and_temporary_tables(endpoint) -> None:
    first = endpoint.client()
    other = endpoint.client()
    first.command("SET max_threads = 1")
    first.command("CREATE DATABASE IF NOT EXISTS session_db")
    first.command("USE session_db")
    first.command("CREATE TEMPORARY TABLE scratch (x UInt8)")
    first.command("INSERT INTO scratch VALUES (1), (2)")

    assert first.command("SELECT getSetting('max_threads')") == 1
    assert first.command("SELECT currentDatabase()") == "session_db"
    assert first.command("SELECT sum(x) FROM scratch") == 3
    # A per-request setting overrides the session value for that request only.
    assert first.command("SELECT getSetting('max_threads')", settings={"max_threads": 2}) == 2
    assert first.command("SELECT getSetting('max_threads')") == 1

    assert other.command("SELECT getSetting('max_threads')") != 1
    assert other.command("SELECT currentDatabase()") == "default"
    with pytest.raises(DatabaseError, match="Code: 60"):
        other.command("SELECT sum(x) FROM scratch")


def test_session_is_locked_while_in_use(endpoint) -> None:
    import clickhouse_connect

    holder = endpoint.client(session_id="shared-session")
    intruder = clickhouse_connect.get_client(
        host=endpoint.host,
        port=endpoint.port,
        username="casestream",
        password="s3cret pass",
        autogenerate_session_id=False,
    )
    # A streamed result keeps its request, and so the session, busy until the client has read
    # it all: with its first row here, the holder's request is running on the server, and 80 MB
    # of rows (far more than the sockets buffer) cannot be sent before the holder reads them.
    with holder.query_rows_stream(
        "SELECT number FROM numbers(10000000)", settings={"max_block_size": 1000}
    ) as stream:
        assert next(iter(stream)) == (0,)
        with pytest.raises(DatabaseError, match="Code: 373"):
            intruder.command("SELECT 1", settings={"session_id": "shared-session"})
    # Closing the stream reads the rest; the server frees the session before the end of it.
    assert intruder.command("SELECT 1", settings={"session_id": "shared-session"}) == 1
    assert holder.command("SELECT 2") == 2


def test_concurrent_clients_do_not_interfere(endpoint, table_name) -> None:
    setup = endpoint.client()
    setup.command(
        f"CREATE TABLE {table_name} (worker UInt8, n UInt32) ENGINE = MergeTree ORDER BY (worker, n)"
    )
    errors: list[BaseException] = []

    def work(worker_id: int) -> None:
        try:
            c = endpoint.client(compress=["lz4", "zstd", "gzip", False][worker_id % 4])
            c.command(f"SET max_block_size = {100 + worker_id}")
            for batch in range(5):
                c.insert(
                    table_name,
                    [[worker_id, batch * 100 + i] for i in range(100)],
                    column_names=["worker", "n"],
                )
                assert c.command("SELECT getSetting('max_block_size')") == 100 + worker_id
            assert c.command(f"SELECT count() FROM {table_name} WHERE worker = {worker_id}") == 500
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert setup.command(f"SELECT count(), uniqExact(worker) FROM {table_name}") == ["3000", "6"]


def test_external_data_becomes_a_temporary_table(endpoint) -> None:
    from clickhouse_connect.driver.external import ExternalData

    client = endpoint.client()
    external = ExternalData(
        file_name="ids.tsv", data=b"1\tone\n2\ttwo\n3\tthree\n", structure="id UInt32, label String"
    )
    result = client.query("SELECT label FROM ids WHERE id >= 2 ORDER BY id", external_data=external)
    assert result.result_rows == [("two",), ("three",)]
    typed = ExternalData(
        file_name="pairs.csv", data=b'1,"a"\n', fmt="CSV", types=["UInt8", "String"]
    )
    assert client.query("SELECT _1, _2 FROM pairs", external_data=typed).result_rows == [(1, "a")]
    # The temporary table does not outlive the request, even inside the client's session.
    with pytest.raises(DatabaseError, match="Code: 60"):
        client.query("SELECT * FROM ids")
    evil = ExternalData(
        file_name="x.tsv", data=b"1\n", structure="a UInt8) ENGINE = Memory; DROP TABLE y; (b UInt8"
    )
    with pytest.raises(DatabaseError, match="Code: 36"):
        client.query("SELECT * FROM x", external_data=evil)


def test_empty_results_are_described_as_clickhouse_does(client) -> None:
    """An empty result in Native is an empty body; LIMIT 0 and Arrow still carry the columns.

    ClickHouse's HTTP interface sends no block at all for an empty Native result (ClickHouse
    issue "Return empty block with column names/types over HTTP using Native Format", still
    open), so clickhouse-connect reports no columns; for ``LIMIT 0`` the client asks for
    ``FORMAT JSON`` itself to learn them, and Arrow always starts with its schema.
    """
    query = (
        "SELECT toUInt32(number) AS id, toString(number) AS name FROM numbers(10) WHERE id > 100"
    )
    result = client.query(query)
    assert result.result_rows == []
    assert result.column_names == ()
    assert client.raw_query(query, fmt="Native") == b""
    limit_0 = client.query(
        "SELECT toUInt32(number) AS id, toString(number) AS name FROM numbers(10) LIMIT 0"
    )
    assert limit_0.column_names == ("id", "name")
    assert [t.name for t in limit_0.column_types] == ["UInt32", "String"]
    assert len(client.query_df(query)) == 0
    with client.query_rows_stream(query) as stream:
        assert list(stream) == []
    assert client.query_arrow(query).schema.names == ["id", "name"]
    with client.query_arrow_stream(query) as stream:
        assert sum(batch.num_rows for batch in stream) == 0
