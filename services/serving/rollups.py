"""Provincial and national rollups: the metrics contract of BRIEF.md, in one SQL statement.

Definitions (period P = [period_start, period_end), boundaries in the reporting time zone,
Asia/Ho_Chi_Minh by default, because agencies count days in Vietnam time):

* cases_opened / cases_resolved: `case_opened` / `case_resolved` events whose event time is in P.
  A case resolved, reopened and resolved again counts as resolved twice (two dispositions).
* pending_end: cases opened before the end of P and not resolved at that moment
  (opened − resolved + reopened, cumulated over all history up to the end of P).
* clearance_rate (CEPEJ) = cases_resolved ÷ cases_opened ("incoming") in P; NULL without incoming.
* disposition_time_days (CEPEJ) = days(P) × pending_end ÷ cases_resolved, i.e. 365 × … for a
  year, scaled to the period length; NULL without resolutions.
* transfers_sent / transfers_to_investigation / transfers_returned: `case_transferred` events in P
  (to_investigation = receiver is a POLICE agency) and returns in P, attributed to the sender.
* transfers_received and the lag figures: transfers whose receipt falls in P, attributed to the
  receiver (the lag is the receiver's delay). Lag = received_at − sent_at in hours (event time).
  Percentiles are linear-interpolation quantiles (R-7, numpy's default), i.e. ClickHouse's
  quantileExactInclusive. transfers_pending_end: sent before the end of P, neither received nor
  returned by then (attributed to the sender).
* monitored_cases: cases with a `monitoring_assigned` up to the end of P. monitored_resolved: those
  of them resolved at the end of P. monitored_resolution_rate = monitored_resolved ÷ monitored_cases.
* discipline_party_members / _orgs: sum of `count` of `discipline_imposed` in P by target.
* assets_identified_vnd / assets_recovered_vnd: sums of `assets_recovered` in P;
  asset_recovery_rate = recovered ÷ identified.
* appraisal lag p50/p90: appraisals completed in P, requested → completed, in hours.

Case metrics (opened, resolved, pending, monitored, discipline, assets) belong to the province of
the agency that opened the case. Geography: `historical` keeps the province code as it was;
`current` maps it through the reference data's successors to today's provinces (2025 merger).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

PERIOD_KINDS = {
    "month": ("toStartOfMonth", 1),
    "quarter": ("toStartOfQuarter", 3),
    "year": ("toStartOfYear", 12),
}
GEOGRAPHIES = ("historical", "current")
REPORTING_TZ = "Asia/Ho_Chi_Minh"

METRIC_COLUMNS = [
    "cases_opened",
    "cases_resolved",
    "pending_end",
    "clearance_rate",
    "disposition_time_days",
    "transfers_sent",
    "transfers_received",
    "transfers_returned",
    "transfers_to_investigation",
    "transfer_lag_p50_hours",
    "transfer_lag_p90_hours",
    "transfer_lag_max_hours",
    "transfers_pending_end",
    "monitored_cases",
    "monitored_resolved",
    "monitored_resolution_rate",
    "discipline_party_members",
    "discipline_party_orgs",
    "assets_identified_vnd",
    "assets_recovered_vnd",
    "asset_recovery_rate",
    "appraisal_lag_p50_hours",
    "appraisal_lag_p90_hours",
]

# One row per contribution of an event (or a paired transfer/appraisal) to a metric, with the
# time that decides its period and the scope it belongs to. {case_scope} etc. are scope
# expressions filled in per rollup (a constant for the nation, a province code otherwise).
_CONTRIBUTIONS = """
    SELECT e.occurred_at AS t, {case_scope} AS scope,
        e.event_type = 'case_opened' AS opened,
        e.event_type = 'case_resolved' AS resolved,
        e.event_type = 'case_reopened' AS reopened,
        0 AS sent, 0 AS received, 0 AS returned, 0 AS to_investigation, 0 AS transfer_pending,
        0 AS monitored, 0 AS monitored_resolved,
        -- the payload figures, computed at insert (migration 0009, the same expressions)
        e.discipline_party_members AS disc_members, e.discipline_party_orgs AS disc_orgs,
        e.assets_identified_vnd AS identified, e.assets_recovered_vnd AS recovered,
        CAST(NULL AS Nullable(Float64)) AS lag, CAST(NULL AS Nullable(Float64)) AS appraisal_lag
    FROM events_dedup AS e {case_home_e}
    WHERE e.event_type IN ('case_opened', 'case_resolved', 'case_reopened',
                           'discipline_imposed', 'assets_recovered')
  UNION ALL
    SELECT sent_at, {sender_scope}, 0, 0, 0, 1, 0, 0, to_agency_type = 'POLICE', 1, 0, 0, 0, 0, 0,
        0, NULL, NULL
    FROM transfers_final
  UNION ALL
    SELECT received_at, {receiver_scope}, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, lag_hours,
        NULL
    FROM transfers_final WHERE received_at IS NOT NULL
  UNION ALL
    SELECT returned_at, {sender_scope}, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL
    FROM transfers_final WHERE returned_at IS NOT NULL
  UNION ALL
    -- a transfer stops pending at its first receipt or return
    SELECT least(ifNull(received_at, returned_at), ifNull(returned_at, received_at)),
        {sender_scope}, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, NULL, NULL
    FROM transfers_final WHERE received_at IS NOT NULL OR returned_at IS NOT NULL
  UNION ALL
    SELECT m.t, {monitored_scope}, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, NULL, NULL
    FROM monitoring AS m {case_home_m}
  UNION ALL
    -- a monitored case counts as resolved from max(resolution, monitoring) until a reopening
    SELECT greatest(e.occurred_at, m.t), {monitored_scope}, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        if(e.event_type = 'case_resolved', 1, -1), 0, 0, 0, 0, NULL, NULL
    FROM events_dedup AS e
    INNER JOIN monitoring AS m ON m.case_id = e.case_id
    {case_home_e}
    WHERE e.event_type IN ('case_resolved', 'case_reopened')
  UNION ALL
    SELECT completed_at, {appraisal_scope}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL,
        lag_hours
    FROM appraisals_final WHERE completed_at IS NOT NULL
"""

_ROLLUP = """
WITH
    -- FINAL within each yearly partition only (SETTINGS below): a duplicate of an event has
    -- its event time, hence its partition; merging across partitions cost half the query.
    -- Events that break an authority rule count for nothing (processor/authority.py).
    events_dedup AS (
        SELECT *, discipline_party_members, discipline_party_orgs, assets_identified_vnd,
            assets_recovered_vnd
        FROM events FINAL WHERE event_id NOT IN (SELECT event_id FROM violating_events)
    ),
    transfers_final AS (SELECT * FROM transfers),
    appraisals_final AS (SELECT * FROM appraisals),
    case_home AS (SELECT case_id, province_code AS home FROM cases WHERE province_code != ''),
    monitoring AS (
        SELECT case_id, min(occurred_at) AS t, any(province_code) AS agency_province
        FROM events_dedup WHERE event_type = 'monitoring_assigned' GROUP BY case_id
    ),
    contributions AS ({contributions}),
    flows AS (
        SELECT {period_fn}(t, {{tz:String}}) AS period_start, scope,
            sum(opened) AS cases_opened, sum(resolved) AS cases_resolved,
            sum(reopened) AS cases_reopened, sum(sent) AS transfers_sent,
            sum(received) AS transfers_received, sum(returned) AS transfers_returned,
            sum(to_investigation) AS transfers_to_investigation,
            sum(transfer_pending) AS transfer_pending_delta,
            sum(monitored) AS monitored_delta, sum(monitored_resolved) AS monitored_resolved_delta,
            sum(disc_members) AS discipline_party_members,
            sum(disc_orgs) AS discipline_party_orgs,
            sum(identified) AS assets_identified_vnd, sum(recovered) AS assets_recovered_vnd,
            if(count(lag) > 0, quantileExactInclusive(0.5)(lag), NULL) AS transfer_lag_p50_hours,
            if(count(lag) > 0, quantileExactInclusive(0.9)(lag), NULL) AS transfer_lag_p90_hours,
            if(count(lag) > 0, max(lag), NULL) AS transfer_lag_max_hours,
            if(count(appraisal_lag) > 0, quantileExactInclusive(0.5)(appraisal_lag), NULL)
                AS appraisal_lag_p50_hours,
            if(count(appraisal_lag) > 0, quantileExactInclusive(0.9)(appraisal_lag), NULL)
                AS appraisal_lag_p90_hours
        FROM contributions
        WHERE t IS NOT NULL
        GROUP BY period_start, scope
    ),
    grid AS (SELECT arrayJoin({{grid:Array(Date)}}) AS period_start),
    scopes AS (SELECT DISTINCT scope FROM flows),
    filled AS (
        SELECT g.period_start AS period_start, s.scope AS scope, f.* EXCEPT (period_start, scope)
        FROM grid AS g CROSS JOIN scopes AS s
        LEFT JOIN flows AS f ON f.period_start = g.period_start AND f.scope = s.scope
    ),
    stocks AS (
        SELECT *,
            addMonths(period_start, {months}) AS period_end,
            sum(cases_opened - cases_resolved + cases_reopened) OVER w AS pending_end,
            sum(transfer_pending_delta) OVER w AS transfers_pending_end,
            sum(monitored_delta) OVER w AS monitored_cases,
            sum(monitored_resolved_delta) OVER w AS monitored_resolved
        FROM filled
        WINDOW w AS (PARTITION BY scope ORDER BY period_start
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    )
SELECT
    {{period_kind:String}} AS period_kind, period_start, period_end, scope,
    cases_opened, cases_resolved, pending_end,
    if(cases_opened > 0, cases_resolved / cases_opened, NULL) AS clearance_rate,
    if(cases_resolved > 0, dateDiff('day', period_start, period_end) * pending_end / cases_resolved,
       NULL) AS disposition_time_days,
    transfers_sent, transfers_received, transfers_returned, transfers_to_investigation,
    transfer_lag_p50_hours, transfer_lag_p90_hours, transfer_lag_max_hours, transfers_pending_end,
    monitored_cases, monitored_resolved,
    if(monitored_cases > 0, monitored_resolved / monitored_cases, NULL)
        AS monitored_resolution_rate,
    discipline_party_members, discipline_party_orgs, assets_identified_vnd, assets_recovered_vnd,
    if(assets_identified_vnd > 0, assets_recovered_vnd / assets_identified_vnd, NULL)
        AS asset_recovery_rate,
    appraisal_lag_p50_hours, appraisal_lag_p90_hours
FROM stocks
WHERE period_start >= {{first:Date}} AND period_start <= {{last:Date}}
ORDER BY period_start, scope
SETTINGS do_not_merge_across_partitions_select_final = 1
"""


def _mapped(expr: str, geography: str) -> str:
    if geography == "current":
        return f"transform({expr}, {{map_from:Array(String)}}, {{map_to:Array(String)}}, {expr})"
    return expr


def rollup_sql(period_kind: str, *, national: bool, geography: str = "historical") -> str:
    """The SELECT producing rollup rows (with a `scope` column: '' nationally, else a province)."""
    if period_kind not in PERIOD_KINDS:
        raise ValueError(f"period_kind must be one of {sorted(PERIOD_KINDS)}, not {period_kind!r}")
    if geography not in GEOGRAPHIES:
        raise ValueError(f"geography must be one of {GEOGRAPHIES}, not {geography!r}")
    period_fn, months = PERIOD_KINDS[period_kind]
    if national:
        scopes = dict.fromkeys(
            ["case_scope", "sender_scope", "receiver_scope", "monitored_scope", "appraisal_scope"],
            "''",
        )
    else:
        scopes = {
            "case_scope": _mapped("if(c.home != '', c.home, e.province_code)", geography),
            "sender_scope": _mapped("from_province_code", geography),
            "receiver_scope": _mapped("to_province_code", geography),
            "monitored_scope": _mapped("if(c.home != '', c.home, m.agency_province)", geography),
            "appraisal_scope": _mapped("splitByChar('-', agency_id)[1]", geography),
        }
    # perf: the nation needs no case's home province, so no join with `cases`
    # (8.8 s → 5.3 s of the national yearly rollup at 10 M events, docs/benchmarks.md).
    joins = (
        {"case_home_e": "", "case_home_m": ""}
        if national
        else {
            "case_home_e": "LEFT JOIN case_home AS c ON c.case_id = e.case_id",
            "case_home_m": "LEFT JOIN case_home AS c ON c.case_id = m.case_id",
        }
    )
    contributions = _CONTRIBUTIONS.format(**scopes, **joins)
    return _ROLLUP.format(contributions=contributions, period_fn=period_fn, months=months)


def period_start_of(day: date, period_kind: str) -> date:
    months = PERIOD_KINDS[period_kind][1]
    month = ((day.month - 1) // months) * months + 1
    return date(day.year, month, 1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_grid(first: date, last: date, period_kind: str) -> list[date]:
    """Every period start from the period holding `first` to the one holding `last`."""
    step = PERIOD_KINDS[period_kind][1]
    current, end = period_start_of(first, period_kind), period_start_of(last, period_kind)
    grid = []
    while current <= end:
        grid.append(current)
        current = add_months(current, step)
    return grid


@dataclass(frozen=True)
class RollupRequest:
    period_kind: str
    first: date  # first period start (inclusive)
    last: date  # last period start (inclusive)
    national: bool
    geography: str = "historical"
