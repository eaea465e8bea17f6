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

# The flows of each period and scope, one family of sources at a time: each family is grouped by
# (period, scope) on its own and only the small grouped results are unioned and summed. (One
# union of every single contribution, 18 columns wide, grouped once with four exact quantiles,
# was most of the 3.6 s national yearly rollup at 10 M events: docs/benchmarks.md.) A family
# names only the figures it contributes; the others are 0, or NULL for the quantiles, each of
# which comes from exactly one family. {case_scope} etc. are scope expressions filled in per
# rollup (a constant for the nation, a province code otherwise).
_SUMMED = [
    "cases_opened",
    "cases_resolved",
    "cases_reopened",
    "transfers_sent",
    "transfers_received",
    "transfers_returned",
    "transfers_to_investigation",
    "transfer_pending_delta",
    "monitored_delta",
    "monitored_resolved_delta",
    "discipline_party_members",
    "discipline_party_orgs",
    "assets_identified_vnd",
    "assets_recovered_vnd",
]
_QUANTILES = [
    "transfer_lag_p50_hours",
    "transfer_lag_p90_hours",
    "transfer_lag_max_hours",
    "appraisal_lag_p50_hours",
    "appraisal_lag_p90_hours",
]


def _when(condition: str, figure: str) -> str:
    """A figure over the rows where it is defined; NULL when no row has it."""
    return f"if(count({condition}) > 0, {figure}, NULL)"


_LAG = "lag_hours"
_FAMILIES: list[tuple[str, str, str, dict[str, str]]] = [
    # (time deciding the period, scope, FROM … WHERE …, figures)
    (
        "e.occurred_at",
        "{case_scope}",
        """events_dedup AS e {late_home_e}
        WHERE e.event_type IN ('case_opened', 'case_resolved', 'case_reopened',
                               'discipline_imposed', 'assets_recovered')""",
        {
            "cases_opened": "countIf(e.event_type = 'case_opened')",
            "cases_resolved": "countIf(e.event_type = 'case_resolved')",
            "cases_reopened": "countIf(e.event_type = 'case_reopened')",
            # the payload figures, computed at insert (migration 0009, the same expressions)
            "discipline_party_members": "sum(e.discipline_party_members)",
            "discipline_party_orgs": "sum(e.discipline_party_orgs)",
            "assets_identified_vnd": "sum(e.assets_identified_vnd)",
            "assets_recovered_vnd": "sum(e.assets_recovered_vnd)",
        },
    ),
    (
        "sent_at",
        "{sender_scope}",
        "transfers_final",
        {
            "transfers_sent": "count()",
            "transfers_to_investigation": "countIf(to_agency_type = 'POLICE')",
            "transfer_pending_delta": "toInt64(count())",
        },
    ),
    (
        "received_at",
        "{receiver_scope}",
        "transfers_final WHERE received_at IS NOT NULL",
        {
            "transfers_received": "count()",
            "transfer_lag_p50_hours": _when(_LAG, f"quantileExactInclusive(0.5)({_LAG})"),
            "transfer_lag_p90_hours": _when(_LAG, f"quantileExactInclusive(0.9)({_LAG})"),
            "transfer_lag_max_hours": _when(_LAG, f"max({_LAG})"),
        },
    ),
    (
        "returned_at",
        "{sender_scope}",
        "transfers_final WHERE returned_at IS NOT NULL",
        {"transfers_returned": "count()"},
    ),
    (
        # a transfer stops pending at its first receipt or return
        "least(ifNull(received_at, returned_at), ifNull(returned_at, received_at))",
        "{sender_scope}",
        "transfers_final WHERE received_at IS NOT NULL OR returned_at IS NOT NULL",
        {"transfer_pending_delta": "-toInt64(count())"},
    ),
    (
        "m.t",
        "{monitored_scope}",
        "monitoring AS m {late_home_m}",
        {"monitored_delta": "count()"},
    ),
    (
        # a monitored case counts as resolved from max(resolution, monitoring) until a reopening
        "greatest(e.occurred_at, m.t)",
        "{monitored_scope}",
        """events_dedup AS e
        INNER JOIN monitoring AS m ON m.case_id = e.case_id
        {late_home_m}
        WHERE e.event_type IN ('case_resolved', 'case_reopened')""",
        {
            "monitored_resolved_delta": "sum(if(e.event_type = 'case_resolved', 1, -1))",
        },
    ),
    (
        "completed_at",
        "{appraisal_scope}",
        "appraisals_final WHERE completed_at IS NOT NULL",
        {
            "appraisal_lag_p50_hours": _when(_LAG, f"quantileExactInclusive(0.5)({_LAG})"),
            "appraisal_lag_p90_hours": _when(_LAG, f"quantileExactInclusive(0.9)({_LAG})"),
        },
    ),
]


def _family_sql(time: str, scope: str, source: str, figures: dict[str, str]) -> str:
    unknown = set(figures) - set(_SUMMED) - set(_QUANTILES)
    if unknown:
        raise ValueError(f"rollup family figures not in the flows: {sorted(unknown)}")
    columns = [figures.get(name, "0") + f" AS {name}" for name in _SUMMED] + [
        figures.get(name, "CAST(NULL AS Nullable(Float64))") + f" AS {name}" for name in _QUANTILES
    ]
    return (
        f"SELECT {{period_fn}}({time}, {{{{tz:String}}}}) AS period_start, {scope} AS scope,\n"
        f"        " + ",\n        ".join(columns) + "\n"
        f"    FROM {source}\n"
        f"    GROUP BY period_start, scope"
    )


_FLOWS = f"""
    SELECT period_start, scope,
        {", ".join(f"sum({name}) AS {name}" for name in _SUMMED)},
        {", ".join(f"max({name}) AS {name}" for name in _QUANTILES)}
    FROM (
    {(chr(10) + "    UNION ALL" + chr(10) + "    ").join(_family_sql(*f) for f in _FAMILIES)}
    )
    GROUP BY period_start, scope
"""

_FIGURES = ", ".join(_SUMMED + _QUANTILES)
_UNPACKED = ", ".join(
    f"tupleElement(row, {i}) AS {name}" for i, name in enumerate(_SUMMED + _QUANTILES, start=1)
)

_ROLLUP = """
WITH
    -- FINAL within each yearly partition only (SETTINGS below): a duplicate of an event has
    -- its event time, hence its partition; merging across partitions cost half the query.
    -- `events_by_type` is `events` ordered by type (migration 0010): each family reads only
    -- the types it needs. Events that break an authority rule count for nothing
    -- (processor/authority.py).
    events_dedup AS (
        SELECT * FROM events_by_type FINAL
        WHERE event_id NOT IN (SELECT event_id FROM violating_events)
    ),
    transfers_final AS (SELECT * FROM transfers),
    appraisals_final AS (SELECT * FROM appraisals),
    -- A case's home province is on each of its event rows (migration 0011), except for the
    -- cases listed in `cases_rehomed` (an opening arrived after some of their rows were
    -- written): theirs comes from `cases`. '' when the case has no admitted opening.
    late_home AS (
        SELECT case_id, province_code AS home FROM cases
        WHERE case_id IN (SELECT case_id FROM cases_rehomed)
    ),
    monitoring AS (
        -- a case's monitoring rows written before and after its opening arrived: the home any
        -- of them carries (every home written to an unlisted case's rows is its home now)
        SELECT case_id, min(occurred_at) AS t, any(province_code) AS agency_province,
            anyIf(home_province_code, home_province_code != '') AS written_home
        FROM events_dedup WHERE event_type = 'monitoring_assigned' GROUP BY case_id
    ),
    flows AS ({flows}),
    -- Every scope gets every period of the grid, zero where it had no flow. `flows` is read
    -- once: each scope's periods and figures as arrays, looked up per grid period (index 0, a
    -- period without flows, gives the figures' defaults: 0, and NULL for the quantiles). A
    -- CTE is inlined where it is named, and naming `flows` twice (the scopes, then a join
    -- with the grid) computed every family twice: a provincial yearly rollup at 10 M events
    -- took 2.2 s, 1.27 s with `flows` read once (in process).
    per_scope AS (
        SELECT scope, groupArray(period_start) AS periods,
            groupArray(tuple({figures})) AS figures
        FROM flows GROUP BY scope
    ),
    filled AS (
        SELECT period_start, scope, figures[indexOf(periods, period_start)] AS row,
            {unpacked}
        FROM per_scope ARRAY JOIN {{grid:Array(Date)}} AS period_start
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


def _home(written: str, fallback: str) -> str:
    """The province a case's flow counts in: its home, else (no admitted opening) the province
    of the agency whose event it is. The home written with the row, unless the case is in
    `late_home` (an unmatched LEFT JOIN leaves `c.case_id` empty, and no case id is empty)."""
    return (
        f"if(c.case_id != '', if(c.home != '', c.home, {fallback}), "
        f"if({written} != '', {written}, {fallback}))"
    )


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
            "case_scope": _mapped(_home("e.home_province_code", "e.province_code"), geography),
            "sender_scope": _mapped("from_province_code", geography),
            "receiver_scope": _mapped("to_province_code", geography),
            "monitored_scope": _mapped(_home("m.written_home", "m.agency_province"), geography),
            "appraisal_scope": _mapped("splitByChar('-', agency_id)[1]", geography),
        }
    # perf: the nation needs no case's home province, so no join at all; the provinces join
    # only the homes of the cases in `cases_rehomed` (see _home).
    joins = (
        {"late_home_e": "", "late_home_m": ""}
        if national
        else {
            "late_home_e": "LEFT JOIN late_home AS c ON c.case_id = e.case_id",
            "late_home_m": "LEFT JOIN late_home AS c ON c.case_id = m.case_id",
        }
    )
    flows = _FLOWS.format(**scopes, **joins, period_fn=period_fn)
    return _ROLLUP.format(flows=flows, months=months, figures=_FIGURES, unpacked=_UNPACKED)


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
