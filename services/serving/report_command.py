"""CLI of the reports and scheduled flows: ``casestream report`` and ``casestream flows serve``.

Registered in ``services/cli.py`` with ``main.add_command(report)`` and
``main.add_command(flows)``. Prefect is imported inside the commands so ``casestream --help``
stays instant; both commands talk to the Prefect server of the settings (PREFECT_API_URL), so a
report is a flow run visible in the Prefect UI.
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path

import click

PERIODS = click.Choice(["year", "quarter", "month"])
GEOGRAPHY = click.Choice(["historical", "current"])


def _scope(_ctx, _param, value: str) -> str:
    from services.contracts import reference as ref

    value = value.strip()
    if value.lower() == "national":
        return "national"
    if not ref.is_known_province(value):
        raise click.BadParameter(f"{value!r} is neither 'national' nor a province code (e.g. 20)")
    return value


def _day(value: datetime | None) -> date | None:
    return value.date() if value else None


@click.command("report")
@click.option(
    "--scope",
    default="national",
    show_default=True,
    callback=_scope,
    help="'national' or a province code, e.g. 20 (Lạng Sơn)",
)
@click.option(
    "--period",
    "period_kind",
    type=PERIODS,
    default="year",
    show_default=True,
    help="period of the figures",
)
@click.option(
    "--from",
    "first",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="a day of the first period (default: four periods before --to)",
)
@click.option(
    "--to",
    "last",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="a day of the last period (default: today)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="directory for the files",
)
@click.option(
    "--geography",
    type=GEOGRAPHY,
    default="historical",
    show_default=True,
    help="provinces as they were, or mapped to today's provinces",
)
@click.option(
    "--rollups",
    "rollups_mode",
    type=click.Choice(["auto", "rebuild", "keep"]),
    default="auto",
    show_default=True,
    help="auto: rebuild the range's rollups when missing or stale",
)
def report(
    scope: str,
    period_kind: str,
    first: datetime | None,
    last: datetime | None,
    out_dir: Path,
    geography: str,
    rollups_mode: str,
) -> None:
    """Write the Markdown and HTML report for a range of periods (a Prefect flow run).

    Prints the paths written: report-<scope>-<period>-<from>-<to>.md and .html.
    """
    from flows.reports import build_report

    first_day, last_day = _day(first), _day(last)
    if first_day and last_day and first_day > last_day:
        raise click.BadParameter("--from is after --to")
    rebuild = {"auto": None, "rebuild": True, "keep": False}[rollups_mode]
    try:
        html_path = build_report(
            scope=scope,
            period_kind=period_kind,
            first=first_day,
            last=last_day,
            out_dir=out_dir,
            geography=geography,
            rebuild_rollups=rebuild,
        )
    except Exception as exc:  # noqa: BLE001 - report the failure, the flow run keeps the trace
        from services.settings import Settings
        from services.stack.unreachable import explain

        click.secho(
            f"error: {explain(exc, Settings.from_env()) or f'report failed: {exc}'}",
            fg="red",
            err=True,
        )
        sys.exit(1)
    html_path = Path(html_path)
    click.echo(str(html_path.with_suffix(".md")))
    click.echo(str(html_path))


@click.group("flows")
def flows() -> None:
    """Scheduled Prefect deployments (rollup refresh, data quality, national report)."""


@flows.command("serve")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="directory for the scheduled national report",
)
def flows_serve(out_dir: Path) -> None:
    """Serve the deployments (blocking): refresh-recent-rollups every 15 min, data-quality
    hourly, national-report daily. They show in the Prefect UI; Ctrl-C stops serving."""
    from flows.deployments import serve_deployments

    click.echo(
        "serving refresh-recent-rollups (*/15 min), data-quality (hourly), "
        "national-report (daily 06:30 Asia/Ho_Chi_Minh); Ctrl-C to stop"
    )
    serve_deployments(out_dir)


COMMANDS = (report, flows)
