"""`casestream demo`: the whole platform on this machine, end to end, in one command.

1. start the local stack; 2. apply migrations and create topics; 3. generate a seeded
multi-province case history (cached); 4. publish it through the SDK's bulk import; 5. run the
worker until it has caught up; 6. build the rollups with the Prefect flow, print the national
yearly table and write the report. Every step is idempotent, so running the demo twice publishes
nothing new and rebuilds the same figures.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

import click

from services.settings import Settings

# Central agencies, the two largest cities, two border provinces and two provinces merged away
# in 2025 (34 Thái Bình → Hưng Yên, 45 Quảng Trị → Quảng Trị 44): a national picture with ~100
# agencies, small enough to register every agency's subject quickly on a laptop.
DEMO_PROVINCES = ("00", "01", "79", "20", "22", "34", "45")

NATIONAL_COLUMNS = [
    ("period", "period_start", "{:%Y}"),
    ("opened", "cases_opened", "{:,}"),
    ("resolved", "cases_resolved", "{:,}"),
    ("pending", "pending_end", "{:,}"),
    ("clearance", "clearance_rate", "{:.0%}"),
    ("dispo. days", "disposition_time_days", "{:,.0f}"),
    ("to police", "transfers_to_investigation", "{:,}"),
    ("lag p50 h", "transfer_lag_p50_hours", "{:,.1f}"),
    ("lag p90 h", "transfer_lag_p90_hours", "{:,.1f}"),
    ("monitored", "monitored_cases", "{:,}"),
    ("mon. resolved", "monitored_resolution_rate", "{:.0%}"),
    ("recovered", "asset_recovery_rate", "{:.0%}"),
]


def _step(number: int, total: int, text: str) -> float:
    click.secho(f"[{number}/{total}] {text}", bold=True, err=True)
    return time.monotonic()


def _done(started: float, text: str = "") -> None:
    click.echo(f"      done in {time.monotonic() - started:.1f}s {text}", err=True)


def format_national_table(rows: list[dict]) -> str:
    """The national yearly rollup as an aligned text table (also used in the report)."""
    header = [title for title, _, _ in NATIONAL_COLUMNS]
    body = []
    for row in rows:
        cells = []
        for _, column, fmt in NATIONAL_COLUMNS:
            value = row.get(column)
            cells.append("–" if value is None else fmt.format(value))
        body.append(cells)
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def run_demo(
    settings: Settings, *, events: int, seed: int, start: date, end: date, report_dir: Path
) -> Path:
    from services.agency.bulk_import import format_summary, import_file, print_progress
    from services.agency.generator import GeneratorOptions, write_jsonl
    from services.ops.consumer_lag import wait_caught_up
    from services.ops.topics import ensure_topics
    from services.serving.migrations import migrate
    from services.stack import manager
    from services.stack import worker as worker_proc

    total = 6
    t = _step(1, total, "local stack: Kafka, Apicurio registry, ClickHouse endpoint, Prefect")
    manager.up(settings, log=lambda m: click.echo(f"      {m.strip()}", err=True))
    _done(t)

    t = _step(2, total, "ClickHouse migrations and Kafka topics")
    migrate(settings, log=lambda m: click.echo(f"      {m.strip()}", err=True))
    ensure_topics(settings)
    _done(t)

    history = settings.home / "demo" / f"history-seed{seed}-{events}-{start}-{end}-v3.jsonl"
    t = _step(3, total, f"generate a case history ({events:,} events, seed {seed}, {start}..{end})")
    if history.exists():
        click.echo(f"      reusing {history}", err=True)
    else:
        history.parent.mkdir(parents=True, exist_ok=True)
        summary = write_jsonl(
            GeneratorOptions(
                seed=seed,
                start=start,
                end=end,
                events=events,
                duplicates=0.01,
                provinces=DEMO_PROVINCES,
                out_of_order=0.02,
                # a few forged resolutions: the report's data-quality section lists them and no
                # figure counts them (services/processor/authority.py)
                violations=0.005,
                progress=lambda m: click.echo(f"      {m}", err=True),
            ),
            history,
        )
        click.echo(
            f"      {summary.events:,} events of {summary.cases:,} cases from "
            f"{summary.agencies} agencies (+{summary.duplicates:,} duplicate deliveries)",
            err=True,
        )
    _done(t)

    t = _step(4, total, "publish through the agency SDK (validation, outbox, Avro, Kafka)")
    imported = import_file(history, settings, progress=print_progress)
    click.echo("      " + format_summary(imported, 10).strip().replace("\n", "\n      "), err=True)
    _done(t)

    t = _step(5, total, "stream worker: derive cases, transfers, lags into ClickHouse")
    if worker_proc.process(settings).pid() is None:
        worker_proc.start(settings)
        time.sleep(3)
    wait_caught_up(
        settings,
        timeout=1800,
        progress=lambda lag: click.echo(f"      {lag:,} messages behind", err=True),
    )
    ch = settings.clickhouse_client()
    counts = {
        name: ch.command(f"SELECT count() FROM {name}")
        for name in ("cases", "transfers", "appraisals")
    }
    counts["events"] = ch.command("SELECT count() FROM events FINAL")
    click.echo("      " + ", ".join(f"{v:,} {k}" for k, v in counts.items()), err=True)
    forged = ch.command("SELECT count() FROM integrity_violations")
    click.echo(
        f"      {forged:,} facts break an authority rule: listed in integrity_violations, "
        "counted in no figure",
        err=True,
    )
    _done(t)

    t = _step(6, total, "rollups and report (Prefect flows)")
    from flows.reports import build_report
    from flows.rollups import build_rollups

    build_rollups(start, end)
    report = build_report(
        scope="national", period_kind="year", first=start, last=end, out_dir=report_dir
    )
    _done(t)

    rows = ch.query(
        "SELECT * FROM rollup_national WHERE period_kind = 'year' ORDER BY period_start"
    ).named_results()
    click.echo("\nNational figures by year (event time; pending = open at year end):\n")
    click.echo(format_national_table(list(rows)))
    click.echo(f"\nReport: {report}")
    click.echo(
        "Prefect UI: "
        + settings.prefect_api_url.removesuffix("/api")
        + "   ClickHouse: "
        + settings.clickhouse_url
        + " (user analyst)"
    )
    return report


@click.command("demo")
@click.option(
    "--events",
    default=60_000,
    show_default=True,
    help="approximate number of events in the generated history",
)
@click.option("--seed", default=7, show_default=True, help="generator seed (reproducible)")
@click.option(
    "--from",
    "start",
    default="2021-01-01",
    show_default=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="first day of the history",
)
@click.option(
    "--to",
    "end",
    default="2025-12-31",
    show_default=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="last day of the history",
)
@click.option(
    "--report-dir",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False),
    help="where the report is written",
)
def demo(events: int, seed: int, start, end, report_dir: str) -> None:
    """Run the platform end to end on the local stack and print the national figures."""
    try:
        run_demo(
            Settings.from_env(),
            events=events,
            seed=seed,
            start=start.date(),
            end=end.date(),
            report_dir=Path(report_dir),
        )
    except (RuntimeError, TimeoutError, ValueError) as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
