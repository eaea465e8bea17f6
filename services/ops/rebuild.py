"""`casestream rebuild`: replay every topic from the beginning into fresh tables, then switch.

Kafka is the source of truth, so the fact tables are a cache that can always be rebuilt:

1. a new database `<db>_rebuild_<stamp>` gets the same migrations;
2. the replay (`services.ops.replay`) reads every agency topic from its first offset, validates
   each message as the intake does, spills the facts by case to disk and derives each case once
   with the live worker's pure code into it. No worker, consumer group commit or topic of its
   own: the live tables keep serving analysts and the live worker keeps processing meanwhile;
3. both sets of tables are compared once the live worker is caught up and the replay has read
   what arrived meanwhile (`Replay.catch_up`): row counts and a digest of each table's rows
   (`TableDigest`); when they differ, the differing keys are named;
4. the switch exchanges each rebuilt table with its live twin (`EXCHANGE TABLES`, atomic per
   table); from then on the live worker writes into the rebuilt tables. The old tables stay in
   the rebuild database, for comparison or rollback, until dropped.

Rows are a deterministic function of the set of events (processor/case_state.py), which is why
the two sets of tables can be compared row for row and exchanged without a visible jump.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from services.ops.consumer_lag import wait_caught_up
from services.ops.replay import Replay, ReplayStats
from services.serving.migrations import migrate
from services.settings import Settings

# Written by the worker; everything else (rollups, ops tables) is derived from these.
# `events_by_type` is fed from `events` by a materialized view (migration 0010) and is exchanged
# right after it: each database's view feeds the table of its own name (views follow names).
FACT_TABLES = [
    "events",
    "events_by_type",
    "cases_state",
    "transfers_state",
    "appraisals_state",
    "integrity_violations_state",
    "cases_rehomed",
]

# What analysts see, latest state only, by natural key; wall-clock columns are left out of the
# comparison, and so is the home province written with each event (migration 0011): which value
# a row holds depends on whether its case's opening had arrived, and a rebuild, which derives
# each case once, writes the final one (the rollups read the same figures either way).
COMPARED_TABLES: dict[str, tuple[str, str]] = {
    "events": (
        "event_id",
        "SELECT * EXCEPT (ingested_at, home_province_code) FROM {db}.events FINAL",
    ),
    "cases": ("case_id", "SELECT * FROM {db}.cases"),
    "transfers": ("transfer_id", "SELECT * FROM {db}.transfers"),
    "appraisals": ("appraisal_id", "SELECT * FROM {db}.appraisals"),
    "integrity_violations": (
        "event_id",
        "SELECT * EXCEPT first_seen FROM {db}.integrity_violations",
    ),
}

# A row's hash: `tuple(*)` hashes NULL as a value. (`cityHash64(*)` is NULL as soon as one column
# is, and aggregates skip NULLs: a row with any NULL column, e.g. every open case, was invisible.)
_ROW_HASH = "cityHash64(tuple(*))"

#: How many differing keys a comparison names per table.
EXAMPLE_KEYS = 5

#: Comparisons before the rebuild gives up on live traffic settling (see `_compare`).
COMPARE_ATTEMPTS = 5


class TableDigest(NamedTuple):
    """Row count and a digest of the rows that is independent of their order.

    The digest hashes the *sorted array* of the row hashes, i.e. the multiset of rows: unlike an
    XOR of row hashes (where two equal rows cancel out), any row added, lost, changed or
    duplicated changes it. It holds one 8-byte hash per row in memory while it sorts them
    (80 MB for 10 M events).
    """

    rows: int
    digest: int


def rows_digest(client, query: str) -> TableDigest:
    """The `TableDigest` of the rows a query returns."""
    rows, digest = client.query(
        f"SELECT count(), cityHash64(arraySort(groupArray({_ROW_HASH}))) FROM ({query})"
    ).result_rows[0]
    return TableDigest(int(rows), int(digest))


def table_digests(client, database: str) -> dict[str, TableDigest]:
    """`TableDigest` per analyst-facing table of a database."""
    return {
        name: rows_digest(client, query.format(db=database))
        for name, (_key, query) in COMPARED_TABLES.items()
    }


@dataclass(frozen=True)
class KeyDifference:
    """One natural key whose rows differ: the rows of each side that the other side lacks."""

    key: str
    live_rows: int
    rebuilt_rows: int
    columns: tuple[str, ...] = ()  # one row each side: the columns whose values differ

    def describe(self) -> str:
        if self.live_rows == 1 and self.rebuilt_rows == 1 and self.columns:
            return f"{self.key}: {', '.join(self.columns)} differ"
        if not self.rebuilt_rows:
            return f"{self.key}: only in the live tables ({self.live_rows} row(s))"
        if not self.live_rows:
            return f"{self.key}: only in the rebuilt tables ({self.rebuilt_rows} row(s))"
        return (
            f"{self.key}: {self.live_rows} live row(s) and {self.rebuilt_rows} rebuilt row(s) "
            f"without a twin"
        )


@dataclass(frozen=True)
class TableDifference:
    """How one table differs: the number of differing keys and the first few of them."""

    table: str
    keys: int
    examples: tuple[KeyDifference, ...]

    def describe(self) -> str:
        if not self.keys:
            return f"{self.table}: no differing key any more (the live tables moved meanwhile)"
        lines = [f"{self.table}: {self.keys:,} {COMPARED_TABLES[self.table][0]} value(s) differ"]
        lines += [f"  {example.describe()}" for example in self.examples]
        if self.keys > len(self.examples):
            lines.append(f"  ... and {self.keys - len(self.examples):,} more")
        return "\n".join(lines)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def rows_difference(
    client,
    live_query: str,
    rebuilt_query: str,
    key: str,
    *,
    table: str = "",
    limit: int = EXAMPLE_KEYS,
) -> TableDifference:
    """The keys whose rows differ between two queries, as multisets of rows (a duplicated row
    counts): the total number and the first `limit` of them, with the differing columns where a
    key has one row on each side."""
    unmatched = f"""
        SELECT toString({key}) AS _key, {_ROW_HASH} AS _hash, 1 AS _side FROM ({live_query})
        UNION ALL
        SELECT toString({key}), {_ROW_HASH}, -1 FROM ({rebuilt_query})
    """
    found = client.query(
        f"""
        SELECT _key, sumIf(n, n > 0), -sumIf(n, n < 0), count() OVER ()
        FROM (SELECT _key, _hash, sum(_side) AS n FROM ({unmatched})
              GROUP BY _key, _hash HAVING n != 0)
        GROUP BY _key ORDER BY _key LIMIT {int(limit)}
        """
    ).result_rows
    if not found:
        return TableDifference(table, 0, ())
    keys = [row[0] for row in found]
    sides = []
    for query in (live_query, rebuilt_query):
        result = client.query(
            f"SELECT * FROM ({query}) WHERE has({{keys:Array(String)}}, toString({key}))",
            parameters={"keys": keys},
        )
        by_key: dict[str, list[tuple]] = {}
        # An empty result names no columns (ClickHouse sends no Native block for it).
        key_index = result.column_names.index(key) if result.result_rows else 0
        for row in result.result_rows:
            by_key.setdefault(str(row[key_index]), []).append(row)
        sides.append((result.column_names, by_key))
    (names, live), (_names, rebuilt) = sides
    examples = []
    for key_value, live_rows, rebuilt_rows, _total in found:
        columns: tuple[str, ...] = ()
        pair = live.get(key_value, []), rebuilt.get(key_value, [])
        if live_rows == rebuilt_rows == 1 and len(pair[0]) == len(pair[1]) == 1:
            columns = tuple(
                name
                for name, a, b in zip(names, pair[0][0], pair[1][0], strict=True)
                if not _same(a, b)
            )
        examples.append(KeyDifference(key_value, int(live_rows), int(rebuilt_rows), columns))
    return TableDifference(table, int(found[0][3]), tuple(examples))


def table_differences(
    client, live_database: str, rebuilt_database: str, tables=None, *, limit: int = EXAMPLE_KEYS
) -> list[TableDifference]:
    """`rows_difference` of each analyst-facing table (or of `tables`) between two databases."""
    return [
        rows_difference(
            client,
            query.format(db=live_database),
            query.format(db=rebuilt_database),
            key,
            table=name,
            limit=limit,
        )
        for name, (key, query) in COMPARED_TABLES.items()
        if tables is None or name in tables
    ]


@dataclass
class RebuildResult:
    database: str
    app_id: str
    seconds: float
    live: dict[str, TableDigest] = field(default_factory=dict)
    rebuilt: dict[str, TableDigest] = field(default_factory=dict)
    switched: bool = False
    # Only when the tables differ: which tables, and a few of their differing keys.
    differences: list[TableDifference] = field(default_factory=list)
    replay: ReplayStats | None = None

    @property
    def equal(self) -> bool:
        return self.live == self.rebuilt


def drop_worker_topics(settings: Settings, app_id: str) -> list[str]:
    """Delete the own topics of a worker app id that is done (re-keyed facts, faust's
    changelog and leader topic): a full copy of the history each. The rebuild no longer runs
    a worker (it replays, see `services.ops.replay`); isolated workers, e.g. of tests, do."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{app_id}-")]
    for name, future in (admin.delete_topics(names, request_timeout=30) if names else {}).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - best effort: a leftover topic is only disk
            print(f"could not delete {name}: {exc}", file=sys.stderr)
    return names


def default_processes() -> int:
    """One replay process per core, at most 2 by default: reading and deriving are CPU-bound,
    and the live worker, Kafka and ClickHouse need the machine too."""
    return max(1, min(2, os.cpu_count() or 1))


def _compare(
    settings: Settings,
    client,
    result: RebuildResult,
    timeout: float,
    catch_up: Callable[[], Any],
) -> None:
    """Digest both sets of tables once the live worker is caught up and the replay has read
    what arrived meanwhile (`catch_up`), up to COMPARE_ATTEMPTS times; when they still differ,
    record which tables and keys differ.

    Why more than one attempt: the live side keeps processing during a rebuild (that is its
    point), and the replay reads the same topics independently. Being caught up is a moment,
    not a state: an event published after the lag check and the catch-up, or between the two
    digests, is in one set of tables and not yet in the other. That difference goes away once
    both have written the event (the worker commits its offsets only after ClickHouse took the
    rows, so "caught up" means "written"; the catch-up returns once its rows are written),
    hence: catch up again and compare again. A real difference (the rebuild derived other rows)
    survives every attempt and is reported. Without live traffic the first comparison is final.
    """
    for _attempt in range(COMPARE_ATTEMPTS):
        wait_caught_up(settings, group=settings.worker_app_id, timeout=timeout)
        catch_up()
        result.live = table_digests(client, settings.clickhouse_database)
        result.rebuilt = table_digests(client, result.database)
        if result.equal:
            result.differences = []
            return
    result.differences = table_differences(
        client,
        settings.clickhouse_database,
        result.database,
        [name for name in COMPARED_TABLES if result.live[name] != result.rebuilt[name]],
    )


def rebuild(
    settings: Settings,
    *,
    switch: bool = True,
    timeout: float = 3600.0,
    stamp: str | None = None,
    processes: int | None = None,
    spill_dir: Path | None = None,
    log=print,
) -> RebuildResult:
    """Replay into `<db>_rebuild_<stamp>`, compare with the live tables, switch when equal.

    `spill_dir` (default `<home>/rebuild/<stamp>`) holds the spilled facts, ~0.3 kB per event,
    and is removed at the end; `timeout` bounds each wait for the live worker to catch up.
    """
    stamp = stamp or time.strftime("%Y%m%d%H%M%S")
    database = f"{settings.clickhouse_database}_rebuild_{stamp}"
    app_id = f"{settings.worker_app_id}-rebuild-{stamp}"
    directory = spill_dir or settings.home / "rebuild" / stamp
    started = time.monotonic()
    log(f"rebuilding into {database}")
    migrate(settings, database=database, log=log)
    replay = Replay(
        settings,
        database,
        directory,
        group=app_id,
        processes=processes or default_processes(),
        progress=log,
    )
    try:
        result = RebuildResult(database, app_id, 0.0, replay=replay.run())
        client = settings.clickhouse_client(database="default")
        _compare(settings, client, result, timeout, replay.catch_up)
        result.seconds = time.monotonic() - started
        if replay.stats.caught_up:
            log(f"  caught up with {replay.stats.caught_up:,} messages published meanwhile")
        for name in COMPARED_TABLES:
            same = "equal" if result.live[name] == result.rebuilt[name] else "DIFFERENT"
            log(
                f"  {name:<11} live {result.live[name].rows:>10,} rows   rebuilt "
                f"{result.rebuilt[name].rows:>10,} rows   {same}"
            )
        for difference in result.differences:
            log("  " + difference.describe().replace("\n", "\n  "))
        if switch and result.equal:
            topology = settings.clickhouse_topology
            for table in FACT_TABLES:
                exchange = (
                    f"EXCHANGE TABLES {settings.clickhouse_database}.{table} AND {database}.{table}"
                )
                for statement in topology.render(exchange, database):
                    client.command(statement)
            result.switched = True
            log(
                f"switched: analysts now read the rebuilt tables; the previous ones are in "
                f"{database}"
            )
            # Events the live worker wrote into the previous tables after the last comparison
            # are not in the rebuilt ones yet: replay them into the tables that are live now
            # (every row is idempotent, so those the live worker writes again change nothing).
            replay.catch_up(settings.clickhouse_database)
        elif switch:
            log("not switched: the rebuilt tables differ from the live ones")
        log(f"rebuild done in {time.monotonic() - started:.0f} s")
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)
