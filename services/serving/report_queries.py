"""SQL behind the sections of the casestream report (flows/reports.py), one statement each.

Conventions shared by every statement:

* The report covers a *range* of whole periods: ``{start}`` (inclusive) and ``{end}``
  (exclusive) are its boundaries as UTC timestamps (``'YYYY-MM-DD HH:MM:SS.fff'``), computed
  from the period boundaries at midnight in the reporting time zone (Asia/Ho_Chi_Minh), like the
  rollups. "At the end of the range" means the instant ``{end}``. Event time decides everything.
* Scope: ``{national:UInt8}`` = 1 for the whole country, else ``{scope:String}`` is a province
  code. Province codes are compared after ``transform(code, {map_from}, {map_to}, code)``: empty
  arrays for historical geography (the province as it was), the reference data's successor map
  for current geography (today's provinces, after the 2025 merger).
* Case figures belong to the province of the agency that opened the case; transfer figures to
  both the sending and the receiving province (a transfer between two provinces shows in both
  provincial reports); appraisal figures to the province of the requesting agency.
* Lags are in hours in the tables (``lag_hours``); the report shows days (hours ÷ 24).
  Percentiles are ``quantileExactInclusive`` (linear interpolation, numpy's default), as in the
  rollups, so the report and ``rollup_*`` agree.

Statements with a ``$``-placeholder are ``string.Template``s filled by :func:`render` with the
scope predicates; the others are plain SQL with ClickHouse server-side parameters.
"""

from __future__ import annotations

from string import Template

from services.serving.rollups import PERIOD_KINDS


def _mapped(expr: str) -> str:
    return f"transform({expr}, {{map_from:Array(String)}}, {{map_to:Array(String)}}, {expr})"


def _in_scope(*exprs: str) -> str:
    matches = " OR ".join(f"{_mapped(e)} = {{scope:String}}" for e in exprs)
    return f"({{national:UInt8}} = 1 OR {matches})"


SCOPE_PREDICATES = {
    # a case: the province of its case_opened event's agency (column `home`)
    "case_in_scope": _in_scope("home"),
    # a transfer: sender's or receiver's province
    "transfer_in_scope": _in_scope("from_province_code", "to_province_code"),
    # an appraisal: the requesting agency's province
    "appraisal_in_scope": _in_scope("splitByChar('-', agency_id)[1]"),
}


def render(sql: str) -> str:
    """Fill the scope placeholders of a statement (a no-op for the plain ones)."""
    return Template(sql).substitute(SCOPE_PREDICATES)


# --------------------------------------------------------------------------- rollups
#: National rollup rows of the range, one per period (rollup_national, metrics contract).
ROLLUP_NATIONAL = """
SELECT *
FROM rollup_national
WHERE period_kind = {period_kind:String}
  AND period_start >= {first:Date} AND period_start <= {last:Date}
ORDER BY period_start
"""

#: One province's rollup rows of the range, in the requested geography.
ROLLUP_PROVINCE = """
SELECT *
FROM rollup_province
WHERE geography = {geography:String} AND province_code = {scope:String}
  AND period_kind = {period_kind:String}
  AND period_start >= {first:Date} AND period_start <= {last:Date}
ORDER BY period_start
"""

#: Every province in the last period of the range, most pending cases first.
PROVINCE_COMPARISON = """
SELECT province_code, cases_opened, cases_resolved, pending_end, clearance_rate,
    disposition_time_days, transfers_to_investigation, monitored_cases, monitored_resolved
FROM rollup_province
WHERE geography = {geography:String} AND period_kind = {period_kind:String}
  AND period_start = {last:Date}
ORDER BY pending_end DESC, province_code
"""


def rollup_build_sql(period_kind: str) -> str:
    """Latest `rollup_runs` row of a rollup flow whose periods cover [first, last].

    A run records the dates it was asked for; it computed every period holding them, hence the
    comparison on period starts. Parameters: flow ('national' | 'province:<geography>'),
    period_kind, first, last (period starts).
    """
    fn = PERIOD_KINDS[period_kind][0]
    return f"""
SELECT finished_at, first_period, last_period, rows_written
FROM rollup_runs
WHERE flow = {{flow:String}} AND period_kind = {{period_kind:String}}
  AND {fn}(first_period) <= {{first:Date}} AND {fn}(last_period) >= {{last:Date}}
ORDER BY finished_at DESC
LIMIT 1
"""


#: Latest build of a rollup flow for a period kind, whatever its range (for the report header).
ROLLUP_LAST_BUILT = """
SELECT max(finished_at) FROM rollup_runs
WHERE flow = {flow:String} AND period_kind = {period_kind:String}
"""

#: Does `events` have `ingested_at` (migration 0005)? Decides how staleness is measured.
EVENTS_HAVE_INGESTED_AT = """
SELECT count() FROM system.columns
WHERE database = currentDatabase() AND table = 'events' AND name = 'ingested_at'
"""

#: Events ingested after a build that fall before the end of the range: the build is stale.
EVENTS_INGESTED_SINCE = """
SELECT count() FROM events
WHERE ingested_at > toDateTime64({since:String}, 3, 'UTC')
  AND occurred_at < toDateTime64({end:String}, 3, 'UTC')
"""

#: Fallback without events.ingested_at: any worker batch written after the build.
BATCHES_INGESTED_SINCE = """
SELECT count() FROM agency_activity
WHERE ingested_at > toDateTime64({since:String}, 3, 'UTC')
"""

# --------------------------------------------------------------------------- transfers
#: Transfer lag by agency-type pair (sender type → receiver type).
#: received / p50 / p90 / max: transfers *received* in the range (the lag population, as in the
#: rollups); sent and returned: events in the range; pending_end: sent before the end of the
#: range and neither received nor returned by then (the rollups' transfers_pending_end).
TRANSFER_LAG_BY_PAIR = """
WITH
    toDateTime64({start:String}, 3, 'UTC') AS range_start,
    toDateTime64({end:String}, 3, 'UTC') AS range_end
SELECT
    splitByChar('-', toString(from_agency_id))[2] AS from_type,
    toString(to_agency_type) AS to_type,
    countIf(received_at >= range_start AND received_at < range_end) AS received,
    quantileExactInclusiveIf(0.5)(ifNull(lag_hours, 0),
        received_at >= range_start AND received_at < range_end) AS p50_hours,
    quantileExactInclusiveIf(0.9)(ifNull(lag_hours, 0),
        received_at >= range_start AND received_at < range_end) AS p90_hours,
    maxIf(ifNull(lag_hours, 0), received_at >= range_start AND received_at < range_end)
        AS max_hours,
    countIf(sent_at >= range_start AND sent_at < range_end) AS sent,
    countIf(returned_at >= range_start AND returned_at < range_end) AS returned,
    countIf(NOT ifNull(received_at < range_end, 0) AND NOT ifNull(returned_at < range_end, 0))
        AS pending_end
FROM transfers
WHERE sent_at < range_end AND $transfer_in_scope
GROUP BY from_type, to_type
HAVING received + sent + returned + pending_end > 0
ORDER BY received DESC, sent DESC, from_type, to_type
"""

#: The transfers still pending at the end of the range, oldest first, with their age in days.
SLOWEST_PENDING_TRANSFERS = """
WITH toDateTime64({end:String}, 3, 'UTC') AS range_end
SELECT case_id, transfer_id, from_agency_id, to_agency_id, reason, sent_at,
    dateDiff('second', sent_at, range_end) / 86400 AS age_days
FROM transfers
WHERE sent_at < range_end
  AND NOT ifNull(received_at < range_end, 0) AND NOT ifNull(returned_at < range_end, 0)
  AND $transfer_in_scope
ORDER BY sent_at, transfer_id
LIMIT {limit:UInt32}
"""

# --------------------------------------------------------------------------- backlog
#: Pending cases at the end of the range by age (end − opening). A case is pending when it was
#: opened before the end and its last resolution/reopening before the end (event time, ties
#: broken by event_id like the case state) is not a resolution. Ages in calendar months.
BACKLOG_AGING = """
WITH
    toDateTime64({end:String}, 3, 'UTC') AS range_end,
    per_case AS (
        SELECT case_id,
            minIf(occurred_at, event_type = 'case_opened') AS opened_at,
            countIf(event_type = 'case_opened') AS openings,
            argMinIf(province_code, occurred_at, event_type = 'case_opened') AS home,
            argMaxIf(event_type, (occurred_at, event_id),
                     event_type IN ('case_resolved', 'case_reopened')) AS last_disposition
        FROM events FINAL
        WHERE occurred_at < range_end
          AND event_type IN ('case_opened', 'case_resolved', 'case_reopened')
          AND event_id NOT IN (SELECT event_id FROM violating_events)
        GROUP BY case_id
    )
SELECT
    multiIf(opened_at > subtractMonths(range_end, 3), 0,
            opened_at > subtractMonths(range_end, 6), 1,
            opened_at > subtractMonths(range_end, 12), 2,
            opened_at > subtractMonths(range_end, 24), 3, 4) AS bucket,
    count() AS cases,
    max(dateDiff('second', opened_at, range_end)) / 86400 AS oldest_days
FROM per_case
WHERE openings > 0 AND last_disposition != 'case_resolved' AND $case_in_scope
GROUP BY bucket
ORDER BY bucket
"""

#: Labels of BACKLOG_AGING's bucket numbers.
BACKLOG_BUCKETS = ("< 3 months", "3–6 months", "6–12 months", "1–2 years", "> 2 years")

# --------------------------------------------------------------------------- appraisals
#: Appraisal lag by kind: completed in the range (count, p50, p90, max of requested →
#: completed), and the appraisals requested before the end of the range still not completed
#: then (count and age of the oldest).
APPRAISAL_LAG_BY_KIND = """
WITH
    toDateTime64({start:String}, 3, 'UTC') AS range_start,
    toDateTime64({end:String}, 3, 'UTC') AS range_end
SELECT
    toString(kind) AS kind,
    countIf(completed_at >= range_start AND completed_at < range_end) AS completed,
    quantileExactInclusiveIf(0.5)(ifNull(lag_hours, 0),
        completed_at >= range_start AND completed_at < range_end AND lag_hours IS NOT NULL)
        AS p50_hours,
    quantileExactInclusiveIf(0.9)(ifNull(lag_hours, 0),
        completed_at >= range_start AND completed_at < range_end AND lag_hours IS NOT NULL)
        AS p90_hours,
    maxIf(ifNull(lag_hours, 0),
        completed_at >= range_start AND completed_at < range_end AND lag_hours IS NOT NULL)
        AS max_hours,
    countIf(requested_at < range_end AND NOT ifNull(completed_at < range_end, 0))
        AS pending_end,
    maxIf(dateDiff('second', assumeNotNull(requested_at), range_end),
          requested_at < range_end AND NOT ifNull(completed_at < range_end, 0)) / 86400
        AS oldest_pending_days
FROM appraisals
WHERE ifNull(requested_at, completed_at) < range_end AND $appraisal_in_scope
GROUP BY kind
HAVING completed + pending_end > 0
ORDER BY completed DESC, kind
"""

# --------------------------------------------------------------------------- data quality
#: The rows of the latest data-quality run (flows/quality.py, table data_quality_checks):
#: platform-wide rows first, then agencies by value.
DATA_QUALITY_LATEST = """
SELECT check_name, scope, value, threshold, status, detail, checked_at
FROM data_quality_latest
ORDER BY check_name, scope != 'all', value DESC, scope
"""
