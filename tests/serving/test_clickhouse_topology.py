"""The migrations rendered for each ClickHouse deployment: one server, Cloud, a replicated and a
sharded cluster. Every rendered statement is parsed by ClickHouse's own parser (chDB,
``EXPLAIN AST``: parse only, nothing runs), so a rendering that a real server would refuse as
syntax fails here."""

from __future__ import annotations

import re

import chdb
import pytest

from services.clickhouse_topology import REPLICA_NAME, REPLICA_PATH, Topology, TopologyError
from services.serving.migrations import MIGRATIONS_TABLE, available, rendered
from services.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

DB = "casestream"
STATEMENTS = [MIGRATIONS_TABLE] + [s for m in available() for s in m.statements()]
TABLES = [
    re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s)[1]
    for s in STATEMENTS
    if s.startswith("CREATE TABLE")
]


def _settings(monkeypatch, **env: str) -> Settings:
    for key in ("CASESTREAM_CLICKHOUSE_CLUSTER", "CASESTREAM_CLICKHOUSE_DEPLOYMENT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(f"CASESTREAM_CLICKHOUSE_{key.upper()}", value)
    return Settings.from_env()


def _parses(statement: str) -> None:
    try:
        chdb.query(f"EXPLAIN AST {statement}", "TSV")
    except Exception as exc:  # noqa: BLE001 - the parser's message is the assertion
        pytest.fail(f"ClickHouse cannot parse:\n{statement}\n{exc}")


@pytest.mark.parametrize("kind", ["single", "cloud"])
def test_one_server_and_cloud_run_the_migrations_as_written(kind):
    topology = Topology(kind)
    for statement in STATEMENTS:
        assert topology.render(statement, DB) == [statement.strip()]
    assert topology.client_settings() == {}


def test_replicated_runs_every_ddl_on_the_cluster_with_replicated_engines():
    topology = Topology("replicated", "national")
    out = [placed for s in STATEMENTS for placed in topology.render(s, DB)]
    assert len(out) == len(STATEMENTS)  # one statement each: nothing split, nothing dropped
    for statement in out:
        _parses(statement)
        if statement.startswith("INSERT"):  # data: written once, replicated by the engine
            continue
        assert " ON CLUSTER national " in statement, statement
        engine = re.search(r"ENGINE = (\w+)\(([^()]*)\)", statement)
        if statement.startswith("CREATE TABLE"):
            assert engine and engine[1].startswith("Replicated"), statement
            assert engine[2].startswith(f"'{REPLICA_PATH}', '{REPLICA_NAME}'"), statement
        assert "Distributed" not in statement
    # the version column of the Replacing engines survives, after the two replica arguments
    cases = next(s for s in out if s.startswith("CREATE TABLE IF NOT EXISTS cases_state"))
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/{shard}', " in cases
    assert cases.split("ENGINE = ")[1].startswith(
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/{shard}', '{replica}', version)"
    )
    # TTL and ORDER BY clauses are kept as written
    activity = next(s for s in out if "agency_activity ON CLUSTER" in s and "CREATE TABLE" in s)
    assert "TTL toDateTime(ingested_at) + INTERVAL 90 DAY" in activity
    assert topology.client_settings() == {"insert_quorum": "auto"}  # acked by a majority


def test_the_keeper_path_is_by_uuid_so_a_rebuild_exchange_never_collides():
    """A path built from {database}/{table} would follow the name, not the table: after
    EXCHANGE TABLES the next rebuild database would reuse a live table's path."""
    topology = Topology("replicated", "national")
    for statement in STATEMENTS:
        for placed in topology.render(statement, DB):
            assert "{database}" not in placed and "{table}" not in placed
    assert topology.render("EXCHANGE TABLES casestream.events AND rb.events", DB) == [
        "EXCHANGE TABLES casestream.events AND rb.events ON CLUSTER national"
    ]


def test_sharded_puts_local_tables_behind_distributed_ones_keyed_by_the_order_key():
    topology = Topology("sharded", "national")
    out = [placed for s in STATEMENTS for placed in topology.render(s, DB)]
    for statement in out:
        _parses(statement)
        if statement.startswith("INSERT"):  # through the Distributed fronts, placed by key
            continue
        assert " ON CLUSTER national " in statement, statement
    for table in TABLES:
        local = next(s for s in out if s.startswith(f"CREATE TABLE IF NOT EXISTS {table}_local "))
        front = next(s for s in out if s.startswith(f"CREATE TABLE IF NOT EXISTS {table} ON"))
        assert "ENGINE = Replicated" in local
        order = re.search(r"ORDER BY \(?([^)\n]+)\)?", local)[1].strip()
        assert front.endswith(
            f"AS {table}_local ENGINE = Distributed(national, '{DB}', {table}_local, "
            f"cityHash64({order}))"
        ), front
    # every version of one event, case or transfer is on one shard: FINAL is right per shard
    events = next(s for s in out if s.startswith("CREATE TABLE IF NOT EXISTS events ON"))
    assert events.endswith("cityHash64(event_id))")
    # a column added later reaches both
    alter = [s for s in out if s.startswith("ALTER TABLE") and "MODIFY QUERY" not in s]
    heads = [a.split(" ON CLUSTER")[0] for a in alter]
    assert alter and heads == [
        f"ALTER TABLE {name}{suffix}"
        for local in heads[::2]
        for name in [local.removeprefix("ALTER TABLE ").removesuffix("_local")]
        for suffix in ("_local", "")
    ]
    assert {"ALTER TABLE events", "ALTER TABLE events_by_type"} == set(heads[1::2])
    assert [a.split(" ON CLUSTER")[1] for a in alter[::2]] == [
        a.split(" ON CLUSTER")[1] for a in alter[1::2]
    ]
    # views read the Distributed names, so analysts' queries fan out unchanged
    view = next(s for s in out if s.startswith("CREATE VIEW IF NOT EXISTS cases "))
    assert "FROM cases_state FINAL" in view
    # a rebuild swaps the data (local tables), not the Distributed fronts
    assert topology.render("EXCHANGE TABLES casestream.events AND rb.events", DB) == [
        "EXCHANGE TABLES casestream.events_local AND rb.events_local ON CLUSTER national"
    ]
    # the rollups' NOT IN (SELECT … FROM violating_events) over Distributed tables
    assert topology.client_settings() == {
        "insert_quorum": "auto",
        "distributed_product_mode": "global",
    }


@pytest.mark.parametrize("kind", ["replicated", "sharded"])
def test_the_rollups_copy_of_events_is_fed_on_every_server_through_the_names_written(kind):
    """The view fires where the worker's insert lands and writes through the target's name (on
    a sharded cluster the Distributed front, which places each row by the copy's own key, as
    the migration's backfill does)."""
    out = [p for s in STATEMENTS for p in Topology(kind, "national").render(s, DB)]
    feed = next(s for s in out if s.startswith("CREATE MATERIALIZED VIEW"))
    assert feed.startswith(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS events_by_type_feed ON CLUSTER national "
        "TO events_by_type AS"
    )
    assert feed.rstrip().endswith("FROM events")
    backfill = next(s for s in out if s.startswith("INSERT INTO events_by_type"))
    assert backfill.rstrip().endswith("FROM events")
    if kind == "sharded":
        front = next(s for s in out if s.startswith("CREATE TABLE IF NOT EXISTS events_by_type ON"))
        assert front.endswith("cityHash64(event_type, case_id, event_id))")


def test_statements_it_does_not_know_are_refused_by_name():
    with pytest.raises(TopologyError, match="cannot place"):
        Topology("replicated", "national").render("OPTIMIZE TABLE events FINAL", DB)
    assert Topology("replicated", "national").render("SELECT 1", DB) == ["SELECT 1"]


def test_settings_choose_the_topology_and_name_a_bad_value(monkeypatch):
    assert _settings(monkeypatch).clickhouse_topology == Topology("single")
    assert _settings(monkeypatch, cluster="national").clickhouse_topology == Topology(
        "replicated", "national"
    )
    assert _settings(monkeypatch, deployment="cloud").clickhouse_topology.kind == "cloud"
    with pytest.raises(SettingsError, match="CASESTREAM_CLICKHOUSE_CLUSTER"):
        _settings(monkeypatch, deployment="sharded")
    with pytest.raises(SettingsError, match="CASESTREAM_CLICKHOUSE_DEPLOYMENT='galaxy'"):
        _settings(monkeypatch, deployment="galaxy")
    with pytest.raises(SettingsError, match="not a plain identifier"):
        _settings(monkeypatch, cluster="nat ional; DROP")


def test_migrate_print_shows_what_a_cluster_would_run(monkeypatch):
    settings = _settings(monkeypatch, cluster="national")
    statements = rendered(settings)
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS casestream ON CLUSTER national"
    assert all("ON CLUSTER national" in s for s in statements if not s.startswith("INSERT"))
    assert rendered(_settings(monkeypatch))[0] == "CREATE DATABASE IF NOT EXISTS casestream"


@pytest.mark.parametrize("kind", ["replicated", "sharded"])
def test_a_views_query_is_changed_once_by_its_name(kind):
    """`ALTER TABLE … MODIFY QUERY` of a materialized view: ON CLUSTER, never on a `_local`
    table (a view has none, even sharded), and never a DROP and CREATE (a moment without the
    view would lose the rollups' copy of the rows inserted then)."""
    out = [p for s in STATEMENTS for p in Topology(kind, "national").render(s, DB)]
    modify = [s for s in out if "MODIFY QUERY" in s]
    assert modify and all(
        s.startswith("ALTER TABLE events_by_type_feed ON CLUSTER national MODIFY QUERY")
        for s in modify
    )
    assert not [s for s in out if s.startswith("DROP") and "events_by_type_feed" in s]
