"""Who may emit which event for a case: the authority rules, written once.

Before these rules any agency could forge another's case: a `case_resolved` from `20-INSP` for
a police case was folded like the police's own, so one agency could bend every figure the
steering committees read. The gateway, the ACLs and the worker check only that an event's
`agency_id` is its publisher's; these rules check that the publisher may act on *that case*.

Judged on the whole set of a case's facts in event-time order, never on arrival order: a
holder's event that arrives before the transfer that made it a holder is a violation until that
transfer arrives, and from then on counts. A violating fact changes no derived row and no
rollup; it stays in `events` (the record) and is listed in `integrity_violations`.

The rules (schemas/README.md gives the reasoning):

| event | who may emit it |
| --- | --- |
| case_opened | the agency the case id names (`<agency_id>/<year>/<n>`), once; any agency for ids outside that convention, once |
| transfer_received, transfer_returned | the transfer's `to_agency_id` (or its successor after a province merger) |
| monitoring_assigned | a steering committee (`SC`) of the case's province or the central one (`00-SC`) |
| appraisal_requested, appraisal_completed | a holder of one of the `APPRAISERS` types |
| assets_recovered | a holder of one of the `ASSET_RECOVERERS` types |
| every other event | a holder of the case at that time |

And whoever emits it, no event of a case may happen before the case's (admitted) opening: a date
before the opening is a back-dated write or a typing error, and either would move the event
into a period where the case did not exist.

Holders: the opener, plus every agency that *received* a transfer of the case (until it
returns it). A case runs on parallel tracks (criminal at the police, party discipline at the
party inspection commission, recovery at the opener), so a sender keeps acting on its own part
after a transfer; what no agency can do is act on a case it was never given. After the 2025
province merger an agency of the successor province of the same type acts for its predecessor.

A fact whose rule cannot be judged yet (a receipt whose transfer has not arrived, any event of
a case with neither a known opening nor an id naming its owner) is admitted as before (it pairs
up, it counts) but gives no custody; it is judged again with every new fact of the case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import msgspec

from services.contracts.reference import current_province
from services.processor.facts import Fact, agency_type_of, province_of
from services.processor.transfer_lag import by_event_time

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


class Violation(msgspec.Struct, frozen=True, gc=False):
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
    unique = {f.event_id: f for f in facts}
    case_id = next(iter(unique.values())).case_id if unique else ""
    return judge_ordered(sorted(unique.values(), key=by_event_time), case_id)


def judge_ordered(ordered: list[Fact], case_id: str) -> Verdict:
    """`judge` of distinct facts of the case `case_id` already in event-time order
    (`by_event_time`): derive_rows sorts a case's facts once and hands them here. `admitted`
    comes back in that order."""
    violations: list[Violation] = []
    admitted = admit(Rules(ordered, case_id), ordered, violations)
    return Verdict(admitted, violations)


def admit(rules: Rules, ordered: list[Fact], violations: list[Violation]) -> list[Fact]:
    """Judge facts in event-time order (all after those `rules` judged before): the admitted
    ones in event-time order; each refused one's violation appended to `violations`."""
    judged = rules.judging_order(ordered)
    admitted: list[Fact] = []
    for fact in judged:
        violation = rules.judge(fact)
        if violation is None:
            admitted.append(fact)
        else:
            violations.append(violation)
    if judged is not ordered:
        admitted.sort(key=by_event_time)
    return admitted


def _first_opening(openings: Iterable[Fact], owner: str | None) -> Fact | None:
    """The opening the rules admit among openings in event-time order: the first by the office
    the case id names, or the first of all when it names none (the `case_opened` rule)."""
    return next(
        (f for f in openings if owner is None or same_office(f.agency_id, owner, f.occurred_ms)),
        None,
    )


def admitted_opening(facts: Iterable[Fact], case_id: str) -> Fact | None:
    """The opening of a case among these of its facts (any order), None when none is admitted:
    the opening `judge` admits, whose agency's province is the case's home."""
    openings = sorted((f for f in facts if f.event_type == "case_opened"), key=by_event_time)
    return _first_opening(openings, case_owner(case_id))


class Rules:
    """The rules' walk over one case's facts in judging order, one fact at a time.

    Built from the case's facts in event-time order (it needs their transfers and openings up
    front), then `judge` each fact in `judging_order`. The walk can go on with facts that come
    strictly after every fact it has seen, when none of them is an opening or a transfer that an
    earlier fact names (`add_transfers`): such facts change nothing that was judged before
    (case_state.CaseDerivation.extend checks this).
    """

    __slots__ = ("transfers", "owner", "opened_at", "opener", "holders", "admitted_transfers")

    def __init__(self, ordered: list[Fact], case_id: str) -> None:
        self.transfers: dict[str, Fact] = {}  # transfer_id → its earliest case_transferred
        openings: list[Fact] = []  # in event-time order
        self.add_transfers(ordered)
        for fact in ordered:
            if fact.event_type == "case_opened":
                openings.append(fact)
        self.owner = owner = case_owner(case_id)
        opening = _first_opening(openings, owner)
        self.opened_at = opening.occurred_ms if opening is not None else None
        self.opener: Fact | None = None
        self.holders: set[str] = set()
        self.admitted_transfers: set[str] = set()

    def add_transfers(self, ordered: list[Fact]) -> None:
        """Note the transfers among facts in event-time order (the earliest of an id counts)."""
        transfers = self.transfers
        for fact in ordered:
            if fact.event_type == "case_transferred":
                transfers.setdefault(fact.payload.get("transfer_id") or "", fact)

    def order(self, fact: Fact) -> tuple[int, int, str]:
        # A receipt is judged after its transfer even if its clock says earlier.
        sent = self.transfers.get(fact.payload.get("transfer_id") or "")
        if fact.event_type in RECEIPTS and sent is not None:
            return (max(fact.occurred_ms, sent.occurred_ms), 1, fact.event_id)
        return (fact.occurred_ms, 0, fact.event_id)

    def judging_order(self, ordered: list[Fact]) -> list[Fact]:
        """The facts (in event-time order) in the order they are judged: `ordered` itself
        unless a receipt of a known transfer is among them."""
        transfers = self.transfers
        if transfers and any(f.event_type in RECEIPTS for f in ordered):
            return sorted(ordered, key=self.order)
        return ordered

    def holds(self, agency: str, at_ms: int) -> bool | None:
        owner = self.owner
        known = self.holders or ({owner} if owner else set())
        if not known:
            return None  # nobody known to hold the case yet: cannot be judged
        return agency in known or any(same_office(agency, h, at_ms) for h in known)

    def judge(self, fact: Fact) -> Violation | None:
        """The next fact in judging order: None when it is admitted, else what it breaks."""
        kind, agency, at = fact.event_type, fact.agency_id, fact.occurred_ms
        owner, opener, opened_at = self.owner, self.opener, self.opened_at
        if kind != "case_opened" and opened_at is not None and at < opened_at:
            return Violation(
                fact,
                BEFORE_THE_OPENING,
                f"dated {_when(at)}, before the case was opened at {_when(opened_at)}",
            )
        if kind == "case_opened":
            if opener is not None:
                return Violation(
                    fact,
                    OPENED_TWICE,
                    f"already opened by {opener.agency_id} at {_when(opener.occurred_ms)}",
                )
            if owner is not None and not same_office(agency, owner, at):
                return Violation(
                    fact, OPENED_BY_ANOTHER, f"the case id names {owner}, not {agency}"
                )
            self.opener = fact
            self.holders = {agency}
        elif kind in RECEIPTS:
            transfer_id = fact.payload.get("transfer_id") or ""
            sent = self.transfers.get(transfer_id)
            if sent is None:
                return None  # its transfer has not arrived: admitted, no custody yet
            if transfer_id not in self.admitted_transfers:
                return Violation(
                    fact, TRANSFER_NOT_ADMITTED, f"transfer {transfer_id} itself breaks a rule"
                )
            addressee = sent.payload.get("to_agency_id") or ""
            if not same_office(agency, addressee, at):
                return Violation(
                    fact,
                    NOT_THE_ADDRESSEE,
                    f"transfer {transfer_id} is addressed to {addressee}, not {agency}",
                )
            if kind == "transfer_received":
                self.holders.add(agency)
            elif opener is None or agency != opener.agency_id:
                self.holders.discard(agency)
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
                return Violation(
                    fact,
                    NOT_THE_STEERING_COMMITTEE,
                    f"monitoring is assigned by {where}00-SC, not {agency}",
                )
        else:
            allowed = AGENCY_TYPES.get(kind)
            if allowed is not None and agency_type_of(agency) not in allowed:
                return Violation(
                    fact,
                    WRONG_AGENCY_TYPE,
                    f"{kind} is recorded by {', '.join(sorted(allowed))}, not {agency}",
                )
            if self.holds(agency, at) is False:
                held_by = ", ".join(sorted(self.holders or {owner or ""}))
                return Violation(
                    fact,
                    NOT_A_HOLDER,
                    f"{agency} does not hold the case at {_when(at)} (held by {held_by})",
                )
            if kind == "case_transferred":
                self.admitted_transfers.add(fact.payload.get("transfer_id") or "")
        return None
