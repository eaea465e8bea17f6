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

import msgspec

from services.processor.authority import Rules, Violation, admit
from services.processor.facts import Fact, ms_to_datetime, province_of
from services.processor.transfer_lag import (
    Appraisal,
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
#: The case row's home province (its opening agency's; '' while no opening is admitted).
CASE_HOME = CASE_COLUMNS.index("province_code")


class CaseState(msgspec.Struct, gc=False):
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
    """`derive_rows` of facts with distinct event ids (a case's stored set), in any order."""
    return CaseDerivation(unique).rows()


TRANSFER_KINDS = frozenset({"case_transferred", "transfer_received", "transfer_returned"})


class CaseDerivation:
    """A case's derivation from its set of facts: the rules' walk, the fold, the pairing, the
    violations, kept so that later facts can be added without walking the earlier ones again.

    Built from the whole set (sorted by event time once; the rules, the fold and the pairing all
    walk that order). `extend` adds new facts when they cannot change the past: each is strictly
    later than every fact seen, none is an opening (an opening can turn earlier facts into
    violations), and none is a transfer whose id an earlier fact names (a receipt that arrived
    before its transfer is judged and folded again with it). Otherwise it refuses, and the
    caller derives the case again from the whole set: the rows are the same either way
    (tests/processor/test_derive_equivalence.py holds both against a frozen copy of the
    derivation before this class).
    """

    __slots__ = (
        "case_id",
        "count",
        "ids",
        "latest_ms",
        "transfer_ids",
        "rules",
        "state",
        "senders",
        "received",
        "admitted",
        "transfers",
        "appraisals",
        "violations",
        "transfer_rows",
        "moved",
    )

    def __init__(self, unique: list[Fact]) -> None:
        if not unique:
            raise ValueError("a case derivation needs at least one fact")
        ordered = sorted(unique, key=by_event_time)
        self.case_id = case_id = unique[0].case_id
        self.count = len(ordered)  # the version of the rows
        self.ids = {f.event_id for f in ordered}
        self.latest_ms = ordered[-1].occurred_ms
        self.transfer_ids = {
            f.payload.get("transfer_id") or "" for f in ordered if f.event_type in TRANSFER_KINDS
        }
        self.rules = Rules(ordered, case_id)
        self.violations: list[Violation] = []
        admitted = self._judge(ordered)
        self.admitted = 0
        self.senders: dict[str, str] = {}  # transfer_id -> agency that sent it (earliest send)
        self.received: set[str] = set()
        self.state = CaseState(case_id=admitted[0].case_id if admitted else case_id)
        self.transfers: dict[str, Transfer] = {}
        self.appraisals: dict[str, Appraisal] = {}
        # transfer_id → its last row without the version (None: no row), and the transfers the
        # facts added since then touched: an untouched transfer's row only takes the new version
        self.transfer_rows: dict[str, list[Any] | None] = {}
        self.moved: set[str] = set()
        self._fold(admitted)

    def _judge(self, ordered: list[Fact]) -> list[Fact]:
        """Judge facts (in event-time order, all after those judged before); the admitted ones
        in event-time order."""
        return admit(self.rules, ordered, self.violations)

    def _fold(self, admitted: list[Fact]) -> None:
        senders = self.senders
        for fact in admitted:
            if fact.event_type == "case_transferred" and fact.payload.get("transfer_id"):
                senders.setdefault(fact.payload["transfer_id"], fact.agency_id)
        state, received = self.state, self.received
        for fact in admitted:
            _apply(state, fact, senders, received)
        self.admitted += len(admitted)
        moved = self.moved
        for fact in admitted:
            if fact.event_type in TRANSFER_KINDS:
                moved.add(fact.payload["transfer_id"])
        pair_transfers_ordered(admitted, self.transfers)
        pair_appraisals_ordered(admitted, self.appraisals)

    def extend(self, new: list[Fact]) -> bool:
        """Add facts not seen before (distinct event ids), if they cannot change the past;
        False (and nothing changed) if they can: derive the case from all its facts then."""
        latest, transfer_ids = self.latest_ms, self.transfer_ids
        for fact in new:
            kind = fact.event_type
            if (
                fact.occurred_ms <= latest
                or kind == "case_opened"
                or (
                    kind == "case_transferred"
                    and (fact.payload.get("transfer_id") or "") in transfer_ids
                )
            ):
                return False
        ordered = sorted(new, key=by_event_time)
        self.count += len(ordered)
        self.ids.update(f.event_id for f in ordered)
        self.latest_ms = ordered[-1].occurred_ms
        transfer_ids.update(
            f.payload.get("transfer_id") or "" for f in ordered if f.event_type in TRANSFER_KINDS
        )
        self.rules.add_transfers(ordered)
        self._fold(self._judge(ordered))
        return True

    def rows(self) -> CaseRows:
        """Every ClickHouse row that describes the case now, all carrying the same version."""
        version = self.count
        transfers = self.transfers
        if self.admitted:
            state = self.state
            state.event_count = self.admitted
            state.transfers_sent = sum(1 for t in transfers.values() if t.sent_ms is not None)
            state.transfers_in_flight = sum(
                1 for t in transfers.values() if t.sent_ms is not None and t.status == "pending"
            )
        else:  # every fact of the case breaks a rule: a case row that claims nothing
            state = CaseState(case_id=self.case_id, status="")
            state.last_event_ms = self.latest_ms
        known, moved = self.transfer_rows, self.moved
        transfer_rows = []
        for transfer_id, t in transfers.items():
            if transfer_id in moved or transfer_id not in known:
                row = transfer_row(t, version)
                known[transfer_id] = None if row is None else row[:-1]
            else:
                kept = known[transfer_id]
                row = None if kept is None else [*kept, version]
            if row is not None:
                transfer_rows.append(row)
        moved.clear()
        appraisals = [appraisal_row(a, version) for a in self.appraisals.values()]
        violations = [violation_row(v, version) for v in self.violations]
        return CaseRows(case_row(state, version), transfer_rows, appraisals, violations)
