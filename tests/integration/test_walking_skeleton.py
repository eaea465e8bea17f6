"""The walking skeleton: one case's events travel agency → Kafka → worker → ClickHouse → Prefect."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from services.agency.publisher import Publisher
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _event(event_type: str, agency: str, case_id: str, at: str, payload: dict) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "case_id": case_id,
        "agency_id": agency,
        "occurred_at": at,
        "payload": payload,
    }


def test_transfer_lag_reaches_clickhouse_and_the_national_rollup(stack, worker, ch):
    case_id = f"20-INSP/2015/{uuid.uuid4().hex[:8]}"
    with Publisher("20-INSP", stack) as inspectorate:
        inspectorate.publish(
            _event(
                "case_opened",
                "20-INSP",
                case_id,
                "2015-03-02T08:00:00+07:00",
                {
                    "origin": "inspection",
                    "field": "land",
                    "subject_kind": "official",
                    "prominent": False,
                },
            )
        )
        inspectorate.publish(
            _event(
                "case_transferred",
                "20-INSP",
                case_id,
                "2015-03-10T09:00:00+07:00",
                {
                    "transfer_id": f"T-{case_id}",
                    "to_agency_id": "20-POLICE",
                    "reason": "signs_of_crime",
                },
            )
        )
    with Publisher("20-POLICE", stack) as police:
        police.publish(
            _event(
                "transfer_received",
                "20-POLICE",
                case_id,
                "2015-03-12T15:00:00+07:00",
                {"transfer_id": f"T-{case_id}"},
            )
        )

    row = wait_for(
        lambda: (
            ch.query(
                "SELECT from_agency_id, to_agency_id, status, lag_hours FROM transfers "
                "WHERE case_id = {c:String} AND status = 'received'",
                parameters={"c": case_id},
            ).result_rows
        ),
        timeout=120,
        what="the received transfer row",
    )
    assert row == [("20-INSP", "20-POLICE", "received", 54.0)]

    from flows.rollups import build_rollups

    build_rollups(
        date(2015, 3, 1), date(2015, 3, 31), period_kinds=["month"], geographies=["historical"]
    )
    national = ch.query(
        "SELECT cases_opened, transfers_sent, transfers_received, transfers_to_investigation, "
        "transfer_lag_p50_hours FROM rollup_national "
        "WHERE period_kind = 'month' AND period_start = '2015-03-01'"
    ).result_rows
    assert national == [(1, 1, 1, 1, 54.0)]
