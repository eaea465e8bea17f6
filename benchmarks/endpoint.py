"""endpoint: insert and query throughput through the ClickHouse endpoint vs in-process chDB.

The same clickhouse-connect calls against two clients: the endpoint (HTTP, a separate process
owning its chDB data path) and clickhouse-connect's in-process chDB client
(``get_client(interface='chdb')``) on a separate data path in the benchmark process.

* insert: the generated history as `events` rows (the worker's row shape), 5,000 rows per
  ``insert`` with a reused insert context (no DESCRIBE per insert), into a fresh `events` table;
* scan: ``SELECT * FROM events`` fetched into Python rows;
* aggregate: a GROUP BY over `events` (small result);
* point queries: ``count()`` of one case (parameterised), one after another, per second.

Ratio = endpoint throughput / in-process throughput; target: within 2x (ratio >= 0.5).
"""

from __future__ import annotations

import random

from benchmarks.common import (
    BenchContext,
    Result,
    Timer,
    chunks,
    endpoint_pid,
    fmt_num,
    median,
    peak_rss_mb,
    reset_peak_rss,
    timed_runs,
)

TARGET_RATIO = 0.5
BATCH = 5_000
AGG_SQL = (
    "SELECT event_type, count(), uniqExact(case_id), max(occurred_at) FROM events "
    "GROUP BY event_type ORDER BY event_type"
)
POINT_SQL = "SELECT count() FROM events WHERE case_id = {c:String}"


def _measure(
    client, rows: list[list], case_ids: list[str], repeats: int, points: int
) -> dict[str, float]:
    from services.processor.facts import EVENT_COLUMNS

    context = client.create_insert_context("events", column_names=EVENT_COLUMNS)
    with Timer() as insert:
        for chunk in chunks(rows, BATCH):
            context.data = chunk
            client.insert(context=context)
    scan_s, scan = timed_runs(lambda: client.query("SELECT * FROM events").result_rows, repeats)
    agg_s, _ = timed_runs(lambda: client.query(AGG_SQL).result_rows, repeats)
    rng = random.Random(8)
    sample = [rng.choice(case_ids) for _ in range(points)]
    client.query(POINT_SQL, parameters={"c": sample[0]})
    with Timer() as point:
        for case_id in sample:
            _ = client.query(POINT_SQL, parameters={"c": case_id}).result_rows
    return {
        "insert_rows_s": len(rows) / insert.seconds,
        "scan_rows_s": len(scan) / median(scan_s),
        "aggregate_s": median(agg_s),
        "point_qps": points / point.seconds,
    }


def run(ctx: BenchContext) -> list[Result]:
    from services.contracts.events import parse_event
    from services.processor.facts import Fact, event_row

    events = ctx.dataset.events
    rows = [event_row(Fact.from_event(parse_event(e))) for e in events]
    case_ids = sorted({r[2] for r in rows})
    repeats, points = ctx.sizes.query_repeats, ctx.sizes.small_queries

    database = ctx.new_database("endpoint")
    http = ctx.settings.clickhouse_client(database=database)
    inproc = ctx.inproc_client(f"{database}_inproc")
    from benchmarks.query import apply_migrations

    apply_migrations(inproc)

    ep_pid = endpoint_pid(ctx.settings)
    if ep_pid:
        reset_peak_rss(ep_pid)
    ctx.log(f"endpoint: {len(rows):,} rows through the endpoint (HTTP)")
    over_http = _measure(http, rows, case_ids, repeats, points)
    ep_rss = peak_rss_mb(ep_pid) if ep_pid else None
    reset_peak_rss()
    ctx.log(f"endpoint: {len(rows):,} rows in process (chDB)")
    in_process = _measure(inproc, rows, case_ids, repeats, points)
    inproc_rss = peak_rss_mb()
    memory = {"endpoint": round(ep_rss or 0), "in-process chDB (bench)": round(inproc_rss or 0)}

    def row(name: str, key: str, unit: str, higher_is_better: bool = True) -> Result:
        ours, theirs = over_http[key], in_process[key]
        ratio = ours / theirs if higher_is_better else theirs / ours
        digits = 3 if unit == "s" else 0
        return Result(
            scenario=f"endpoint: {name}",
            result=fmt_num(ours, unit, digits),
            baseline=f"in-process chDB {fmt_num(theirs, unit, digits)}",
            ratio=ratio,
            ratio_label="of in-process" if higher_is_better else "of in-process speed",
            target="within 2× (>= 0.50)",
            met=ratio >= TARGET_RATIO,
            numbers={
                "rows": len(rows),
                "batch": BATCH,
                "repeats": repeats,
                "point_queries": points,
            },
            memory=memory,
            command=ctx.repro("endpoint"),
        )

    return [
        row("insert", "insert_rows_s", "rows/s"),
        row("scan SELECT *", "scan_rows_s", "rows/s"),
        row("aggregate", "aggregate_s", "s", higher_is_better=False),
        row("point queries", "point_qps", "queries/s"),
    ]
