"""Transfer and appraisal pairing: order of arrival never matters, event time decides."""

from __future__ import annotations

import itertools

import pytest

from services.processor.facts import Fact
from services.processor.transfer_lag import lag_hours, pair_appraisals, pair_transfers

pytestmark = pytest.mark.unit
H = 3_600_000


def fact(eid: str, event_type: str, agency: str, at_ms: int, **payload) -> Fact:
    return Fact(eid, event_type, "C1", agency, at_ms, 420, None, payload)


SENT = fact(
    "e1",
    "case_transferred",
    "20-INSP",
    10 * H,
    transfer_id="T1",
    to_agency_id="20-POLICE",
    reason="signs_of_crime",
)
RECEIVED = fact("e2", "transfer_received", "20-POLICE", 40 * H, transfer_id="T1")


def test_lag_is_receipt_minus_transfer_in_hours():
    assert lag_hours(10 * H, 40 * H) == 30.0
    assert lag_hours(10 * H, None) is None


@pytest.mark.parametrize("order", list(itertools.permutations([SENT, RECEIVED])))
def test_pairs_in_any_arrival_order(order):
    (t,) = pair_transfers(order).values()
    assert (t.from_agency_id, t.to_agency_id, t.status, t.lag_hours) == (
        "20-INSP",
        "20-POLICE",
        "received",
        30.0,
    )


def test_receipt_alone_is_known_but_has_no_sender_yet():
    (t,) = pair_transfers([RECEIVED]).values()
    assert t.sent_ms is None and t.lag_hours is None


def test_first_receipt_counts_when_receipts_repeat():
    again = fact("e3", "transfer_received", "20-POLICE", 50 * H, transfer_id="T1")
    (t,) = pair_transfers([again, SENT, RECEIVED]).values()
    assert t.lag_hours == 30.0


def test_return_after_transfer_marks_returned():
    returned = fact(
        "e4", "transfer_returned", "20-POLICE", 20 * H, transfer_id="T1", reason="jurisdiction"
    )
    (t,) = pair_transfers([returned, SENT]).values()
    assert t.status == "returned" and t.return_reason == "jurisdiction" and t.lag_hours is None


def test_pending_transfer():
    (t,) = pair_transfers([SENT]).values()
    assert t.status == "pending"


def test_appraisal_lag():
    req = fact("a1", "appraisal_requested", "20-POLICE", 0, appraisal_id="A1", kind="valuation")
    done = fact(
        "a2", "appraisal_completed", "00-AUDIT", 240 * H, appraisal_id="A1", kind="valuation"
    )
    (a,) = pair_appraisals([done, req]).values()
    assert (a.status, a.lag_hours, a.agency_id, a.kind) == (
        "completed",
        240.0,
        "20-POLICE",
        "valuation",
    )
