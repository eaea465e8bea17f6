"""The sink's JSON rows store exactly what clickhouse-connect's own (Native) insert stored.

Every table the worker writes, with the rows the pure derivation gives for a generated history
with forged events, duplicates, disorder and the province merger: inserted once through
clickhouse-connect's `insert` (what the sink did before) and once as the sink's
`JSONCompactEachRow` body into a twin table, both in ClickHouse (chDB in this process, the real
engine: nothing of ClickHouse is faked). The twins must hold the same rows, value for value.
"""

from __future__ import annotations

import datetime as dt
import uuid

import clickhouse_connect
import pytest

from services.agency.generator import GeneratorOptions, generate
from services.contracts.events import parse_event
from services.processor.batch import apply_batch
from services.processor.facts import Fact
from services.serving.migrations import available
from services.serving.sink import ROW_FORMAT, TABLES, encode_rows

pytestmark = pytest.mark.unit

DATABASE = "sink_rows"


def _rows() -> dict[str, list[list]]:
    options = GeneratorOptions(
        seed=5,
        events=3000,
        provinces=("00", "20", "33", "79"),
        duplicates=0.03,
        out_of_order=0.1,
        violations=0.1,
        sorted=False,
    )
    facts = [Fact.from_event(parse_event(e)) for e in generate(options)]
    state: dict[str, bytes] = {}
    rows: dict[str, list[list]] = {table: [] for table in TABLES}
    for start in range(0, len(facts), 500):
        result = apply_batch(facts[start : start + 500], state.get)
        state.update(result.changed)
        for table, batch_rows in result.rows.rows.items():
            rows[table].extend(batch_rows)
    return rows


@pytest.fixture(scope="module")
def client():
    client = clickhouse_connect.get_client(interface="chdb")
    client.command(f"DROP DATABASE IF EXISTS {DATABASE}")
    client.command(f"CREATE DATABASE {DATABASE}")
    client.database = DATABASE
    for migration in available():
        for statement in migration.statements():
            client.command(statement)
    yield client
    client.command(f"DROP DATABASE IF EXISTS {DATABASE}")


def test_every_table_stores_the_same_rows_as_the_native_insert(client):
    rows = _rows()
    assert all(rows[t] for t in TABLES if t != "integrity_violations_state"), "rows of each table"
    assert rows["integrity_violations_state"], "the history has forged events"
    for table, columns in TABLES.items():
        client.command(f"CREATE TABLE {table}_native AS {table}")
        client.insert(f"{table}_native", rows[table], column_names=columns)
        client.raw_insert(
            table, column_names=columns, insert_block=encode_rows(rows[table]), fmt=ROW_FORMAT
        )
        select = f"SELECT {', '.join(columns)} FROM {{t}} ORDER BY tuple(*)"
        native = client.query(select.format(t=f"{table}_native")).result_rows
        sent = client.query(select.format(t=table)).result_rows
        assert sent, table  # (a Replacing table collapses a block's duplicates on insert)
        assert sent == native, table


def test_the_values_json_cannot_mistake_keep_their_exact_form(client):
    """The edges of each type the row builders produce: 64-bit limits, NULLs, a float's last
    digit, a millisecond at either end of a second, text needing escapes."""
    client.command(
        "CREATE TABLE edges (id UUID, at DateTime64(3, 'UTC'), maybe Nullable(DateTime64(3, "
        "'UTC')), big Int64, huge UInt64, lag Nullable(Float64), text String) "
        "ENGINE = MergeTree ORDER BY id"
    )
    utc = dt.UTC
    rows = [
        [
            str(uuid.UUID(int=1)),
            dt.datetime.fromtimestamp(1_700_000_000_999 / 1000, tz=utc),
            None,
            -(2**63),
            2**64 - 1,
            0.1 + 0.2,
            'quỹ "đất"\n\\\t',
        ],
        [
            str(uuid.UUID(int=2)),
            dt.datetime.fromtimestamp(0.001, tz=utc),
            dt.datetime.fromtimestamp(1_700_000_000_001 / 1000, tz=utc),
            2**63 - 1,
            0,
            None,
            "",
        ],
    ]
    client.raw_insert(
        "edges",
        column_names=["id", "at", "maybe", "big", "huge", "lag", "text"],
        insert_block=encode_rows(rows),
        fmt=ROW_FORMAT,
    )
    got = client.query(
        "SELECT toString(id), toUnixTimestamp64Milli(at), toUnixTimestamp64Milli(maybe), big, "
        "huge, lag, text FROM edges ORDER BY id"
    ).result_rows
    assert got == [
        (rows[0][0], 1_700_000_000_999, None, -(2**63), 2**64 - 1, 0.1 + 0.2, rows[0][6]),
        (rows[1][0], 1, 1_700_000_000_001, 2**63 - 1, 0, None, ""),
    ]


def test_the_sinks_clients_open_no_session():
    """Sessions cost the endpoint its per-request bookkeeping; the sink keeps no session state."""
    from services.serving.sink import sink_clients

    asked: list[dict] = []

    class _Settings:
        def clickhouse_client(self, **kwargs):
            asked.append(kwargs)
            return "client"

    assert sink_clients(_Settings(), "rebuild_db")() == "client"
    assert sink_clients(_Settings())() == "client"
    assert asked == [
        {"database": "rebuild_db", "autogenerate_session_id": False},
        {"database": None, "autogenerate_session_id": False},
    ]


def test_a_connected_sink_writes_with_the_client_it_created_in_advance():
    """`connect` creates the client the first write then uses: one client, created once."""
    from services.serving.sink import ClickHouseSink, RowBatch

    made: list[object] = []

    class _Client:
        def __init__(self) -> None:
            self.inserts: list[str] = []
            made.append(self)

        def raw_insert(self, table, **_kwargs):
            self.inserts.append(table)

    sink = ClickHouseSink(_Client)
    assert sink.connect() is True
    batch = RowBatch()
    batch.add("cases_rehomed", ["C-1"])
    sink.write(batch)
    assert len(made) == 1 and made[0].inserts == ["cases_rehomed"]


def test_a_sink_that_cannot_connect_in_advance_still_writes_later(caplog):
    """ClickHouse down at start: `connect` says so and the first write creates the client."""
    from services.serving.sink import ClickHouseSink, RowBatch

    attempts: list[int] = []

    class _Client:
        def __init__(self) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionRefusedError("nothing listens on 127.0.0.1:8123")

        def raw_insert(self, table, **_kwargs):
            pass

    sink = ClickHouseSink(_Client)
    assert sink.connect() is False
    assert "not connected in advance" in caplog.text and "127.0.0.1:8123" in caplog.text
    batch = RowBatch()
    batch.add("cases_rehomed", ["C-1"])
    sink.write(batch)
    assert len(attempts) == 2 and sink.rows_written == 1 and sink.failures == 0
