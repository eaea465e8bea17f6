"""Scheduled deployments of the casestream flows, served by one long-running process.

    casestream flows serve            # blocks; Ctrl-C stops it

`serve_deployments()` registers three deployments with the Prefect server (they show in the UI
under Deployments, with their schedules) and runs their flow runs as subprocesses of itself:

| deployment | flow | schedule |
| --- | --- | --- |
| ``refresh-recent-rollups`` | ``refresh-recent-rollups`` (flows/rollups.py) | every 15 minutes |
| ``data-quality`` | ``check-data-quality`` (flows/quality.py) | hourly, on the hour |
| ``national-report`` | ``build-report`` (flows/reports.py), national, yearly, last 5 years | daily 06:30 Vietnam time |

No work pool or worker is needed (Prefect's ``serve``); a run can also be started from the UI or
with ``prefect deployment run 'build-report/national-report'``.
"""

from __future__ import annotations

from pathlib import Path

from services.serving.rollups import REPORTING_TZ

REFRESH_CRON = "*/15 * * * *"
QUALITY_CRON = "0 * * * *"
REPORT_CRON = "30 6 * * *"  # in REPORTING_TZ


def deployments(out_dir: Path | str = "reports") -> list:
    """The RunnerDeployments served by :func:`serve_deployments` (reports go to ``out_dir``)."""
    from prefect.schedules import Cron

    from flows.quality import check_data_quality
    from flows.reports import build_report
    from flows.rollups import refresh_recent

    return [
        refresh_recent.to_deployment(
            name="refresh-recent-rollups",
            schedule=Cron(REFRESH_CRON, timezone=REPORTING_TZ),
            description="Rebuild the rollup periods that recently ingested (late) events touch.",
            tags=["casestream", "rollups"],
        ),
        check_data_quality.to_deployment(
            name="data-quality",
            schedule=Cron(QUALITY_CRON, timezone=REPORTING_TZ),
            description="Duplicates, sequence gaps, stale transfers, orphan receipts, late "
            "arrivals, cases without opening → table data_quality_checks.",
            tags=["casestream", "quality"],
        ),
        build_report.to_deployment(
            name="national-report",
            schedule=Cron(REPORT_CRON, timezone=REPORTING_TZ),
            parameters={
                "scope": "national",
                "period_kind": "year",
                "out_dir": str(Path(out_dir).resolve()),
            },
            description="Daily national report (last five years, yearly) as Markdown, HTML and "
            "a markdown artifact.",
            tags=["casestream", "reports"],
        ),
    ]


def serve_deployments(out_dir: Path | str = "reports") -> None:
    """Register the deployments and serve them until interrupted (blocking)."""
    from prefect import serve

    serve(*deployments(out_dir))
