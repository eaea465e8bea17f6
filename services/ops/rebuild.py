"""`casestream rebuild`: replay every topic from the beginning into fresh tables, then switch.

Kafka is the source of truth, so the fact tables are a cache that can always be rebuilt:

1. a new database `<db>_rebuild_<stamp>` gets the same migrations;
2. a second worker with its own consumer group (so the live worker's offsets are untouched)
   reads every agency topic from offset 0 into it: the live tables keep serving analysts and the
   live worker keeps processing. Its intake re-keys every event into the rebuild's own facts
   topic (`<app_id>-facts-by-case`), which only its derive reads; the topic, like faust's
   changelog of the rebuild, is deleted when the rebuild worker stops;
3. once the rebuild worker has caught up, the checksums of both sets of tables are compared;
4. the switch exchanges each rebuilt table with its live twin (`EXCHANGE TABLES`, atomic per
   table); from then on the live worker writes into the rebuilt tables. The old tables stay in
   the rebuild database, for comparison or rollback, until dropped.

Rows are a deterministic function of the set of events (processor/case_state.py), which is why
the two sets of tables can be compared row for row and exchanged without a visible jump.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from services.ops.consumer_lag import wait_caught_up
from services.serving.migrations import migrate
from services.settings import Settings
from services.stack.process import ManagedProcess

# Written by the worker; everything else (rollups, ops tables) is derived from these.
FACT_TABLES = ["events", "cases_state", "transfers_state", "appraisals_state"]

# What analysts see, latest state only; wall-clock columns are left out of the comparison.
CHECKSUM_QUERIES = {
    "events": "SELECT * EXCEPT ingested_at FROM {db}.events FINAL",
    "cases": "SELECT * FROM {db}.cases",
    "transfers": "SELECT * FROM {db}.transfers",
    "appraisals": "SELECT * FROM {db}.appraisals",
}


def table_checksums(client, database: str) -> dict[str, tuple[int, int]]:
    """(row count, order-independent hash of all rows) per analyst-facing table."""
    result = {}
    for name, query in CHECKSUM_QUERIES.items():
        count, digest = client.query(
            f"SELECT count(), groupBitXor(cityHash64(*)) FROM ({query.format(db=database)})"
        ).result_rows[0]
        result[name] = (int(count), int(digest or 0))  # NULL: no rows of a Nullable hash
    return result


@dataclass
class RebuildResult:
    database: str
    app_id: str
    seconds: float
    live: dict[str, tuple[int, int]] = field(default_factory=dict)
    rebuilt: dict[str, tuple[int, int]] = field(default_factory=dict)
    switched: bool = False

    @property
    def equal(self) -> bool:
        return self.live == self.rebuilt


def drop_worker_topics(settings: Settings, app_id: str) -> list[str]:
    """Delete a finished rebuild worker's own topics (re-keyed facts, faust's changelog and
    leader topic): a full copy of the history each, of no use once the rebuild is over."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(f"{app_id}-")]
    for name, future in (admin.delete_topics(names, request_timeout=30) if names else {}).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - best effort: a leftover topic is only disk
            print(f"could not delete {name}: {exc}", file=sys.stderr)
    return names


def _rebuild_worker(settings: Settings, database: str, app_id: str) -> ManagedProcess:
    proc = ManagedProcess(f"rebuild-worker-{app_id}", settings.home)
    proc.start(
        [sys.executable, "-m", "services.cli", "worker", "run", "--loglevel", "warning"],
        env={"CASESTREAM_CLICKHOUSE_DATABASE": database, "CASESTREAM_WORKER_APP_ID": app_id},
        marker="worker run",
    )
    return proc


def rebuild(
    settings: Settings,
    *,
    switch: bool = True,
    timeout: float = 3600.0,
    stamp: str | None = None,
    log=print,
) -> RebuildResult:
    stamp = stamp or time.strftime("%Y%m%d%H%M%S")
    database = f"{settings.clickhouse_database}_rebuild_{stamp}"
    app_id = f"{settings.worker_app_id}-rebuild-{stamp}"
    started = time.monotonic()
    log(f"rebuilding into {database} with consumer group {app_id}")
    migrate(settings, database=database, log=log)
    worker = _rebuild_worker(settings, database, app_id)
    try:
        time.sleep(3)  # let the group form before measuring its lag
        wait_caught_up(
            settings,
            group=app_id,
            timeout=timeout,
            progress=lambda lag: log(f"  rebuild: {lag:,} messages behind"),
        )
        client = settings.clickhouse_client(database="default")
        result = RebuildResult(database, app_id, 0.0)
        for _attempt in range(5):  # live traffic: compare once both groups are caught up
            wait_caught_up(settings, group=settings.worker_app_id, timeout=timeout)
            wait_caught_up(settings, group=app_id, timeout=timeout)
            result.live = table_checksums(client, settings.clickhouse_database)
            result.rebuilt = table_checksums(client, database)
            if result.equal:
                break
            time.sleep(2)
        result.seconds = time.monotonic() - started
        for name in CHECKSUM_QUERIES:
            same = "equal" if result.live[name] == result.rebuilt[name] else "DIFFERENT"
            log(
                f"  {name:<11} live {result.live[name][0]:>10,} rows   rebuilt "
                f"{result.rebuilt[name][0]:>10,} rows   {same}"
            )
        if switch and result.equal:
            for table in FACT_TABLES:
                client.command(
                    f"EXCHANGE TABLES {settings.clickhouse_database}.{table} AND {database}.{table}"
                )
            result.switched = True
            log(
                f"switched: analysts now read the rebuilt tables; the previous ones are in "
                f"{database}"
            )
            # Events that arrived during the switch went to both workers; let the rebuild
            # worker finish what it has read before it goes.
            wait_caught_up(settings, group=app_id, timeout=timeout)
        elif switch:
            log("not switched: the rebuilt tables differ from the live ones")
        return result
    finally:
        worker.stop()
        drop_worker_topics(settings, app_id)
