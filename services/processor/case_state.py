"""A case's state and its ClickHouse rows, derived from the set of its facts.

Why from the whole set, every time: events of one case come from several agency topics, so their
arrival order differs between runs, restarts and rebuilds. Folding the facts in event-time order
(`Fact.order_key`) makes the rows a function of *which* events exist, not of when they arrived:
duplicates change nothing, a receipt before its transfer pairs up, a late event corrects the
past, and a rebuild reproduces the tables exactly. `version` = number of distinct facts, so a
ReplacingMergeTree keeps the most complete derivation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.processor.authority import Violation, judge_ordered
from services.processor.facts import Fact, ms_to_datetime, province_of
from services.processor.transfer_lag import (
    Transfer,
    appraisal_row,
    by_event_time,
    pair_appraisals_ordered,
    pair_transfers_ordered,
    transfer_row,
)

CASE_COLUMNS = [
    "case_id",
    "opened_agency_id",
    "province_code",
    "opened_at",
    "origin",
    "field",
    "subject_kind",
    "prominent",
    "damage_vnd",
    "current_agency_id",
    "current_stage",
    "status",
    "outcome",
    "resolved_at",
    "reopened_count",
    "monitored",
    "monitoring_level",
    "monitored_at",
    "transfers_sent",
    "transfers_in_flight",
    "discipline_party_members",
    "discipline_party_orgs",
    "assets_identified_vnd",
    "assets_recovered_vnd",
    "last_event_at",
    "event_count",
    "version",
]


@dataclass
class CaseState:
    case_id: str
    opened_agency_id: str = ""
    opened_ms: int | None = None
    origin: str = ""
    field: str = ""
    subject_kind: str = ""
    prominent: bool = False
    damage_vnd: int | None = None
    current_agency_id: str = ""
    current_stage: str = ""
    status: str = "open"
    outcome: str = ""
    resolved_ms: int | None = None
    reopened_count: int = 0
    monitoring_level: str = ""
    monitored_ms: int | None = None
    discipline_party_members: int = 0
    discipline_party_orgs: int = 0
    assets_identified_vnd: int = 0
    assets_recovered_vnd: int = 0
    last_event_ms: int = 0
    event_count: int = 0
    transfers_sent: int = 0
    transfers_in_flight: int = 0

    @property
    def monitored(self) -> bool:
        return self.monitored_ms is not None


def fold(facts: Iterable[Fact]) -> CaseState:
    """The case's state after all its facts, applied in event-time order."""
    ordered = sorted({f.event_id: f for f in facts}.values(), key=by_event_time)
    if not ordered:
        raise ValueError("a case state needs at least one fact")
    return _fold_ordered(ordered, pair_transfers_ordered(ordered))


def _fold_ordered(ordered: list[Fact], transfers: dict[str, Transfer]) -> CaseState:
    """`fold` of distinct facts in event-time order, given their paired transfers."""
    state = CaseState(case_id=ordered[0].case_id)
    senders: dict[str, str] = {}  # transfer_id -> agency that sent it (its earliest send)
    for fact in ordered:
        if fact.event_type == "case_transferred" and fact.payload.get("transfer_id"):
            senders.setdefault(fact.payload["transfer_id"], fact.agency_id)
    received: set[str] = set()
    for fact in ordered:
        _apply(state, fact, senders, received)
    state.event_count = len(ordered)
    state.transfers_sent = sum(1 for t in transfers.values() if t.sent_ms is not None)
    state.transfers_in_flight = sum(
        1 for t in transfers.values() if t.sent_ms is not None and t.status == "pending"
    )
    return state


def _apply(state: CaseState, fact: Fact, senders: dict[str, str], received: set[str]) -> None:
    """One fact in event-time order. Custody: the opener, then the receiver of each received
    transfer; a receiver that returns a transfer it took hands the case back to the sender (the
    contract: the return sends the case back "without taking it over")."""
    p = fact.payload
    kind = fact.event_type
    state.last_event_ms = max(state.last_event_ms, fact.occurred_ms)
    if not state.current_agency_id:
        state.current_agency_id = fact.agency_id
    if kind == "case_opened":
        if state.opened_ms is None:
            state.opened_ms = fact.occurred_ms
            state.opened_agency_id = fact.agency_id
            state.origin = p.get("origin") or ""
            state.field = p.get("field") or ""
            state.subject_kind = p.get("subject_kind") or ""
            state.prominent = bool(p.get("prominent"))
            state.damage_vnd = p.get("damage_vnd")
            state.current_agency_id = fact.agency_id
    elif kind == "transfer_received":
        transfer_id = p.get("transfer_id") or ""
        if transfer_id in senders:  # a receipt of no known transfer gives no custody
            state.current_agency_id = fact.agency_id
            received.add(transfer_id)
    elif kind == "transfer_returned":
        transfer_id = p.get("transfer_id") or ""
        if (
            transfer_id in received
            and transfer_id in senders
            and fact.agency_id == state.current_agency_id
        ):
            state.current_agency_id = senders[transfer_id]
    elif kind == "stage_changed":
        state.current_stage = p.get("stage") or ""
    elif kind == "monitoring_assigned":
        if state.monitored_ms is None:
            state.monitored_ms = fact.occurred_ms
        state.monitoring_level = p.get("level") or state.monitoring_level
    elif kind == "discipline_imposed":
        count = int(p.get("count") or 0)
        if p.get("target") == "party_organization":
            state.discipline_party_orgs += count
        else:
            state.discipline_party_members += count
    elif kind == "assets_recovered":
        state.assets_identified_vnd += int(p.get("identified_vnd") or 0)
        state.assets_recovered_vnd += int(p.get("recovered_vnd") or 0)
    elif kind == "case_resolved":
        state.status = "resolved"
        state.outcome = p.get("outcome") or ""
        state.resolved_ms = fact.occurred_ms
    elif kind == "case_reopened":
        state.status = "open"
        state.outcome = ""
        state.resolved_ms = None
        state.reopened_count += 1


def case_row(state: CaseState, version: int) -> list[Any]:
    return [
        state.case_id,
        state.opened_agency_id,
        province_of(state.opened_agency_id),
        ms_to_datetime(state.opened_ms),
        state.origin,
        state.field,
        state.subject_kind,
        int(state.prominent),
        state.damage_vnd,
        state.current_agency_id,
        state.current_stage,
        state.status,
        state.outcome,
        ms_to_datetime(state.resolved_ms),
        state.reopened_count,
        int(state.monitored),
        state.monitoring_level,
        ms_to_datetime(state.monitored_ms),
        state.transfers_sent,
        state.transfers_in_flight,
        state.discipline_party_members,
        state.discipline_party_orgs,
        state.assets_identified_vnd,
        state.assets_recovered_vnd,
        ms_to_datetime(state.last_event_ms),
        state.event_count,
        version,
    ]


VIOLATION_COLUMNS = [
    "case_id",
    "event_id",
    "event_type",
    "agency_id",
    "occurred_at",
    "rule",
    "detail",
    "version",
]


def violation_row(violation: Violation, version: int) -> list[Any]:
    fact = violation.fact
    return [
        fact.case_id,
        fact.event_id,
        fact.event_type,
        fact.agency_id,
        ms_to_datetime(fact.occurred_ms),
        violation.rule,
        violation.detail,
        version,
    ]


@dataclass
class CaseRows:
    case: list[Any]
    transfers: list[list[Any]]
    appraisals: list[list[Any]]
    violations: list[list[Any]]


def derive_rows(facts: Iterable[Fact]) -> CaseRows:
    """Every ClickHouse row that describes this case, all carrying the same version.

    Only the facts the authority rules admit (authority.py) shape the rows; the others become
    violation rows. `version` counts every distinct fact, so it grows with each new fact
    whether or not it is admitted, and the latest derivation always wins.
    """
    unique = list({f.event_id: f for f in facts}.values())
    return derive_distinct(unique)


def derive_distinct(unique: list[Fact]) -> CaseRows:
    """`derive_rows` of facts with distinct event ids (a case's stored set), in any order.

    The facts are sorted by event time once; the rules, the fold and the pairing all walk that
    order (each of them used to sort the set again).
    """
    version = len(unique)
    ordered = sorted(unique, key=by_event_time)
    verdict = judge_ordered(ordered, unique[0].case_id)
    admitted = verdict.admitted
    transfers = pair_transfers_ordered(admitted)
    if admitted:
        state = _fold_ordered(admitted, transfers)
    else:  # every fact of the case breaks a rule: a case row that claims nothing
        state = CaseState(case_id=unique[0].case_id, status="")
        state.last_event_ms = max(f.occurred_ms for f in unique)
    transfer_rows = [
        row for t in transfers.values() if (row := transfer_row(t, version)) is not None
    ]
    appraisals = [appraisal_row(a, version) for a in pair_appraisals_ordered(admitted).values()]
    violations = [violation_row(v, version) for v in verdict.violations]
    return CaseRows(case_row(state, version), transfer_rows, appraisals, violations)
