"""Rows of every analyst table for four provinces, written straight into a private database
(the access and analysts'-guide tests query them through the real endpoint)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest

from services.serving.migrations import migrate
from services.settings import Settings
from services.stack.clickhouse import reload_users

PROVINCES = ("01", "74", "79", "00")  # 00: a central agency's row, no province's


def insert_sample_rows(settings: Settings, database: str) -> None:
    """A few rows of each analyst table, one case per province of PROVINCES."""
    client = settings.clickhouse_client(database=database)
    at = datetime(2025, 3, 1, tzinfo=UTC)
    for i, code in enumerate(PROVINCES):
        case = f"{code}-INSP/2025/{i:04d}"
        client.insert(
            "events",
            [[uuid.uuid4(), "case_opened", case, f"{code}-INSP", code, "INSP", at, 420, "{}"]],
            column_names=[
                "event_id",
                "event_type",
                "case_id",
                "agency_id",
                "province_code",
                "agency_type",
                "occurred_at",
                "utc_offset_minutes",
                "payload",
            ],
        )
        client.insert(
            "cases_state",
            [[case, f"{code}-INSP", code, at, "open", i % 2, at, 1, 1]],
            column_names=[
                "case_id",
                "opened_agency_id",
                "province_code",
                "opened_at",
                "status",
                "monitored",
                "last_event_at",
                "event_count",
                "version",
            ],
        )
        received = i % 2 == 0
        client.insert(
            "transfers_state",
            [
                [
                    f"t-{code}",
                    case,
                    code,
                    "01" if code != "01" else "00",
                    "POLICE",
                    at,
                    at + timedelta(hours=12 + i) if received else None,
                    "received" if received else "pending",
                    12.0 + i if received else None,
                    1,
                ]
            ],
            column_names=[
                "transfer_id",
                "case_id",
                "from_province_code",
                "to_province_code",
                "to_agency_type",
                "sent_at",
                "received_at",
                "status",
                "lag_hours",
                "version",
            ],
        )
        client.insert(
            "appraisals_state",
            [[f"a-{code}", case, f"{code}-INSP", "pending", 1]],
            column_names=["appraisal_id", "case_id", "agency_id", "status", "version"],
        )
        for geography in ("historical", "current"):
            shown = "79" if geography == "current" and code == "74" else code
            client.insert(
                "rollup_province_state",
                [[geography, "year", date(2025, 1, 1), date(2026, 1, 1), shown, 1, at]],
                column_names=[
                    "geography",
                    "period_kind",
                    "period_start",
                    "period_end",
                    "province_code",
                    "cases_opened",
                    "built_at",
                ],
            )
    client.insert(
        "rollup_national_state",
        [["year", date(2025, 1, 1), date(2026, 1, 1), 4, at]],
        column_names=["period_kind", "period_start", "period_end", "cases_opened", "built_at"],
    )


@contextmanager
def private_platform_database(prefix: str) -> Iterator[Settings]:
    """Settings whose platform database is a fresh one holding the sample rows, for as long as
    the block runs (the session's own database is shared by every other test).

    On leaving, the stack's users file is written again from the session's settings:
    `casestream analysts add` rewrites it from the settings it runs with, which name this
    database, so the stack's own analyst would otherwise be left granted this one.
    """
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    patch = pytest.MonkeyPatch()
    patch.setenv("CASESTREAM_CLICKHOUSE_DATABASE", database)
    try:
        settings = Settings.from_env()
        migrate(settings, log=lambda m: None)
        insert_sample_rows(settings, database)
        yield settings
    finally:
        patch.undo()
        reload_users(Settings.from_env())
