"""Transfer and appraisal pairing: the inter-agency lag, computed from event time.

A transfer is the pair (`case_transferred`, `transfer_received` | `transfer_returned`) sharing a
`transfer_id`; they may arrive in any order, so pairing works on the whole set of a case's facts,
never on arrival order. Appraisals pair `appraisal_requested` with `appraisal_completed` the same
way. Pure functions: the worker, the tests and the rollup cross-checks all use these.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

import msgspec

from services.processor.facts import Fact, agency_type_of, ms_to_datetime, province_of

MS_PER_HOUR = 3_600_000


def lag_hours(start_ms: int | None, end_ms: int | None) -> float | None:
    """Hours from start to end; None while either end is unknown."""
    if start_ms is None or end_ms is None:
        return None
    return (end_ms - start_ms) / MS_PER_HOUR


class Transfer(msgspec.Struct, gc=False):
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


class Appraisal(msgspec.Struct, gc=False):
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


#: A fact's place in its case's event-time order (`Fact.order_key`, without the property call).
by_event_time = attrgetter("occurred_ms", "event_id")

TRANSFER_EVENTS = frozenset({"case_transferred", "transfer_received", "transfer_returned"})
APPRAISAL_EVENTS = frozenset({"appraisal_requested", "appraisal_completed"})


def pair_transfers(facts: Iterable[Fact]) -> dict[str, Transfer]:
    """Transfers by id from a case's facts (sorted by event time, so the first receipt counts)."""
    return pair_transfers_ordered(sorted(facts, key=by_event_time))


def pair_transfers_ordered(
    ordered: Iterable[Fact], transfers: dict[str, Transfer] | None = None
) -> dict[str, Transfer]:
    """`pair_transfers` of facts already in event-time order (the fold sorts them once); given
    `transfers` paired from earlier facts, it goes on with those (and returns them)."""
    if transfers is None:
        transfers = {}
    for fact in ordered:
        kind = fact.event_type
        if kind not in TRANSFER_EVENTS:
            continue
        tid = fact.payload["transfer_id"]
        t = transfers.get(tid)
        if t is None:
            t = transfers[tid] = Transfer(transfer_id=tid, case_id=fact.case_id)
        if kind == "case_transferred":
            if t.sent_ms is None:
                t.from_agency_id = fact.agency_id
                t.to_agency_id = fact.payload["to_agency_id"]
                t.reason = fact.payload.get("reason") or ""
                t.sent_ms = fact.occurred_ms
        elif kind == "transfer_received":
            if t.received_ms is None:
                t.received_ms = fact.occurred_ms
        elif t.returned_ms is None:
            t.returned_ms = fact.occurred_ms
            t.return_reason = fact.payload.get("reason")
    return transfers


def pair_appraisals(facts: Iterable[Fact]) -> dict[str, Appraisal]:
    return pair_appraisals_ordered(sorted(facts, key=by_event_time))


def pair_appraisals_ordered(
    ordered: Iterable[Fact], appraisals: dict[str, Appraisal] | None = None
) -> dict[str, Appraisal]:
    """`pair_appraisals` of facts already in event-time order (going on with `appraisals`)."""
    if appraisals is None:
        appraisals = {}
    for fact in ordered:
        if fact.event_type not in APPRAISAL_EVENTS:
            continue
        aid = fact.payload["appraisal_id"]
        a = appraisals.get(aid)
        if a is None:
            a = appraisals[aid] = Appraisal(appraisal_id=aid, case_id=fact.case_id)
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
