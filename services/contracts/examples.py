"""One valid example event (JSON form) per event type, for docs, tests and benchmarks.

All examples belong to one case followed through Lạng Sơn's agencies (province 20) in 2024.
"""

from __future__ import annotations

import copy
from typing import Any

CASE_ID = "20-INSP/2024/0123"

_EXAMPLES: dict[str, dict[str, Any]] = {
    "case_opened": {
        "agency_id": "20-INSP",
        "occurred_at": "2024-03-01T08:00:00+07:00",
        "payload": {
            "origin": "inspection",
            "field": "land",
            "subject_kind": "official",
            "prominent": True,
            "damage_vnd": 12_500_000_000,
        },
    },
    "case_transferred": {
        "agency_id": "20-INSP",
        "occurred_at": "2024-03-05T09:30:00+07:00",
        "payload": {
            "transfer_id": "T-20-INSP-0456",
            "to_agency_id": "20-POLICE",
            "reason": "signs_of_crime",
        },
    },
    "transfer_received": {
        "agency_id": "20-POLICE",
        "occurred_at": "2024-03-07T14:15:00+07:00",
        "payload": {"transfer_id": "T-20-INSP-0456"},
    },
    "transfer_returned": {
        "agency_id": "20-PROC",
        "occurred_at": "2024-03-08T10:00:00.250+07:00",
        "payload": {"transfer_id": "T-20-POLICE-0091", "reason": "jurisdiction"},
    },
    "stage_changed": {
        "agency_id": "20-POLICE",
        "occurred_at": "2024-04-02T16:45:00+07:00",
        "payload": {"stage": "suspects_charged", "count": 3},
    },
    "appraisal_requested": {
        "agency_id": "20-POLICE",
        "occurred_at": "2024-04-10T09:00:00+07:00",
        "payload": {"appraisal_id": "A-20-POLICE-0012", "kind": "valuation"},
    },
    "appraisal_completed": {
        "agency_id": "20-POLICE",
        "occurred_at": "2024-06-20T11:30:00+07:00",
        "payload": {"appraisal_id": "A-20-POLICE-0012", "kind": "valuation"},
    },
    "monitoring_assigned": {
        "agency_id": "20-SC",
        "occurred_at": "2024-04-15T08:30:00+07:00",
        "payload": {"level": "provincial"},
    },
    "discipline_imposed": {
        "agency_id": "20-PIC",
        "occurred_at": "2024-05-21T15:00:00+07:00",
        "payload": {"target": "party_member", "count": 2, "form": "warning"},
    },
    "assets_recovered": {
        "agency_id": "20-CJE",
        "occurred_at": "2024-11-12T10:00:00+07:00",
        "payload": {"identified_vnd": 12_500_000_000, "recovered_vnd": 4_200_000_000},
    },
    "case_resolved": {
        "agency_id": "20-COURT",
        "occurred_at": "2024-10-30T17:00:00+07:00",
        "payload": {"outcome": "convicted"},
    },
    "case_reopened": {
        "agency_id": "20-PROC",
        "occurred_at": "2024-12-02T09:00:00Z",
        "payload": {"reason": "signs_of_crime"},
    },
}


def example_event(event_type: str, /, **overrides: Any) -> dict[str, Any]:
    """A fresh valid JSON-form event of ``event_type``; top-level keys can be overridden."""
    base = _EXAMPLES[event_type]
    n = list(_EXAMPLES).index(event_type) + 1
    event = {
        "event_id": f"0b6f1c2e-4a1d-4c6b-9f7e-{n:012d}",
        "event_type": event_type,
        "case_id": CASE_ID,
        "agency_id": base["agency_id"],
        "occurred_at": base["occurred_at"],
        "sequence": 1000 + n,
        "payload": copy.deepcopy(base["payload"]),
    }
    event.update(overrides)
    return event


def example_events() -> list[dict[str, Any]]:
    """One valid JSON-form event per event type, in schema order."""
    return [example_event(t) for t in _EXAMPLES]
