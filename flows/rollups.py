"""Prefect flows that build `rollup_national` and `rollup_province` from the fact tables.

`build_rollups` recomputes every period in a range (a backfill) and inserts it with a newer
`built_at`, so re-running replaces the periods and changes no figure. Stock metrics (pending at
end, monitored) are cumulated from the first event, so any period can be rebuilt on its own.
`refresh_recent` is the scheduled one: it rebuilds the periods that late events may have touched.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, task

from services.contracts import reference as ref
from services.serving.rollups import (
    GEOGRAPHIES,
    METRIC_COLUMNS,
    PERIOD_KINDS,
    REPORTING_TZ,
    period_grid,
    period_start_of,
    rollup_sql,
)
from services.settings import Settings


def _province_map() -> tuple[list[str], list[str]]:
    """Old province code → today's province code, from the reference data's successors."""
    today = date.today()
    codes = [p.code for p in ref.provinces()]
    mapped = [(c, ref.current_province(c, today)) for c in dict.fromkeys(codes)]
    return [a for a, _ in mapped], [b for _, b in mapped]


def _history_start(client) -> date | None:
    """The first day of the events that count (a forged, back-dated event moved it to 1970, and
    then no rollup at all was built)."""
    rows = client.query(
        "SELECT count(), toDate(min(occurred_at), {tz:String}) FROM events "
        "WHERE event_type != '' AND event_id NOT IN (SELECT event_id FROM violating_events)",
        parameters={"tz": REPORTING_TZ},
    ).result_rows
    if not rows or not rows[0][0]:
        return None
    return rows[0][1]


@task(retries=2, retry_delay_seconds=5)
def compute_and_store(
    period_kind: str, first: date, last: date, national: bool, geography: str
) -> int:
    """Compute one rollup table's rows for [first, last] and insert them as the newest build."""
    settings = Settings.from_env()
    client = settings.clickhouse_client()
    history_start = _history_start(client)
    if history_start is None:
        return 0
    grid = period_grid(min(history_start, first), last, period_kind)
    map_from, map_to = _province_map()
    result = client.query(
        rollup_sql(period_kind, national=national, geography=geography),
        parameters={
            "tz": REPORTING_TZ,
            "grid": grid,
            "period_kind": period_kind,
            "first": period_start_of(first, period_kind),
            "last": period_start_of(last, period_kind),
            "map_from": map_from,
            "map_to": map_to,
        },
    )
    built_at = datetime.now(UTC)
    names = result.column_names
    rows = []
    for values in result.result_rows:
        record = dict(zip(names, values, strict=True))
        head = [period_kind, record["period_start"], record["period_end"]]
        if not national:
            head = [geography, *head, record["scope"]]
        rows.append([*head, *(record[c] for c in METRIC_COLUMNS), built_at])
    table = "rollup_national_state" if national else "rollup_province_state"
    head_columns = ["period_kind", "period_start", "period_end"]
    if not national:
        head_columns = ["geography", *head_columns, "province_code"]
    if rows:
        client.insert(table, rows, column_names=[*head_columns, *METRIC_COLUMNS, "built_at"])
    flow_name = "national" if national else f"province:{geography}"
    _record_run(client, flow_name, period_kind, first, last, len(rows), built_at)
    return len(rows)


def _record_run(
    client: Any,
    flow_name: str,
    period_kind: str,
    first: date,
    last: date,
    rows_written: int,
    finished_at: datetime,
) -> None:
    """One `rollup_runs` row: what health and the reports read to know how fresh a rollup is."""
    client.insert(
        "rollup_runs",
        [[flow_name, period_kind, first, last, rows_written, finished_at]],
        column_names=[
            "flow",
            "period_kind",
            "first_period",
            "last_period",
            "rows_written",
            "finished_at",
        ],
    )


@flow(name="build-rollups")
def build_rollups(
    first: date,
    last: date,
    period_kinds: list[str] | None = None,
    geographies: list[str] | None = None,
) -> dict[str, int]:
    """Backfill: rebuild national and provincial rollups for every period from first to last."""
    logger = get_run_logger()
    kinds = period_kinds or list(PERIOD_KINDS)
    geos = geographies or list(GEOGRAPHIES)
    written: dict[str, int] = {}
    for kind in kinds:
        written[f"national/{kind}"] = compute_and_store(kind, first, last, True, "historical")
        for geography in geos:
            written[f"province/{geography}/{kind}"] = compute_and_store(
                kind, first, last, False, geography
            )
    logger.info("rollups rebuilt %s..%s: %s", first, last, written)
    return written


WATERMARK_FLOW = "refresh-watermark"


#: The first day whose figures events ingested since the watermark may change: their own dates,
#: and the dates of every event of their cases that is, or ever was, a violation. A late fact
#: can change whether an *earlier-dated* fact counts (a late opening makes the case's earlier
#: facts "before the opening"; a late transfer lifts a receiver's earlier-ingested acts), and
#: with only the new events' dates those earlier periods kept their old figures. Periods before
#: the first one ever built hold no rollup rows to correct, so a forged 1970 date drags nothing.
_EARLIEST_TOUCHED = """
    SELECT toDate(min(at), {tz:String}), count() FROM (
        SELECT occurred_at AS at FROM events WHERE ingested_at > {since:DateTime64(3)}
        UNION ALL
        SELECT occurred_at AS at FROM integrity_violations_state
        WHERE case_id IN (SELECT case_id FROM events WHERE ingested_at > {since:DateTime64(3)})
    )
"""


def _earliest_touched(client: Any, since: Any) -> date | None:
    """The first day to rebuild from (`_EARLIEST_TOUCHED`), or None when nothing new arrived."""
    built_from = client.query(
        "SELECT min(first_period) FROM rollup_runs WHERE flow != {f:String}",
        parameters={"f": WATERMARK_FLOW},
    ).result_rows[0][0]
    rows = client.query(
        _EARLIEST_TOUCHED, parameters={"tz": REPORTING_TZ, "since": since}
    ).result_rows
    if not rows or not rows[0][1]:
        return None
    earliest: date = rows[0][0]
    if not isinstance(built_from, date) or built_from.year == 1970:  # nothing built yet
        built_from = _history_start(client) or earliest
    return max(earliest, built_from)


@flow(name="refresh-recent-rollups")
def refresh_recent() -> dict[str, int]:
    """Scheduled refresh: rebuild every period that events ingested since the last refresh touch.

    A late event re-opens its own periods and, because pending/monitored are stocks, every later
    one; so the rebuild runs from the earliest touched period to today. A late event can also
    change which earlier facts of its case count (the authority rules judge a case's facts as a
    whole), so their periods are touched too (`_EARLIEST_TOUCHED`).
    """
    logger = get_run_logger()
    settings = Settings.from_env()
    client = settings.clickhouse_client()
    started = datetime.now(UTC)
    since = client.command(
        "SELECT max(finished_at) FROM rollup_runs WHERE flow = {f:String}",
        parameters={"f": WATERMARK_FLOW},
    )
    first = _earliest_touched(client, since)
    written: dict[str, int] = {}
    if first is not None:
        logger.info("events ingested since %s touch periods from %s on", since, first)
        written = build_rollups(first, date.today())
    _record_run(client, WATERMARK_FLOW, "", date.today(), date.today(), 0, started)
    return written
