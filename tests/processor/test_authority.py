"""The authority rules: who may emit which event for a case, judged on the whole set of facts."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest

from services.processor import authority
from services.processor.authority import case_owner, judge, same_office
from services.processor.case_state import derive_rows
from services.processor.facts import Fact

pytestmark = pytest.mark.unit

POLICE_CASE = "20-POLICE/2024/7"


def ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def fact(kind: str, agency: str, day: str, case_id: str = POLICE_CASE, /, **payload) -> Fact:
    return Fact(str(uuid.uuid4()), kind, case_id, agency, ms(day), 420, None, payload)


def opened(agency: str = "20-POLICE", day: str = "2024-03-01", case_id: str = POLICE_CASE) -> Fact:
    return fact("case_opened", agency, day, case_id, origin="inspection", damage_vnd=5_000_000)


def sent(sender: str, to: str, day: str, tid: str = "T1", case_id: str = POLICE_CASE) -> Fact:
    return fact("case_transferred", sender, day, case_id, transfer_id=tid, to_agency_id=to)


def received(agency: str, day: str, tid: str = "T1", case_id: str = POLICE_CASE) -> Fact:
    return fact("transfer_received", agency, day, case_id, transfer_id=tid)


def rules(facts: list[Fact]) -> list[tuple[str, str, str]]:
    return [(v.fact.event_type, v.fact.agency_id, v.rule) for v in judge(facts).violations]


def test_the_owner_of_a_conventional_case_id():
    assert case_owner("20-POLICE/2024/7") == "20-POLICE"
    assert case_owner("t1234:m/0") is None


def test_the_attacks_of_a_dishonest_inspectorate_are_all_violations():
    honest = [opened(), fact("stage_changed", "20-POLICE", "2024-03-05", stage="investigation")]
    forged = [
        fact("case_opened", "20-INSP", "1970-01-01", POLICE_CASE, damage_vnd=0),
        fact("case_resolved", "20-INSP", "2024-04-01", outcome="no_violation"),
        fact("transfer_received", "20-INSP", "2024-04-02", transfer_id="T-hijack"),
    ]
    found = rules(honest + forged)
    assert ("case_opened", "20-INSP", authority.OPENED_BY_ANOTHER) in found
    assert ("case_resolved", "20-INSP", authority.NOT_A_HOLDER) in found
    # The receipt names no known transfer: it cannot be judged, and it gives no custody.
    assert len(found) == 2
    rows = derive_rows(honest + forged)
    assert rows.case[derive_rows(honest).case.__len__() - 1] == 5  # version counts every fact
    honest_case = derive_rows(honest).case
    assert rows.case[:-1][:9] == honest_case[:-1][:9]  # opener, dates, damage untouched
    status = rows.case[11]
    assert status == "open" and rows.case[9] == "20-POLICE"  # not resolved, police holds it


def test_a_receipt_by_another_agency_than_the_addressee_is_a_violation():
    facts = [
        opened(),
        sent("20-POLICE", "20-PROC", "2024-03-10"),
        received("20-INSP", "2024-03-11"),
    ]
    assert rules(facts) == [("transfer_received", "20-INSP", authority.NOT_THE_ADDRESSEE)]
    assert derive_rows(facts).case[9] == "20-POLICE"  # no custody hijack


def test_a_transfer_forged_by_a_non_holder_cannot_hand_the_case_to_anyone():
    facts = [
        opened(),
        sent("20-INSP", "20-COURT", "2024-03-10"),
        received("20-COURT", "2024-03-11"),
    ]
    assert rules(facts) == [
        ("case_transferred", "20-INSP", authority.NOT_A_HOLDER),
        ("transfer_received", "20-COURT", authority.TRANSFER_NOT_ADMITTED),
    ]
    assert derive_rows(facts).transfers == []


def test_a_holders_event_before_its_receipt_arrives_counts_once_it_arrives():
    early = [
        opened(),
        sent("20-POLICE", "20-PROC", "2024-03-10"),
        fact("stage_changed", "20-PROC", "2024-03-20", stage="indicted"),
    ]
    assert rules(early) == [("stage_changed", "20-PROC", authority.NOT_A_HOLDER)]
    complete = [*early, received("20-PROC", "2024-03-12")]
    assert rules(complete) == []
    assert derive_rows(complete).case[10] == "indicted"


def test_arrival_order_and_duplicates_do_not_change_the_verdict():
    facts = [
        opened(),
        sent("20-POLICE", "20-PROC", "2024-03-10"),
        received("20-PROC", "2024-03-12"),
        fact("case_resolved", "20-COURT", "2024-05-01", outcome="convicted"),
        fact("stage_changed", "20-PROC", "2024-04-01", stage="indicted"),
    ]
    expected = sorted(rules(facts))
    rng = random.Random(7)
    for _ in range(20):
        shuffled = facts + rng.sample(facts, 3)
        rng.shuffle(shuffled)
        assert sorted(rules(shuffled)) == expected
        assert derive_rows(shuffled) == derive_rows(facts)


def test_a_returned_transfer_takes_the_receiver_off_the_case():
    facts = [
        opened(),
        sent("20-POLICE", "20-PROC", "2024-03-10"),
        received("20-PROC", "2024-03-11"),
        fact("transfer_returned", "20-PROC", "2024-03-15", transfer_id="T1", reason="other"),
        fact("stage_changed", "20-PROC", "2024-03-20", stage="indicted"),
    ]
    assert rules(facts) == [("stage_changed", "20-PROC", authority.NOT_A_HOLDER)]


def test_the_sender_keeps_acting_on_its_own_part_after_a_transfer():
    facts = [
        opened("20-INSP", case_id="20-INSP/2024/1"),
        sent("20-INSP", "20-POLICE", "2024-03-10", case_id="20-INSP/2024/1"),
        received("20-POLICE", "2024-03-11", case_id="20-INSP/2024/1"),
        fact("assets_recovered", "20-INSP", "2024-04-01", "20-INSP/2024/1", identified_vnd=9),
        fact("case_resolved", "20-POLICE", "2024-05-01", "20-INSP/2024/1", outcome="other"),
    ]
    assert rules(facts) == []


@pytest.mark.parametrize(
    ("committee", "ok"),
    [("20-SC", True), ("00-SC", True), ("21-SC", False), ("20-INSP", False)],
)
def test_monitoring_by_the_provinces_or_the_central_steering_committee(committee, ok):
    facts = [opened(), fact("monitoring_assigned", committee, "2024-03-02", level="provincial")]
    assert rules(facts) == (
        [] if ok else [("monitoring_assigned", committee, authority.NOT_THE_STEERING_COMMITTEE)]
    )


def test_a_case_is_opened_once():
    first = opened("30-INSP", "2024-01-01", case_id="free-form-1")
    again = opened("31-INSP", "2024-02-01", case_id="free-form-1")
    assert rules([first, again]) == [("case_opened", "31-INSP", authority.OPENED_TWICE)]


def test_without_an_opening_or_an_owner_nothing_can_be_judged_yet():
    facts = [fact("case_resolved", "30-INSP", "2024-01-01", "free-form-2", outcome="other")]
    assert rules(facts) == []
    assert derive_rows(facts).case[11] == "resolved"


def test_the_successor_province_acts_for_a_merged_away_one():
    # 2025-07-01: province 02 was merged into 08 (schemas/reference/provinces.csv).
    from services.contracts.reference import current_province

    old, new = "02", current_province("02")
    assert new != old
    assert same_office(f"{new}-POLICE", f"{old}-POLICE", ms("2025-08-01"))
    assert not same_office(f"{new}-POLICE", f"{old}-POLICE", ms("2025-01-01"))
    assert not same_office(f"{new}-PROC", f"{old}-POLICE", ms("2025-08-01"))


def test_every_fact_of_a_case_forged_leaves_a_row_that_claims_nothing():
    facts = [fact("case_resolved", "20-INSP", "2024-04-01", outcome="no_violation")]
    rows = derive_rows(facts)
    assert rows.case[11] == "" and rows.case[12] == "" and rows.case[-2] == 0  # event_count
    assert [r[5] for r in rows.violations] == [authority.NOT_A_HOLDER]


def test_an_event_dated_before_the_opening_is_a_violation_whoever_emits_it():
    facts = [
        opened(day="2024-03-01"),
        fact("stage_changed", "20-POLICE", "2024-02-01", stage="investigation_opened"),
        fact("monitoring_assigned", "00-SC", "2023-12-31", level="central"),
    ]
    assert sorted(rules(facts)) == [
        ("monitoring_assigned", "00-SC", authority.BEFORE_THE_OPENING),
        ("stage_changed", "20-POLICE", authority.BEFORE_THE_OPENING),
    ]
    (first, *_) = judge(facts).violations
    assert "before the case was opened at 2024-03-01" in first.detail


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("appraisal_requested", {"appraisal_id": "A1", "kind": "valuation"}),
        ("appraisal_completed", {"appraisal_id": "A1", "kind": "valuation"}),
        ("assets_recovered", {"identified_vnd": 100, "recovered_vnd": 10}),
    ],
)
def test_appraisals_and_asset_recovery_only_by_the_agency_types_that_do_them(kind, payload):
    """Holding the case is not enough: a party commission that received it records neither."""
    base = [opened(), sent("20-POLICE", "20-PIC", "2024-03-10"), received("20-PIC", "2024-03-11")]
    by_police = fact(kind, "20-POLICE", "2024-03-12", **payload)
    by_commission = fact(kind, "20-PIC", "2024-03-12", **payload)
    assert rules([*base, by_police]) == []
    assert rules([*base, by_commission]) == [(kind, "20-PIC", authority.WRONG_AGENCY_TYPE)]
    reason = judge([*base, by_commission]).violations[0].detail
    assert "not 20-PIC" in reason and "POLICE" in reason


def test_judgment_enforcement_recovers_assets_but_requests_no_appraisal():
    base = [opened(), sent("20-POLICE", "20-CJE", "2024-03-10"), received("20-CJE", "2024-03-11")]
    assets = fact("assets_recovered", "20-CJE", "2024-04-01", identified_vnd=5, recovered_vnd=5)
    appraisal = fact(
        "appraisal_requested", "20-CJE", "2024-04-01", appraisal_id="A", kind="technical"
    )
    assert rules([*base, assets, appraisal]) == [
        ("appraisal_requested", "20-CJE", authority.WRONG_AGENCY_TYPE)
    ]
