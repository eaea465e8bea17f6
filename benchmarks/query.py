"""query: the national and provincial rollups and a lag query at 10 M events, via the endpoint.

Data: the tables the process scenario's worker derived from the generated history (N events),
replicated k times inside ClickHouse (``INSERT … SELECT … CROSS JOIN numbers(k)``, ids suffixed
with the copy number, event_id re-hashed), into a fresh database, until `events` holds the target
size (10 M by default; `--query-events`). So the distributions are the generated history's; the
country is k times larger. The tables are then merged (`OPTIMIZE … FINAL`), as background merges
would leave them.

Queries, each timed (median of repeats after a warm-up):
* national yearly rollup: ``rollup_sql('year', national=True)`` with the parameters
  flows/rollups.py ``compute_and_store`` passes (whole history); the provincial yearly rollups
  in both geographies (historical provinces, and today's after the 2025 merger) likewise;
* transfer-lag percentiles (p50/p90/p99) per year and receiving agency type over `transfers`;
* ``SELECT count() FROM events`` (the floor: request + response).

Through the endpoint (clickhouse-connect over HTTP) vs the same query on clickhouse-connect's
in-process chDB client over the same data (same source rows copied in Native format, same
replication SQL; checksums compared).
"""

from __future__ import annotations

import math
from datetime import date

from benchmarks.common import (
    BenchContext,
    Result,
    Timer,
    endpoint_pid,
    fmt_num,
    median,
    peak_rss_mb,
    reset_peak_rss,
    timed_runs,
)

#: Seconds at 10 M events: the national rollup runs in every refresh of the flows, the provincial
#: ones (each geography) too, and an analyst's ad-hoc lag query should feel interactive.
TARGET_SECONDS = {
    "national yearly rollup": 0.5,
    "provincial yearly rollup (historical provinces)": 1.0,
    "provincial yearly rollup (current provinces)": 1.0,
    "transfer-lag percentiles": 1.0,
}
TABLES = {  # table -> expressions replacing id columns in copy r.number
    "events": {
        "event_id": "if(r.number = 0, s.event_id, reinterpretAsUUID(concat("
        "reinterpretAsString(cityHash64(s.event_id, r.number)), "
        "reinterpretAsString(cityHash64(r.number, s.event_id)))))",
        "case_id": "concat(s.case_id, '~', toString(r.number))",
        "transfer_id": "if(s.transfer_id = '', '', concat(s.transfer_id, '~', toString(r.number)))",
    },
    "cases_state": {"case_id": "concat(s.case_id, '~', toString(r.number))"},
    "cases_rehomed": {"case_id": "concat(s.case_id, '~', toString(r.number))"},
    "transfers_state": {
        "transfer_id": "concat(s.transfer_id, '~', toString(r.number))",
        "case_id": "concat(s.case_id, '~', toString(r.number))",
    },
    "appraisals_state": {
        "appraisal_id": "concat(s.appraisal_id, '~', toString(r.number))",
        "case_id": "concat(s.case_id, '~', toString(r.number))",
    },
}

LAG_SQL = """
SELECT toYear(toTimeZone(received_at, {tz:String})) AS year, to_agency_type,
    count() AS transfers,
    quantilesExactInclusive(0.5, 0.9, 0.99)(lag_hours) AS lag_p50_p90_p99_hours
FROM transfers
WHERE received_at IS NOT NULL
GROUP BY year, to_agency_type
ORDER BY year, to_agency_type
"""

# Count and a hash of the sorted row hashes: an XOR of `cityHash64(*)` cancels out equal rows
# (k identical copies, k even) and skips every row with a NULL column.
CHECKSUM_SQL = (
    "SELECT count(), cityHash64(arraySort(groupArray(cityHash64(tuple(*))))) FROM {table}"
)


def replicate_sql(table: str, src: str, k: int) -> str:
    replace = ", ".join(f"{expr} AS {col}" for col, expr in TABLES[table].items())
    return (
        f"INSERT INTO {table} SELECT s.* REPLACE ({replace}) "
        f"FROM {src}.{table} AS s FINAL CROSS JOIN numbers({k}) AS r"
    )


def build(client, src: str, k: int) -> None:
    """Replicate src's fact tables k times into the client's current database and merge (the
    rollups' copy of `events` is fed by its materialized view as `events` is filled)."""
    for table in TABLES:
        client.command(replicate_sql(table, src, k))
    for table in [*TABLES, "events_by_type"]:
        client.command(f"OPTIMIZE TABLE {table} FINAL")


def apply_migrations(client) -> None:
    from services.serving.migrations import available

    for migration in available():
        for statement in migration.statements():
            client.command(statement)


def rollup_parameters(client) -> dict:
    from flows.rollups import _province_map
    from services.serving.rollups import REPORTING_TZ, period_grid, period_start_of

    first, last = client.query(
        "SELECT toDate(min(occurred_at), {tz:String}), toDate(max(occurred_at), {tz:String}) "
        "FROM events WHERE event_type != ''",
        parameters={"tz": REPORTING_TZ},
    ).result_rows[0]
    first, last = date.fromisoformat(str(first)), date.fromisoformat(str(last))
    map_from, map_to = _province_map()
    return {
        "tz": REPORTING_TZ,
        "grid": period_grid(first, last, "year"),
        "period_kind": "year",
        "first": period_start_of(first, "year"),
        "last": period_start_of(last, "year"),
        "map_from": map_from,
        "map_to": map_to,
    }


# The rollups' building blocks, each timed on its own: ClickHouse runs the statement natively,
# so its "profile" is which parts of the SQL cost what (py-spy sees nothing there). `events` is
# ordered by event_id; `events_by_type` (migration 0010) is the rollups' copy ordered by type.
_FINAL = " SETTINGS do_not_merge_across_partitions_select_final = 1"
_CASE_TYPES = (
    "('case_opened', 'case_resolved', 'case_reopened', 'discipline_imposed', 'assets_recovered')"
)
_MONITORING = (
    "(SELECT case_id, min(occurred_at) AS t FROM {table} FINAL "
    "WHERE event_type = 'monitoring_assigned' GROUP BY case_id)"
)
ROLLUP_PARTS = {
    "case figures from events (ordered by event_id)": (
        "SELECT event_type, count(), sum(discipline_party_members), sum(assets_recovered_vnd) "
        f"FROM events FINAL WHERE event_type IN {_CASE_TYPES} GROUP BY event_type{_FINAL}"
    ),
    "the same from events_by_type (what the rollups read)": (
        "SELECT event_type, count(), sum(discipline_party_members), sum(assets_recovered_vnd) "
        f"FROM events_by_type FINAL WHERE event_type IN {_CASE_TYPES} GROUP BY event_type{_FINAL}"
    ),
    "monitoring per case, from events": (
        f"SELECT count() FROM {_MONITORING.format(table='events')}{_FINAL}"
    ),
    "monitoring per case, from events_by_type": (
        f"SELECT count() FROM {_MONITORING.format(table='events_by_type')}{_FINAL}"
    ),
    "monitored resolutions (JOIN monitoring), from events_by_type": (
        "SELECT count() FROM events_by_type AS e FINAL INNER JOIN "
        f"{_MONITORING.format(table='events_by_type')} AS m ON m.case_id = e.case_id "
        f"WHERE e.event_type IN ('case_resolved', 'case_reopened'){_FINAL}"
    ),
    "the homes of the cases in cases_rehomed joined to the case events (provincial only)": (
        "SELECT count() FROM events_by_type AS e FINAL LEFT JOIN (SELECT case_id, province_code "
        "FROM cases WHERE case_id IN (SELECT case_id FROM cases_rehomed)) AS c "
        f"ON c.case_id = e.case_id WHERE e.event_type IN {_CASE_TYPES}{_FINAL}"
    ),
    "cases in cases_rehomed": "SELECT uniqExact(case_id) FROM cases_rehomed",
    "transfer lag quantiles (transfers view)": (
        "SELECT count(), quantileExactInclusive(0.5)(lag_hours) FROM transfers"
    ),
}


def rollup_parts(client, repeats: int) -> str:
    lines = ["median seconds of each part on its own (the statement runs them together):", ""]
    for name, sql in ROLLUP_PARTS.items():
        try:
            seconds, _ = timed_runs(lambda s=sql: client.query(s), repeats)
            lines.append(f"  {median(seconds):7.3f} s  {name}")
        except Exception as exc:  # noqa: BLE001 - a part that fails is reported, not fatal
            lines.append(f"  failed   {name}: {exc}"[:300])
    return "\n".join(lines)


def run(ctx: BenchContext) -> list[Result]:
    from services.serving.rollups import REPORTING_TZ, rollup_sql

    live = ctx.ensure_live_worker()
    http_admin = ctx.client()
    src = live.database
    source_events = http_admin.command(f"SELECT count() FROM {src}.events FINAL")
    k = max(1, math.ceil(ctx.sizes.query_events / max(1, source_events)))

    # --- through the endpoint
    qdb = ctx.new_database("query")
    http = ctx.settings.clickhouse_client(database=qdb, send_receive_timeout=1800)
    ctx.log(f"query: replicating {source_events:,} events x {k} into {qdb} (endpoint)")
    with Timer() as load_http:
        build(http, src, k)
    rows = http.command("SELECT count() FROM events")

    # --- in process: same source rows (Native), same replication SQL
    ctx.log("query: the same data in in-process chDB")
    inproc = ctx.inproc_client(f"{qdb}_inproc")
    apply_migrations(inproc)
    src_copy = f"{qdb}_src"
    inproc.command(f"CREATE DATABASE IF NOT EXISTS {src_copy}")
    for table in TABLES:
        inproc.command(f"CREATE TABLE IF NOT EXISTS {src_copy}.{table} AS {table}")
        block = http_admin.raw_query(f"SELECT * FROM {src}.{table} FINAL", fmt="Native")
        inproc.raw_insert(f"{src_copy}.{table}", insert_block=block, fmt="Native")
    with Timer() as load_inproc:
        build(inproc, src_copy, k)
    same_data = all(
        http.query(CHECKSUM_SQL.format(table=t)).result_rows
        == inproc.query(CHECKSUM_SQL.format(table=t)).result_rows
        for t in TABLES
    )

    params = rollup_parameters(http)
    queries = {
        "national yearly rollup": (rollup_sql("year", national=True), params),
        "provincial yearly rollup (historical provinces)": (
            rollup_sql("year", national=False, geography="historical"),
            params,
        ),
        "provincial yearly rollup (current provinces)": (
            rollup_sql("year", national=False, geography="current"),
            params,
        ),
        "transfer-lag percentiles": (LAG_SQL, {"tz": REPORTING_TZ}),
        "count()": ("SELECT count() FROM events", {}),
    }
    ep_pid = endpoint_pid(ctx.settings)
    if ep_pid:
        reset_peak_rss(ep_pid)
    reset_peak_rss()
    timings: dict[str, dict[str, float]] = {}
    results_equal = {}
    for name, (sql, parameters) in queries.items():
        ctx.log(f"query: {name}")
        http_s, http_result = timed_runs(
            lambda s=sql, p=parameters: http.query(s, parameters=p), ctx.sizes.query_repeats
        )
        in_s, in_result = timed_runs(
            lambda s=sql, p=parameters: inproc.query(s, parameters=p), ctx.sizes.query_repeats
        )
        timings[name] = {
            "endpoint": median(http_s),
            "inprocess": median(in_s),
            "rows": len(http_result.result_rows),
        }
        results_equal[name] = http_result.result_rows == in_result.result_rows
    ep_rss = peak_rss_mb(ep_pid) if ep_pid else None
    inproc_rss = peak_rss_mb()
    ctx.profiles["query (parts of the national rollup, through the endpoint)"] = rollup_parts(
        http, ctx.sizes.query_repeats
    )

    out = []
    for name, target in TARGET_SECONDS.items():
        t = timings[name]
        out.append(
            Result(
                scenario=f"query: {name}",
                result=f"{t['endpoint']:.3f} s at {fmt_num(rows)} events",
                baseline=f"in-process chDB {t['inprocess']:.3f} s; count() "
                f"{timings['count()']['endpoint']:.3f} s",
                ratio=t["endpoint"] / t["inprocess"] if t["inprocess"] else None,
                ratio_label="× in-process time",
                target=f"< {target:g} s at 10 M events",
                met=(t["endpoint"] < target and rows >= 10_000_000) if rows >= 10_000_000 else None,
                numbers={
                    "events": int(rows),
                    "copies": k,
                    "result_rows": t["rows"],
                    "same_result_in_process": results_equal[name],
                    "same_data": same_data,
                    "load_endpoint_s": round(load_http.seconds, 1),
                    "load_inprocess_s": round(load_inproc.seconds, 1),
                    "repeats": ctx.sizes.query_repeats,
                },
                memory={
                    "endpoint": round(ep_rss or 0),
                    "in-process chDB (bench)": round(inproc_rss or 0),
                },
                command=f"{ctx.repro('query')} --query-events {ctx.sizes.query_events}",
                notes="" if rows >= 10_000_000 else "below 10 M events: no verdict",
            )
        )
    return out
