"""The casestream report: national or provincial figures for a range of periods, as Markdown and
self-contained HTML (inline CSS and SVG charts, no network), plus a Prefect markdown artifact.

    from flows.reports import build_report
    html_path = build_report("national", "year", date(2021, 1, 1), date(2025, 12, 31))

Sections: headline figures of the last period (vs the one before), the rollup table by period,
a provincial comparison, transfer lag by agency pair, backlog aging, the slowest pending
transfers, appraisal lag and data quality. Headline, rollup table and provincial comparison read
`rollup_national` / `rollup_province` (built first when missing or stale, by calling
`flows.rollups.build_rollups`); the distributions read the fact tables with the SQL in
`services/serving/report_queries.py`; the data-quality section reads the latest
`flows.quality.check_data_quality` run (run first when none is younger than a day).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from services.contracts import reference as ref
from services.serving import charts
from services.serving import report_queries as q
from services.serving.rollups import (
    GEOGRAPHIES,
    PERIOD_KINDS,
    REPORTING_TZ,
    add_months,
    period_grid,
    period_start_of,
)
from services.settings import Settings

NATIONAL = "national"
QUALITY_MAX_AGE = timedelta(hours=24)
TOP_PROVINCES = 15
SLOWEST_TRANSFERS = 10

# --------------------------------------------------------------------------- document model


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None  # right-aligned columns


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, table: Table) -> Section:
        self.blocks.append(("table", table))
        return self

    def chart(self, svg: str) -> Section:
        self.blocks.append(("chart", svg))
        return self

    def define(self, text: str) -> Section:
        self.blocks.append(("def", text))
        return self


@dataclass
class Report:
    title: str
    subtitle: list[str]
    sections: list[Section]


# --------------------------------------------------------------------------- formatting


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_int(value: Any) -> str:
    return "–" if _missing(value) else f"{int(value):,}"


def fmt_pct(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.1f}%"


def fmt_num(value: Any, digits: int = 1) -> str:
    return "–" if _missing(value) else f"{float(value):,.{digits}f}"


def fmt_days(hours: Any) -> str:
    """Hours → days with one decimal."""
    return "–" if _missing(hours) else f"{float(hours) / 24:,.1f}"


def fmt_bn_vnd(value: Any) -> str:
    """VND in billions (tỷ đồng), one decimal."""
    return "–" if _missing(value) else f"{float(value) / 1e9:,.1f}"


def fmt_time(value: Any) -> str:
    if _missing(value):
        return "never"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def period_label(start: date, period_kind: str) -> str:
    if period_kind == "year":
        return f"{start.year}"
    if period_kind == "quarter":
        return f"{start.year} Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


def province_label(code: str, at: date | None = None) -> str:
    row = ref.province(code, at)
    if row is None:
        rows = ref.reference().province_rows(code)
        row = rows[-1] if rows else None
    return f"{row.name} ({code})" if row else code


def _days(value: Any) -> float | None:
    return None if _missing(value) else float(value) / 24


# --------------------------------------------------------------------------- rendering

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;
border-bottom:2px solid #3b6ea5;padding-bottom:.2rem}
.sub{color:#555;margin:.1rem 0}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d6d6d6;padding:.25rem .55rem}th{background:#eef3f8;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}.def{color:#555;font-size:.85rem;margin:.3rem 0}
.chart{margin:.8rem 0;overflow-x:auto}td.warn{background:#fde8d0!important;font-weight:600}
td.ok{color:#2f7d32}.tbl{overflow-x:auto}td:first-child{white-space:nowrap}footer{margin-top:3rem;color:#777;font-size:.8rem}
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    out.extend(f"_{line}_  " for line in report.subtitle)
    out.append("")
    for section in report.sections:
        out += [f"## {section.title}", ""]
        for kind, block in section.blocks:
            if kind == "p":
                out += [block, ""]
            elif kind == "def":
                out += [f"> {block}", ""]
            elif kind == "table":
                numeric = block.numeric or [False] * len(block.headers)
                out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
                for row in block.rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
                out.append("")
            # charts are HTML-only (SVG)
    return "\n".join(out).rstrip() + "\n"


def to_html(report: Report) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    parts.extend(f'<p class="sub">{esc(line)}</p>' for line in report.subtitle)
    for section in report.sections:
        parts.append(f"<section><h2>{esc(section.title)}</h2>")
        for kind, block in section.blocks:
            if kind == "p":
                parts.append(f"<p>{esc(block)}</p>")
            elif kind == "def":
                parts.append(f'<p class="def">{esc(block)}</p>')
            elif kind == "chart":
                parts.append(f'<div class="chart">{block}</div>')
            elif kind == "table":
                numeric = block.numeric or [False] * len(block.headers)
                head = "".join(
                    ('<th class="n">' if n else "<th>") + f"{esc(h)}</th>"
                    for h, n in zip(block.headers, numeric, strict=True)
                )
                parts.append(f'<div class="tbl"><table><thead><tr>{head}</tr></thead><tbody>')
                for row in block.rows:
                    cells = []
                    for cell, n in zip(row, numeric, strict=True):
                        cls = (
                            "n"
                            if n
                            else ("warn" if cell == "warn" else "ok" if cell == "ok" else "")
                        )
                        attr = f' class="{cls}"' if cls else ""
                        cells.append(f"<td{attr}>{esc(str(cell))}</td>")
                    parts.append("<tr>" + "".join(cells) + "</tr>")
                parts.append("</tbody></table></div>")
        parts.append("</section>")
    parts.append(
        "<footer>Generated by casestream (flows/reports.py). Event time decides the "
        "period; periods are counted in Vietnam time (Asia/Ho_Chi_Minh).</footer>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- data access


@dataclass(frozen=True)
class Range:
    scope: str
    period_kind: str
    geography: str
    grid: list[date]  # period starts of the range

    @property
    def national(self) -> bool:
        return self.scope == NATIONAL

    @property
    def first(self) -> date:
        return self.grid[0]

    @property
    def last(self) -> date:
        return self.grid[-1]

    @property
    def end_date(self) -> date:
        """First day after the range (exclusive end)."""
        return add_months(self.last, PERIOD_KINDS[self.period_kind][1])

    @staticmethod
    def _utc(day: date) -> str:
        local = datetime.combine(day, time(0), tzinfo=ZoneInfo(REPORTING_TZ))
        return local.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.000")

    @property
    def start_utc(self) -> str:
        return self._utc(self.first)

    @property
    def end_utc(self) -> str:
        return self._utc(self.end_date)

    def params(self) -> dict[str, Any]:
        if self.geography == "current":
            today = date.today()
            codes = list(dict.fromkeys(p.code for p in ref.provinces()))
            mapping = [(c, ref.current_province(c, today)) for c in codes]
            map_from, map_to = [a for a, _ in mapping], [b for _, b in mapping]
        else:
            map_from, map_to = [], []
        return {
            "national": 1 if self.national else 0,
            "scope": "" if self.national else self.scope,
            "map_from": map_from,
            "map_to": map_to,
            "start": self.start_utc,
            "end": self.end_utc,
            "first": self.first,
            "last": self.last,
            "period_kind": self.period_kind,
            "geography": self.geography,
        }


def _records(result) -> list[dict[str, Any]]:
    names = result.column_names
    return [dict(zip(names, row, strict=True)) for row in result.result_rows]


def _query(client, sql: str, params: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return _records(client.query(q.render(sql), parameters={**params, **extra}))


def _scalar(client, sql: str, params: dict[str, Any] | None = None) -> Any:
    """First value of a one-row query, typed; None for an empty result or a 1970 timestamp."""
    rows = client.query(sql, parameters=params or {}).result_rows
    value = rows[0][0] if rows else None
    if isinstance(value, datetime) and value.year < 1971:
        return None
    return value


def _rollup_flows(geography: str) -> list[str]:
    return ["national", f"province:{geography}"]


def rollup_freshness(client, rng: Range) -> dict[str, Any]:
    """Per rollup flow: the latest build covering the range and whether events came in since."""
    has_ingested_at = int(client.command(q.EVENTS_HAVE_INGESTED_AT) or 0) > 0
    out: dict[str, Any] = {"missing": False, "stale": False, "builds": {}}
    for name in _rollup_flows(rng.geography):
        rows = client.query(
            q.rollup_build_sql(rng.period_kind),
            parameters={
                "flow": name,
                "period_kind": rng.period_kind,
                "first": rng.first,
                "last": rng.last,
            },
        ).result_rows
        if not rows:
            out["missing"] = True
            out["builds"][name] = None
            continue
        finished_at = rows[0][0]
        out["builds"][name] = finished_at
        since = finished_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
        if has_ingested_at:
            newer = client.command(
                q.EVENTS_INGESTED_SINCE, parameters={"since": since, "end": rng.end_utc}
            )
        else:
            newer = client.command(q.BATCHES_INGESTED_SINCE, parameters={"since": since})
        if int(newer or 0) > 0:
            out["stale"] = True
    return out


@task
def collect(rng: Range) -> dict[str, Any]:
    """Every figure the report shows, from ClickHouse."""
    client = Settings.from_env().clickhouse_client()
    params = rng.params()
    months = PERIOD_KINDS[rng.period_kind][1]
    before = {"first": add_months(rng.first, -months)}
    rollup_sql = q.ROLLUP_NATIONAL if rng.national else q.ROLLUP_PROVINCE
    data: dict[str, Any] = {
        "rollups": _query(client, rollup_sql, params, **before),
        "provinces": _query(client, q.PROVINCE_COMPARISON, params),
        "lag_pairs": _query(client, q.TRANSFER_LAG_BY_PAIR, params),
        "backlog": _query(client, q.BACKLOG_AGING, params),
        "slowest": _query(client, q.SLOWEST_PENDING_TRANSFERS, params, limit=SLOWEST_TRANSFERS),
        "appraisals": _query(client, q.APPRAISAL_LAG_BY_KIND, params),
        "quality": _records(client.query(q.DATA_QUALITY_LATEST)),
        "last_built": {
            name: _scalar(
                client, q.ROLLUP_LAST_BUILT, {"flow": name, "period_kind": rng.period_kind}
            )
            for name in _rollup_flows(rng.geography)
        },
    }
    return data


# --------------------------------------------------------------------------- sections


def _headline(rng: Range, rollups: list[dict[str, Any]], scope_name: str) -> Section:
    by_start = {r["period_start"]: r for r in rollups}
    months = PERIOD_KINDS[rng.period_kind][1]
    cur = by_start.get(rng.last)
    prev = by_start.get(add_months(rng.last, -months))
    label = period_label(rng.last, rng.period_kind)
    section = Section(f"Headline figures, {label}")
    if cur is None:
        section.p(f"No rollup row for {scope_name} in {label}: no events recorded yet.")
        return section
    section.p(
        f"{scope_name}, {label}: {fmt_int(cur['cases_opened'])} cases opened, "
        f"{fmt_int(cur['cases_resolved'])} resolved (clearance rate "
        f"{fmt_pct(cur['clearance_rate'])}), {fmt_int(cur['pending_end'])} pending at the end of "
        f"the period. {fmt_int(cur['monitored_cases'])} monitored, "
        f"{fmt_int(cur['monitored_resolved'])} completed. "
        f"{fmt_int(cur['transfers_to_investigation'])} transfers to investigation."
    )
    metrics = [
        ("Cases opened", "cases_opened", fmt_int),
        ("Cases resolved", "cases_resolved", fmt_int),
        ("Cases pending at end", "pending_end", fmt_int),
        ("Clearance rate", "clearance_rate", fmt_pct),
        ("Disposition time (days)", "disposition_time_days", fmt_num),
        ("Transfers sent", "transfers_sent", fmt_int),
        ("Transfers to investigation", "transfers_to_investigation", fmt_int),
        ("Transfers received", "transfers_received", fmt_int),
        ("Transfer lag p50 (days)", "transfer_lag_p50_hours", fmt_days),
        ("Transfer lag p90 (days)", "transfer_lag_p90_hours", fmt_days),
        ("Transfers pending at end", "transfers_pending_end", fmt_int),
        ("Monitored cases", "monitored_cases", fmt_int),
        ("Monitored cases resolved", "monitored_resolved", fmt_int),
        ("Monitored resolution rate", "monitored_resolution_rate", fmt_pct),
        ("Party members disciplined", "discipline_party_members", fmt_int),
        ("Party organizations disciplined", "discipline_party_orgs", fmt_int),
        ("Assets identified (bn VND)", "assets_identified_vnd", fmt_bn_vnd),
        ("Assets recovered (bn VND)", "assets_recovered_vnd", fmt_bn_vnd),
        ("Asset recovery rate", "asset_recovery_rate", fmt_pct),
        ("Appraisal lag p50 (days)", "appraisal_lag_p50_hours", fmt_days),
    ]
    prev_label = period_label(add_months(rng.last, -months), rng.period_kind)
    section.table(
        Table(
            ["Metric", label, prev_label],
            [[name, fmt(cur[key]), fmt(prev[key]) if prev else "–"] for name, key, fmt in metrics],
            [False, True, True],
        )
    )
    section.define(
        "Clearance rate = resolved ÷ opened in the period. Disposition time = days in the period "
        "× pending at end ÷ resolved. Monitored = cases under steering-committee monitoring up "
        "to the end of the period; completed = those resolved by then. Transfers to "
        "investigation = transfers whose receiver is a police investigation agency. Lags: "
        "transfers received in the period, sent → received, event time."
    )
    return section


def _rollup_table(rng: Range, rollups: list[dict[str, Any]]) -> Section:
    rows = [r for r in rollups if rng.first <= r["period_start"] <= rng.last]
    section = Section("Figures by period")
    if not rows:
        section.p("No rollup rows for this range.")
        return section
    label = lambda r: period_label(r["period_start"], rng.period_kind)  # noqa: E731
    section.table(
        Table(
            [
                "Period",
                "Opened",
                "Resolved",
                "Pending at end",
                "Clearance",
                "Disposition (days)",
                "Monitored",
                "Monitored completed",
            ],
            [
                [
                    label(r),
                    fmt_int(r["cases_opened"]),
                    fmt_int(r["cases_resolved"]),
                    fmt_int(r["pending_end"]),
                    fmt_pct(r["clearance_rate"]),
                    fmt_num(r["disposition_time_days"]),
                    fmt_int(r["monitored_cases"]),
                    fmt_int(r["monitored_resolved"]),
                ]
                for r in rows
            ],
            [False] + [True] * 7,
        )
    )
    section.table(
        Table(
            [
                "Period",
                "Transfers sent",
                "To investigation",
                "Received",
                "Returned",
                "Lag p50 (days)",
                "Lag p90 (days)",
                "Pending at end",
            ],
            [
                [
                    label(r),
                    fmt_int(r["transfers_sent"]),
                    fmt_int(r["transfers_to_investigation"]),
                    fmt_int(r["transfers_received"]),
                    fmt_int(r["transfers_returned"]),
                    fmt_days(r["transfer_lag_p50_hours"]),
                    fmt_days(r["transfer_lag_p90_hours"]),
                    fmt_int(r["transfers_pending_end"]),
                ]
                for r in rows
            ],
            [False] + [True] * 7,
        )
    )
    section.table(
        Table(
            [
                "Period",
                "Party members disciplined",
                "Party orgs disciplined",
                "Assets identified (bn VND)",
                "Assets recovered (bn VND)",
                "Recovery rate",
                "Appraisal lag p50 (days)",
            ],
            [
                [
                    label(r),
                    fmt_int(r["discipline_party_members"]),
                    fmt_int(r["discipline_party_orgs"]),
                    fmt_bn_vnd(r["assets_identified_vnd"]),
                    fmt_bn_vnd(r["assets_recovered_vnd"]),
                    fmt_pct(r["asset_recovery_rate"]),
                    fmt_days(r["appraisal_lag_p50_hours"]),
                ]
                for r in rows
            ],
            [False] + [True] * 6,
        )
    )
    section.chart(
        charts.bar_chart(
            [(label(r), r["pending_end"]) for r in rows],
            title="Cases pending at the end of each period",
            unit="cases",
        )
    )
    section.define(
        "From the rollups (rollup_national / rollup_province). Opened and resolved count events "
        "in the period; pending and monitored are stocks at the end of the period. Transfer "
        "figures: sent/returned by the sender's period, received and lags by the receipt's."
    )
    return section


def _provinces(rng: Range, provinces: list[dict[str, Any]]) -> Section:
    label_period = period_label(rng.last, rng.period_kind)
    section = Section(f"Provincial comparison, {label_period}")
    if not provinces:
        section.p("No provincial rollup rows for this period.")
        return section
    name_at = date.today() if rng.geography == "current" else rng.end_date - timedelta(days=1)
    active = [p for p in provinces if p["pending_end"] or p["cases_opened"] or p["cases_resolved"]]
    top = active[:TOP_PROVINCES]
    if not rng.national and all(p["province_code"] != rng.scope for p in top):
        top = top + [p for p in provinces if p["province_code"] == rng.scope]
    rank = {p["province_code"]: i + 1 for i, p in enumerate(provinces)}
    names = {p["province_code"]: province_label(p["province_code"], name_at) for p in top}
    if not rng.national:
        if rng.scope in rank:
            section.p(
                f"{province_label(rng.scope, name_at)} ranks {rank[rng.scope]} of "
                f"{len(provinces)} provinces by cases pending at the end of "
                f"{label_period}."
            )
        else:
            section.p(f"{province_label(rng.scope, name_at)} has no rollup row for {label_period}.")
    section.p(
        f"Top {len(top)} of {len(active)} provinces with cases (opened, resolved or "
        f"pending) by cases pending at the end of {label_period} ({rng.geography} "
        "geography)."
    )
    section.table(
        Table(
            [
                "#",
                "Province",
                "Pending at end",
                "Opened",
                "Resolved",
                "Clearance",
                "Disposition (days)",
                "To investigation",
                "Monitored (completed)",
            ],
            [
                [
                    str(rank[p["province_code"]]),
                    names[p["province_code"]],
                    fmt_int(p["pending_end"]),
                    fmt_int(p["cases_opened"]),
                    fmt_int(p["cases_resolved"]),
                    fmt_pct(p["clearance_rate"]),
                    fmt_num(p["disposition_time_days"]),
                    fmt_int(p["transfers_to_investigation"]),
                    f"{fmt_int(p['monitored_cases'])} ({fmt_int(p['monitored_resolved'])})",
                ]
                for p in top
            ],
            [True, False, True, True, True, True, True, True, True],
        )
    )
    section.chart(
        charts.hbar_chart(
            [(names[p["province_code"]], p["pending_end"]) for p in top],
            title=f"Cases pending at the end of {label_period}, by province",
            unit="cases",
            highlight=[] if rng.national else [names.get(rng.scope, "")],
        )
    )
    section.define(
        "Case figures belong to the province of the agency that opened the case (code 00 = "
        "central agencies). Historical geography keeps provinces as they were; current maps "
        "them to today's provinces (2025 merger)."
    )
    return section


def _lag_pairs(rng: Range, pairs: list[dict[str, Any]]) -> Section:
    section = Section("Transfer lag by agency pair")
    if not pairs:
        section.p("No transfers in this range.")
        return section
    section.table(
        Table(
            [
                "From → To",
                "Received",
                "p50 (days)",
                "p90 (days)",
                "Max (days)",
                "Sent",
                "Returned",
                "Pending at end",
            ],
            [
                [
                    f"{p['from_type']} → {p['to_type']}",
                    fmt_int(p["received"]),
                    fmt_days(p["p50_hours"]) if p["received"] else "–",
                    fmt_days(p["p90_hours"]) if p["received"] else "–",
                    fmt_days(p["max_hours"]) if p["received"] else "–",
                    fmt_int(p["sent"]),
                    fmt_int(p["returned"]),
                    fmt_int(p["pending_end"]),
                ]
                for p in pairs
            ],
            [False] + [True] * 7,
        )
    )
    rows = [
        charts.PercentileRow(
            f"{p['from_type']} → {p['to_type']}",
            _days(p["p50_hours"]),
            _days(p["p90_hours"]),
            _days(p["max_hours"]),
            int(p["received"]),
        )
        for p in pairs
        if p["received"]
    ][:12]
    section.chart(
        charts.percentile_chart(
            rows,
            title="Transfer lag (days), transfers received in the range",
            unit="days",
            log=_wants_log(rows),
        )
    )
    section.define(
        "Lag = transfer_received − case_transferred (event time) for transfers received in the "
        "range; p50/p90 are linear-interpolation percentiles. Sent and returned: events in the "
        "range. Pending at end: sent before the end of the range, neither received nor returned "
        "by then. Agency types: INSP inspectorate, AUDIT state audit, PIC party inspection "
        "commission, POLICE investigation, PROC procuracy, COURT court, CJE civil judgment "
        "enforcement."
    )
    return section


def _wants_log(rows: list[charts.PercentileRow]) -> bool:
    medians = [r.p50 for r in rows if r.p50]
    maxima = [r.max for r in rows if r.max]
    return bool(medians and maxima) and max(maxima) > 20 * min(medians)


def _backlog(rng: Range, backlog: list[dict[str, Any]]) -> Section:
    section = Section("Backlog aging")
    counts = {int(r["bucket"]): int(r["cases"]) for r in backlog}
    total = sum(counts.values())
    end_label = (rng.end_date - timedelta(days=1)).isoformat()
    oldest = max((r["oldest_days"] for r in backlog), default=None)
    section.p(
        f"{fmt_int(total)} cases pending at the end of {end_label}"
        + (f"; the oldest has been open {fmt_num(oldest, 0)} days." if total else ".")
    )
    items = [(name, counts.get(i, 0)) for i, name in enumerate(q.BACKLOG_BUCKETS)]
    section.table(
        Table(
            ["Age", "Pending cases", "Share"],
            [[name, fmt_int(n), fmt_pct(n / total) if total else "–"] for name, n in items],
            [False, True, True],
        )
    )
    section.chart(
        charts.bar_chart(items, title=f"Pending cases by age on {end_label}", unit="cases")
    )
    section.define(
        "Pending = opened before the end of the range and not resolved at that moment (a "
        "reopened case is pending again). Age = end of the range − opening, in calendar months."
    )
    return section


def _slowest(rng: Range, slowest: list[dict[str, Any]]) -> Section:
    section = Section("Slowest pending transfers")
    if not slowest:
        section.p("No transfer was pending at the end of the range.")
        return section
    section.table(
        Table(
            ["#", "Case", "Transfer", "From → To", "Reason", "Sent", "Age (days)"],
            [
                [
                    str(i + 1),
                    t["case_id"],
                    t["transfer_id"],
                    f"{t['from_agency_id']} → {t['to_agency_id']}",
                    t["reason"],
                    _local_day(t["sent_at"]),
                    fmt_num(t["age_days"], 0),
                ]
                for i, t in enumerate(slowest)
            ],
            [True, False, False, False, False, False, True],
        )
    )
    section.define(
        f"The {SLOWEST_TRANSFERS} oldest transfers sent before the end of the range and neither "
        "received nor returned by then; age = end of the range − sent (days). Sent dates in "
        "Vietnam time."
    )
    return section


def _local_day(value: Any) -> str:
    if not isinstance(value, datetime):
        return str(value)
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(ZoneInfo(REPORTING_TZ)).strftime("%Y-%m-%d")


def _appraisals(rng: Range, appraisals: list[dict[str, Any]]) -> Section:
    section = Section("Appraisal and valuation lag")
    if not appraisals:
        section.p("No appraisals in this range.")
        return section
    section.table(
        Table(
            [
                "Kind",
                "Completed",
                "p50 (days)",
                "p90 (days)",
                "Max (days)",
                "Pending at end",
                "Oldest pending (days)",
            ],
            [
                [
                    a["kind"] or "(unknown)",
                    fmt_int(a["completed"]),
                    fmt_days(a["p50_hours"]) if a["completed"] else "–",
                    fmt_days(a["p90_hours"]) if a["completed"] else "–",
                    fmt_days(a["max_hours"]) if a["completed"] else "–",
                    fmt_int(a["pending_end"]),
                    fmt_num(a["oldest_pending_days"], 0) if a["pending_end"] else "–",
                ]
                for a in appraisals
            ],
            [False] + [True] * 6,
        )
    )
    rows = [
        charts.PercentileRow(
            a["kind"] or "(unknown)",
            _days(a["p50_hours"]),
            _days(a["p90_hours"]),
            _days(a["max_hours"]),
            int(a["completed"]),
        )
        for a in appraisals
        if a["completed"]
    ]
    section.chart(
        charts.percentile_chart(
            rows,
            title="Appraisal lag (days), appraisals completed in the range",
            unit="days",
            log=_wants_log(rows),
        )
    )
    section.define(
        "Lag = appraisal_completed − appraisal_requested (event time) for appraisals completed "
        "in the range. Pending at end: requested before the end of the range and not completed "
        "then; the steering committees name slow appraisal and valuation as a main cause of "
        "prolonged cases."
    )
    return section


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(", ")] + ", …" if ", " in cut else cut + "…"


QUALITY_DEFINITIONS = {
    "duplicate_deliveries": "events delivered more than once (harmless: deduplicated by event_id)",
    "sequence_gaps": "sequence numbers never received: events lost at the agency",
    "stale_transfers": "transfers still pending long after they were sent",
    "orphan_receipts": "receipts/returns whose transfer was never recorded",
    "late_arrivals": "events ingested long after they occurred (they change past periods)",
    "cases_without_opening": "cases with events but no case_opened",
}


def _quality(quality: list[dict[str, Any]]) -> Section:
    section = Section("Data quality")
    if not quality:
        section.p("No data-quality results yet (flow check-data-quality).")
        return section
    checked_at = quality[0]["checked_at"]
    warned = sorted(
        {r["check_name"] for r in quality if r["status"] == "warn" and r["scope"] == "all"}
    )
    section.p(
        f"Checked {fmt_time(checked_at)}: "
        + (f"warnings for {', '.join(warned)}." if warned else "all checks ok.")
    )
    rows, shown = [], {}
    for r in quality:
        if r["scope"] != "all":
            if r["status"] != "warn" or shown.get(r["check_name"], 0) >= 3:
                continue
            shown[r["check_name"]] = shown.get(r["check_name"], 0) + 1
        rows.append(
            [
                r["check_name"],
                r["scope"],
                fmt_num(r["value"], 0),
                fmt_num(r["threshold"], 0),
                r["status"],
                _clip(r["detail"], 200),
            ]
        )
    section.table(
        Table(
            ["Check", "Scope", "Value", "Threshold", "Status", "Detail"],
            rows,
            [False, False, True, True, False, False],
        )
    )
    section.define(
        "; ".join(f"{k}: {v}" for k, v in QUALITY_DEFINITIONS.items())
        + ". Scope all = whole platform; agency rows show up to 3 agencies with a "
        "warning per check."
    )
    return section


def _rebuilt_note(rebuilt: bool, last_built: dict[str, Any]) -> str:
    if not rebuilt:
        return "."
    if all(at is None for at in last_built.values()):
        return " (nothing to build: no events recorded yet)."
    return " (rebuilt for this report)."


def compose(rng: Range, data: dict[str, Any], rebuilt: bool) -> Report:
    scope_name = "Nationwide" if rng.national else province_label(rng.scope)
    kind_name = {"year": "yearly", "quarter": "quarterly", "month": "monthly"}[rng.period_kind]
    span = period_label(rng.first, rng.period_kind)
    if rng.last != rng.first:
        span += f" – {period_label(rng.last, rng.period_kind)}"
    built = "; ".join(f"{name} {fmt_time(at)}" for name, at in data["last_built"].items())
    subtitle = [
        f"{kind_name.capitalize()} figures, {span} ({rng.first.isoformat()} to "
        f"{(rng.end_date - timedelta(days=1)).isoformat()}), {rng.geography} geography.",
        f"Generated {fmt_time(datetime.now(UTC))}. Rollups last built: {built}"
        + _rebuilt_note(rebuilt, data["last_built"]),
    ]
    return Report(
        title=f"casestream report — {scope_name}, {span}",
        subtitle=subtitle,
        sections=[
            _headline(rng, data["rollups"], scope_name),
            _rollup_table(rng, data["rollups"]),
            _provinces(rng, data["provinces"]),
            _lag_pairs(rng, data["lag_pairs"]),
            _backlog(rng, data["backlog"]),
            _slowest(rng, data["slowest"]),
            _appraisals(rng, data["appraisals"]),
            _quality(data["quality"]),
        ],
    )


def report_stem(
    scope: str, period_kind: str, first: date, last: date, geography: str = "historical"
) -> str:
    suffix = "" if geography == "historical" else f"-{geography}"
    return f"report-{scope}-{period_kind}-{first.isoformat()}-{last.isoformat()}{suffix}"


def artifact_key(scope: str, period_kind: str, geography: str = "historical") -> str:
    suffix = "" if geography == "historical" else f"-{geography}"
    return f"report-{scope}-{period_kind}{suffix}".lower()


def _validate(scope: str, period_kind: str, geography: str) -> None:
    if period_kind not in PERIOD_KINDS:
        raise ValueError(f"period_kind must be one of {sorted(PERIOD_KINDS)}, not {period_kind!r}")
    if geography not in GEOGRAPHIES:
        raise ValueError(f"geography must be one of {GEOGRAPHIES}, not {geography!r}")
    if scope != NATIONAL and not ref.is_known_province(scope):
        raise ValueError(f"scope must be 'national' or a province code, not {scope!r}")


# --------------------------------------------------------------------------- the flow


@flow(name="build-report")
def build_report(
    scope: str = NATIONAL,
    period_kind: str = "year",
    first: date | None = None,
    last: date | None = None,
    out_dir: Path = Path("reports"),
    geography: str = "historical",
    rebuild_rollups: bool | None = None,
) -> Path:
    """Write report-<scope>-<period_kind>-<first>-<last>.md and .html; returns the HTML path.

    ``scope`` is "national" or a province code; ``first``/``last`` are any days of the first and
    last period (default: the last five periods up to today). ``rebuild_rollups``: None rebuilds
    the rollups of the range when they are missing or events were ingested since their build,
    True always, False never. Also creates the markdown artifact ``report-<scope>-<period_kind>``.
    """
    from flows.quality import check_data_quality
    from flows.rollups import build_rollups

    logger = get_run_logger()
    _validate(scope, period_kind, geography)
    months = PERIOD_KINDS[period_kind][1]
    last = last or date.today()
    first = first or add_months(period_start_of(last, period_kind), -4 * months)
    if first > last:
        raise ValueError(f"first {first} is after last {last}")
    rng = Range(scope, period_kind, geography, period_grid(first, last, period_kind))
    client = Settings.from_env().clickhouse_client()

    freshness = rollup_freshness(client, rng)
    rebuild = rebuild_rollups
    if rebuild is None:
        rebuild = freshness["missing"] or freshness["stale"]
    if rebuild:
        logger.info(
            "building rollups %s..%s (%s, %s): missing=%s stale=%s",
            rng.first,
            rng.last,
            period_kind,
            geography,
            freshness["missing"],
            freshness["stale"],
        )
        build_rollups(rng.first, rng.last, period_kinds=[period_kind], geographies=[geography])

    latest_check = _scalar(client, "SELECT max(checked_at) FROM data_quality_checks")
    if latest_check is None or (
        datetime.now(UTC) - latest_check.replace(tzinfo=UTC) > QUALITY_MAX_AGE
    ):
        check_data_quality()

    data = collect(rng)
    report = compose(rng, data, rebuilt=bool(rebuild))
    markdown, page = to_markdown(report), to_html(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(scope, period_kind, first, last, geography)
    md_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(scope, period_kind, geography),
        description=f"casestream report {stem}",
    )
    logger.info("report written: %s and %s", md_path, html_path)
    return html_path.resolve()
