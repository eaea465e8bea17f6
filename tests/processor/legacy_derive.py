"""A frozen copy of the derivation as it was before the stored state became msgpack records and
the fold got its fast paths (authority rules, fold, pairing, rows, `apply_batch` over JSON state).

The reference the new code is compared with row for row (test_derive_equivalence.py): it is kept
verbatim, apart from imports, and must not be "improved".
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from services.contracts.reference import current_province
from services.processor.facts import Fact
from services.serving.sink import RowBatch


def ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def province_of(agency_id: str) -> str:
    return agency_id.split("-", 1)[0]


def agency_type_of(agency_id: str) -> str:
    return agency_id.split("-", 1)[1] if "-" in agency_id else ""


MS_PER_HOUR = 3_600_000


def lag_hours(start_ms: int | None, end_ms: int | None) -> float | None:
    """Hours from start to end; None while either end is unknown."""
    if start_ms is None or end_ms is None:
        return None
    return (end_ms - start_ms) / MS_PER_HOUR


@dataclass
class Transfer:
    transfer_id: str
    case_id: str
    from_agency_id: str = ""
    to_agency_id: str = ""
    reason: str = ""
    sent_ms: int | None = None
    received_ms: int | None = None
    returned_ms: int | None = None
    return_reason: str | None = None

    @property
    def status(self) -> str:
        if self.returned_ms is not None and (
            self.received_ms is None or self.returned_ms >= self.received_ms
        ):
            return "returned"
        if self.received_ms is not None:
            return "received"
        return "pending"

    @property
    def lag_hours(self) -> float | None:
        return lag_hours(self.sent_ms, self.received_ms)


@dataclass
class Appraisal:
    appraisal_id: str
    case_id: str
    agency_id: str = ""
    kind: str = ""
    requested_ms: int | None = None
    completed_ms: int | None = None

    @property
    def status(self) -> str:
        return "completed" if self.completed_ms is not None else "pending"

    @property
    def lag_hours(self) -> float | None:
        return lag_hours(self.requested_ms, self.completed_ms)


def pair_transfers(facts: Iterable[Fact]) -> dict[str, Transfer]:
    """Transfers by id from a case's facts (sorted by event time, so the first receipt counts)."""
    transfers: dict[str, Transfer] = {}
    for fact in sorted(facts, key=lambda f: f.order_key):
        if fact.event_type not in ("case_transferred", "transfer_received", "transfer_returned"):
            continue
        tid = fact.payload["transfer_id"]
        t = transfers.setdefault(tid, Transfer(transfer_id=tid, case_id=fact.case_id))
        if fact.event_type == "case_transferred" and t.sent_ms is None:
            t.from_agency_id = fact.agency_id
            t.to_agency_id = fact.payload["to_agency_id"]
            t.reason = fact.payload.get("reason") or ""
            t.sent_ms = fact.occurred_ms
        elif fact.event_type == "transfer_received" and t.received_ms is None:
            t.received_ms = fact.occurred_ms
        elif fact.event_type == "transfer_returned" and t.returned_ms is None:
            t.returned_ms = fact.occurred_ms
            t.return_reason = fact.payload.get("reason")
    return transfers


def pair_appraisals(facts: Iterable[Fact]) -> dict[str, Appraisal]:
    appraisals: dict[str, Appraisal] = {}
    for fact in sorted(facts, key=lambda f: f.order_key):
        if fact.event_type not in ("appraisal_requested", "appraisal_completed"):
            continue
        aid = fact.payload["appraisal_id"]
        a = appraisals.setdefault(aid, Appraisal(appraisal_id=aid, case_id=fact.case_id))
        a.kind = a.kind or fact.payload.get("kind") or ""
        if fact.event_type == "appraisal_requested" and a.requested_ms is None:
            a.requested_ms = fact.occurred_ms
            a.agency_id = fact.agency_id
        elif fact.event_type == "appraisal_completed" and a.completed_ms is None:
            a.completed_ms = fact.occurred_ms
            a.agency_id = a.agency_id or fact.agency_id
    return appraisals


TRANSFER_COLUMNS = [
    "transfer_id",
    "case_id",
    "from_agency_id",
    "from_province_code",
    "to_agency_id",
    "to_province_code",
    "to_agency_type",
    "reason",
    "sent_at",
    "received_at",
    "returned_at",
    "return_reason",
    "status",
    "lag_hours",
    "version",
]

APPRAISAL_COLUMNS = [
    "appraisal_id",
    "case_id",
    "agency_id",
    "kind",
    "requested_at",
    "completed_at",
    "status",
    "lag_hours",
    "version",
]


def transfer_row(t: Transfer, version: int) -> list | None:
    """Row for `transfers_state`; None until the `case_transferred` itself has been seen."""
    if t.sent_ms is None:
        return None
    return [
        t.transfer_id,
        t.case_id,
        t.from_agency_id,
        province_of(t.from_agency_id),
        t.to_agency_id,
        province_of(t.to_agency_id),
        agency_type_of(t.to_agency_id),
        t.reason,
        ms_to_datetime(t.sent_ms),
        ms_to_datetime(t.received_ms),
        ms_to_datetime(t.returned_ms),
        t.return_reason,
        t.status,
        t.lag_hours,
        version,
    ]


def appraisal_row(a: Appraisal, version: int) -> list:
    return [
        a.appraisal_id,
        a.case_id,
        a.agency_id,
        a.kind,
        ms_to_datetime(a.requested_ms),
        ms_to_datetime(a.completed_ms),
        a.status,
        a.lag_hours,
        version,
    ]


CENTRAL_PROVINCE = "00"
STEERING_COMMITTEE = "SC"
RECEIPTS = ("transfer_received", "transfer_returned")
_OWNER = re.compile(r"^(\d{2}-[A-Z]+)/")

#: event type → who may emit it (the table above; `holder` for every type not listed).
RULES: dict[str, str] = {
    "case_opened": "owner",
    "transfer_received": "addressee",
    "transfer_returned": "addressee",
    "monitoring_assigned": "steering_committee",
}

#: Agency types that request judicial appraisals (and record their completion): the bodies that
#: conduct proceedings or inspections. Not the party's commissions (PIC, IAC), which decide party
#: discipline, nor the steering committees (SC), which direct, nor judgment enforcement (CJE).
APPRAISERS = frozenset(
    {"INSP", "AUDIT", "POLICE", "PROC", "COURT", "CUSTOMS", "TAX", "MARKET", "FOREST"}
)
#: Agency types that identify and recover assets: the appraisers plus judgment enforcement (CJE),
#: which recovers what a judgment orders.
ASSET_RECOVERERS = APPRAISERS | {"CJE"}
#: event type → the agency types that may emit it (on top of being a holder).
AGENCY_TYPES: dict[str, frozenset[str]] = {
    "appraisal_requested": APPRAISERS,
    "appraisal_completed": APPRAISERS,
    "assets_recovered": ASSET_RECOVERERS,
}

#: rule names as listed in `integrity_violations.rule`.
OPENED_BY_ANOTHER = "opened_by_another_agency"
OPENED_TWICE = "opened_twice"
NOT_A_HOLDER = "not_a_holder"
WRONG_AGENCY_TYPE = "wrong_agency_type"
NOT_THE_ADDRESSEE = "not_the_addressee"
TRANSFER_NOT_ADMITTED = "transfer_not_admitted"
NOT_THE_STEERING_COMMITTEE = "not_the_steering_committee"
BEFORE_THE_OPENING = "before_the_opening"


@dataclass(frozen=True)
class Violation:
    fact: Fact
    rule: str
    detail: str


@dataclass(frozen=True)
class Verdict:
    admitted: list[Fact]  # in event-time order; includes facts that cannot be judged yet
    violations: list[Violation]


def case_owner(case_id: str) -> str | None:
    """The agency a conventional case id names (`20-POLICE/2024/7` → `20-POLICE`)."""
    match = _OWNER.match(case_id)
    return match.group(1) if match else None


@lru_cache(maxsize=4096)
def _successor(province: str, day: str) -> str:
    try:
        return current_province(province, datetime.fromisoformat(day).date())
    except (KeyError, ValueError):
        return province


def same_office(actor: str, holder: str, at_ms: int) -> bool:
    """The holder itself, or the agency of the same type in its successor province then."""
    if actor == holder:
        return True
    if agency_type_of(actor) != agency_type_of(holder):
        return False
    day = datetime.fromtimestamp(at_ms / 1000, UTC).date().isoformat()
    return province_of(actor) == _successor(province_of(holder), day)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def judge(facts: Iterable[Fact]) -> Verdict:
    """Which of a case's facts count, and which break a rule (with the rule and why)."""
    unique = {f.event_id: f for f in facts}.values()
    transfers: dict[str, Fact] = {}  # transfer_id → its earliest case_transferred
    for fact in sorted(unique, key=lambda f: f.order_key):
        if fact.event_type == "case_transferred":
            transfers.setdefault(fact.payload.get("transfer_id") or "", fact)

    def order(fact: Fact) -> tuple[int, int, str]:
        # A receipt is judged after its transfer even if its clock says earlier.
        sent = transfers.get(fact.payload.get("transfer_id") or "")
        if fact.event_type in RECEIPTS and sent is not None:
            return (max(fact.occurred_ms, sent.occurred_ms), 1, fact.event_id)
        return (fact.occurred_ms, 0, fact.event_id)

    case_id = next(iter(unique)).case_id if unique else ""
    owner = case_owner(case_id)
    openings = sorted(
        (f for f in unique if f.event_type == "case_opened"), key=lambda f: f.order_key
    )
    opening = next(
        (f for f in openings if owner is None or same_office(f.agency_id, owner, f.occurred_ms)),
        None,
    )
    opener: Fact | None = None
    holders: set[str] = set()
    admitted_transfers: set[str] = set()
    admitted: list[Fact] = []
    violations: list[Violation] = []

    def holds(agency: str, at_ms: int) -> bool | None:
        known = holders or ({owner} if owner else set())
        if not known:
            return None  # nobody known to hold the case yet: cannot be judged
        return any(same_office(agency, h, at_ms) for h in known)

    def refuse(fact: Fact, rule: str, detail: str) -> None:
        violations.append(Violation(fact, rule, detail))

    for fact in sorted(unique, key=order):
        kind, agency, at = fact.event_type, fact.agency_id, fact.occurred_ms
        if kind != "case_opened" and opening is not None and at < opening.occurred_ms:
            refuse(
                fact,
                BEFORE_THE_OPENING,
                f"dated {_when(at)}, before the case was opened at {_when(opening.occurred_ms)}",
            )
            continue
        if kind == "case_opened":
            if opener is not None:
                refuse(
                    fact,
                    OPENED_TWICE,
                    f"already opened by {opener.agency_id} at {_when(opener.occurred_ms)}",
                )
                continue
            if owner is not None and not same_office(agency, owner, at):
                refuse(fact, OPENED_BY_ANOTHER, f"the case id names {owner}, not {agency}")
                continue
            opener = fact
            holders = {agency}
        elif kind in RECEIPTS:
            transfer_id = fact.payload.get("transfer_id") or ""
            sent = transfers.get(transfer_id)
            if sent is None:
                admitted.append(fact)  # its transfer has not arrived: no custody yet
                continue
            if transfer_id not in admitted_transfers:
                refuse(fact, TRANSFER_NOT_ADMITTED, f"transfer {transfer_id} itself breaks a rule")
                continue
            addressee = sent.payload.get("to_agency_id") or ""
            if not same_office(agency, addressee, at):
                refuse(
                    fact,
                    NOT_THE_ADDRESSEE,
                    f"transfer {transfer_id} is addressed to {addressee}, not {agency}",
                )
                continue
            if kind == "transfer_received":
                holders.add(agency)
            elif opener is None or agency != opener.agency_id:
                holders.discard(agency)
        elif kind == "monitoring_assigned":
            home = (
                province_of(opener.agency_id) if opener else (province_of(owner) if owner else None)
            )
            if agency_type_of(agency) != STEERING_COMMITTEE or (
                home is not None
                and province_of(agency) != CENTRAL_PROVINCE
                and not same_office(agency, f"{home}-{STEERING_COMMITTEE}", at)
            ):
                where = f"{home}-SC or " if home else ""
                refuse(
                    fact,
                    NOT_THE_STEERING_COMMITTEE,
                    f"monitoring is assigned by {where}00-SC, not {agency}",
                )
                continue
        else:
            allowed = AGENCY_TYPES.get(kind)
            if allowed is not None and agency_type_of(agency) not in allowed:
                refuse(
                    fact,
                    WRONG_AGENCY_TYPE,
                    f"{kind} is recorded by {', '.join(sorted(allowed))}, not {agency}",
                )
                continue
            verdict = holds(agency, at)
            if verdict is False:
                held_by = ", ".join(sorted(holders or {owner or ""}))
                refuse(
                    fact,
                    NOT_A_HOLDER,
                    f"{agency} does not hold the case at {_when(at)} (held by {held_by})",
                )
                continue
            if kind == "case_transferred":
                admitted_transfers.add(fact.payload.get("transfer_id") or "")
        admitted.append(fact)
    admitted.sort(key=lambda f: f.order_key)
    return Verdict(admitted, violations)


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
    ordered = sorted({f.event_id: f for f in facts}.values(), key=lambda f: f.order_key)
    if not ordered:
        raise ValueError("a case state needs at least one fact")
    state = CaseState(case_id=ordered[0].case_id)
    senders: dict[str, str] = {}  # transfer_id -> agency that sent it (its earliest send)
    for fact in ordered:
        if fact.event_type == "case_transferred" and fact.payload.get("transfer_id"):
            senders.setdefault(fact.payload["transfer_id"], fact.agency_id)
    received: set[str] = set()
    for fact in ordered:
        _apply(state, fact, senders, received)
    state.event_count = len(ordered)
    transfers = pair_transfers(ordered)
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
    version = len(unique)
    verdict = judge(unique)
    admitted = verdict.admitted
    if admitted:
        state = fold(admitted)
    else:  # every fact of the case breaks a rule: a case row that claims nothing
        state = CaseState(case_id=unique[0].case_id, status="")
        state.last_event_ms = max(f.occurred_ms for f in unique)
    transfers = [
        row
        for t in pair_transfers(admitted).values()
        if (row := transfer_row(t, version)) is not None
    ]
    appraisals = [appraisal_row(a, version) for a in pair_appraisals(admitted).values()]
    violations = [violation_row(v, version) for v in verdict.violations]
    return CaseRows(case_row(state, version), transfers, appraisals, violations)


EVENT_COLUMNS = [
    "event_id",
    "event_type",
    "case_id",
    "agency_id",
    "province_code",
    "agency_type",
    "occurred_at",
    "utc_offset_minutes",
    "sequence",
    "transfer_id",
    "to_agency_id",
    "stage",
    "outcome",
    "payload",
]


def event_row(fact: Fact) -> list[Any]:
    """The fact as a row of the `events` table (column order = EVENT_COLUMNS)."""
    p = fact.payload
    return [
        fact.event_id,
        fact.event_type,
        fact.case_id,
        fact.agency_id,
        province_of(fact.agency_id),
        agency_type_of(fact.agency_id),
        ms_to_datetime(fact.occurred_ms),
        fact.utc_offset_minutes,
        fact.sequence,
        p.get("transfer_id") or "",
        p.get("to_agency_id") or "",
        p.get("stage") or "",
        p.get("outcome") or "",
        json.dumps(p, sort_keys=True, ensure_ascii=False),
    ]


StoredFacts = list[list[Any]]  # a case's facts as JSON-able lists (decoded state)
StoredState = bytes  # a case's state as the store and the changelog keep it


def encode_state(stored: StoredFacts) -> StoredState:
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode()


def decode_state(raw: StoredState | None) -> StoredFacts:
    return [] if raw is None else json.loads(raw)


def fact_to_stored(fact: Fact) -> list[Any]:
    return [
        fact.event_id,
        fact.event_type,
        fact.case_id,
        fact.agency_id,
        fact.occurred_ms,
        fact.utc_offset_minutes,
        fact.sequence,
        fact.payload,
    ]


@dataclass
class BatchResult:
    rows: RowBatch
    changed: dict[str, StoredState] = field(default_factory=dict)  # case_id → new stored state
    duplicates: int = 0


def agency_activity(facts: Iterable[Fact], now_ms: int | None = None) -> list[list[Any]]:
    """One `agency_activity` row per agency in the batch: freshness and sequence for ops."""
    now = ms_to_datetime(now_ms if now_ms is not None else int(time.time() * 1000))
    per_agency: dict[str, list[Any]] = {}
    for fact in facts:
        entry = per_agency.setdefault(fact.agency_id, [fact.agency_id, 0, 0, None, now])
        entry[1] += 1
        entry[2] = max(entry[2], fact.occurred_ms)
        if fact.sequence is not None:
            entry[3] = fact.sequence if entry[3] is None else max(entry[3], fact.sequence)
    for entry in per_agency.values():
        entry[2] = ms_to_datetime(entry[2])
    return list(per_agency.values())


def apply_batch(facts: Iterable[Fact], load: Callable[[str], StoredState | None]) -> BatchResult:
    """Add the facts to their cases' stored sets and derive every touched case's rows once.

    A duplicate (event_id already stored) changes no state, yet its case's rows are still
    derived and written: after a crash between the state update and the ClickHouse write, the
    replayed batch must still produce the rows.
    """
    rows = RowBatch()
    facts_seen: list[Fact] = []
    touched: dict[str, StoredFacts] = {}
    known: dict[str, set[str]] = {}
    result = BatchResult(rows)
    for fact in facts:
        facts_seen.append(fact)
        rows.add("events", event_row(fact))
        stored = touched.get(fact.case_id)
        if stored is None:
            stored = decode_state(load(fact.case_id))
            touched[fact.case_id] = stored
            known[fact.case_id] = {f[0] for f in stored}
        if fact.event_id in known[fact.case_id]:
            result.duplicates += 1
            continue
        known[fact.case_id].add(fact.event_id)
        stored.append(fact_to_stored(fact))
        result.changed[fact.case_id] = stored  # type: ignore[assignment] - encoded below
    rows.extend("agency_activity", agency_activity(facts_seen))
    for stored in touched.values():
        derived = derive_rows(Fact(*f) for f in stored)
        rows.add("cases_state", derived.case)
        rows.extend("transfers_state", derived.transfers)
        rows.extend("appraisals_state", derived.appraisals)
        rows.extend("integrity_violations_state", derived.violations)
    result.changed = {case_id: encode_state(stored) for case_id, stored in result.changed.items()}  # type: ignore[arg-type]
    return result
