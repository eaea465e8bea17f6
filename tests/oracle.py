"""The rows the analyst tables must hold, computed from the contract alone: an independent oracle.

`expected_tables(events)` takes events in their JSON form (the dicts of a `.jsonl` publish file)
and returns the expected rows of the views `cases`, `transfers`, `appraisals` and of the table
`events` (without the wall-clock `ingested_at`). `assert_tables_match(actual, expected)` compares
them with what ClickHouse (or the worker's pure derivation) produced, column by column.

Why a second implementation: the worker's tests used to compare the worker with itself. This
module is a second, independent reading of the contract (the product brief's event and metric
contracts, `schemas/case_event.avsc` and `schemas/README.md`, `schemas/reference/*.csv`, the
column comments of `infra/clickhouse/migrations/0001_facts.sql`). It imports nothing from
`services/`: if it and the worker disagree, one of them misreads the contract. It validates
only what it needs (offset, known agency): the events given to it are assumed valid, as every
event in the tables is.

Rules read from the contract
----------------------------
* Events are de-duplicated by `event_id` (the idempotency key); every row is a function of the
  *set* of a case's events, so delivery order and repeats change nothing. A repeated `event_id`
  with different content is an error (a retry must resend the same event).
* `occurred_at` is the UTC instant of the ISO string, sub-millisecond digits truncated;
  `utc_offset_minutes` is the offset the agency wrote; the *local* date (in that offset) is the
  date at which an agency must be known in the reference data.
* The province of an agency at a date comes from the reference CSVs: a row of
  `agencies_extra.csv` decides for its agency id, otherwise the agency exists while its province
  code has a valid row in `provinces.csv` (the 2025-07-01 merger ends `34`, `45`, ...).
  `agency_type` is the type code after the dash.
* `events` row: `transfer_id` for the three transfer events, `to_agency_id` for
  `case_transferred`, `stage` for `stage_changed`, `outcome` for `case_resolved`, '' otherwise;
  `payload` is the whole payload record, i.e. every field of the Avro record of the event type,
  an absent optional field holding its default (null) -- the normalized form of schemas/README.
* `transfers`: one row per transfer. Sender = agency emitting `case_transferred`, receiver its
  `to_agency_id`, provinces of both at the transfer's local date, `to_agency_type` the receiver's
  type. Status `pending | received | returned`. `lag_hours` = received_at - sent_at in hours
  whenever both are known (column comment), also for a transfer returned after its receipt.
* `cases`: the opening columns come from `case_opened`; `province_code` is the opening agency's
  province at opening. A case is resolved when its latest `case_resolved`/`case_reopened` is a
  `case_resolved` ("a reopened case counts as pending again"). `reopened_count` counts
  `case_reopened`. `monitored`/`monitored_at`: any `monitoring_assigned` / the first one ("cases
  with monitoring_assigned up to the end of P"). Discipline counts are summed per target, asset
  amounts summed (they are increments). `transfers_sent` = transfers sent by the case,
  `transfers_in_flight` = those still pending. `last_event_at` = latest event time,
  `event_count` = number of distinct events.
* `current_agency_id`: the agency holding the case file after its last hand-over: the opening
  agency, then the agency that acknowledged a transfer (`transfer_received`). A
  `transfer_returned` from the agency holding the file gives it back to the transfer's sender
  (the receiver "sends a transferred case back to the sender without taking it over"). A return
  from an agency that does not hold the file changes nothing: it never received the transfer
  (the file did not move), or the file has reached another agency since (cases may have several
  transfers under way, e.g. to police and, for party members, to the party inspection
  commission). The worker disagrees here: it keeps the agency of the latest receipt, even after
  that agency returned the case.
* `appraisals`: one row per `appraisal_id`; `lag_hours` = completed - requested in hours.

Rules taken from the worker because the contract is silent
-----------------------------------------------------------
1. Events with the same event time are ordered by `event_id`, so "first" and "latest" are
   always defined.
2. A transfer has a row only once its `case_transferred` is known (a lone receipt has no
   sender, receiver or sent_at), and only such transfers count in `transfers_sent`.
3. When a transfer has several receipts or several returns (distinct event ids), the earliest
   counts; several `case_transferred` with one `transfer_id`: the earliest defines it.
4. A transfer with both a receipt and a return is `returned` when the return is at or after the
   receipt, `received` when the receipt came later.
5. Several `case_opened`: the earliest defines the opening columns. Without any, they are empty:
   '' for text, 0 for `prominent`, null for `opened_at` and `damage_vnd`, '' for `province_code`.
6. `current_agency_id` of a case without `case_opened` and without hand-over: the agency of its
   earliest event. Only the earliest `case_opened` is a hand-over.
7. `current_stage` is the stage of the latest `stage_changed` ('' when none).
8. `outcome` and `resolved_at` are those of the latest `case_resolved` while the case is
   resolved, '' and null once it is reopened. `reopened_count` counts every `case_reopened`.
9. `monitoring_level` is the level of the latest `monitoring_assigned` ('' when none).
10. An appraisal has a row as soon as one of its events is known; `agency_id` is the agency of
    the earliest `appraisal_requested`, else of the earliest `appraisal_completed`; `kind` comes
    from the appraisal's earliest event; several requests or completions: the earliest counts.
11. Text columns with nothing to say hold '' (the columns are not Nullable), except
    `return_reason`, which is null until the transfer is returned.

Values and comparison
---------------------
Rows are tuples in the views' column order (`COLUMNS`). Values are what clickhouse-connect
returns by default: DateTime64(3, 'UTC') as *naive* datetimes in UTC, UInt8 flags as 0/1, UUIDs
as text (`comparable` turns `uuid.UUID` into text and aware datetimes into naive UTC, so rows
built by the worker in memory compare too). `events.payload` is compared as parsed JSON: the
contract fixes its content, not its formatting. `lag_hours` floats compare with pytest.approx.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

# The views' columns (= the *_state tables of 0001_facts.sql without `version`), and `events`
# without `ingested_at` (0005). test_oracle checks these lists against the migration files.
CASE_COLUMNS = (
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
)
TRANSFER_COLUMNS = (
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
)
APPRAISAL_COLUMNS = (
    "appraisal_id",
    "case_id",
    "agency_id",
    "kind",
    "requested_at",
    "completed_at",
    "status",
    "lag_hours",
)
EVENT_COLUMNS = (
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
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "cases": CASE_COLUMNS,
    "transfers": TRANSFER_COLUMNS,
    "appraisals": APPRAISAL_COLUMNS,
    "events": EVENT_COLUMNS,
}

# Which payload record each event type carries (the doc of the EventType enum in the avsc).
PAYLOAD_RECORD = {
    "case_opened": "CaseOpened",
    "case_transferred": "CaseTransferred",
    "transfer_received": "TransferReceived",
    "transfer_returned": "TransferReturned",
    "stage_changed": "StageChanged",
    "appraisal_requested": "Appraisal",
    "appraisal_completed": "Appraisal",
    "monitoring_assigned": "MonitoringAssigned",
    "discipline_imposed": "DisciplineImposed",
    "assets_recovered": "AssetsRecovered",
    "case_resolved": "CaseResolved",
    "case_reopened": "CaseReopened",
}
TRANSFER_EVENTS = ("case_transferred", "transfer_received", "transfer_returned")
APPRAISAL_EVENTS = ("appraisal_requested", "appraisal_completed")


# --------------------------------------------------------------------------- reference data


def _day(text: str) -> date | None:
    return date.fromisoformat(text) if text else None


def _valid_on(row: Mapping[str, str], on: date) -> bool:
    """Reference rows are valid from `valid_from` to `valid_to`, both inclusive, empty = open."""
    start, end = _day(row["valid_from"]), _day(row["valid_to"])
    return (start is None or start <= on) and (end is None or on <= end)


@cache
def _reference(name: str) -> tuple[dict[str, str], ...]:
    with open(SCHEMAS / "reference" / name, encoding="utf-8", newline="") as f:
        return tuple(csv.DictReader(f))


def agency_type(agency_id: str) -> str:
    """`<province code>-<type code>` -> the type code (e.g. 20-POLICE -> POLICE)."""
    return agency_id.partition("-")[2]


def province_at(agency_id: str, on: date) -> str:
    """Province code of an agency on a (local) date; ValueError if the agency is unknown then.

    For a known agency this is always the code before the dash: an agency id names its province
    as it was at the time (34-POLICE is Thái Bình's police until 2025-06-30, and no longer exists
    after the merger into Hưng Yên, whose police is 33-POLICE). Looking it up anyway makes the
    oracle refuse events that could never have reached the tables.
    """
    code, _, kind = agency_id.partition("-")
    if kind not in {row["code"] for row in _reference("agency_types.csv")}:
        raise ValueError(f"unknown agency type in {agency_id!r}")
    extra = [row for row in _reference("agencies_extra.csv") if row["agency_id"] == agency_id]
    if extra:  # explicit rows take precedence for their agency id
        known = any(_valid_on(row, on) for row in extra)
    else:
        known = any(
            row["code"] == code and _valid_on(row, on) for row in _reference("provinces.csv")
        )
    if not known:
        raise ValueError(f"{agency_id!r} is not a known agency on {on}")
    return code


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One event of the JSON form, with its event time resolved."""

    event_id: str
    event_type: str
    case_id: str
    agency_id: str
    occurred_at: datetime  # naive UTC, whole milliseconds
    utc_offset_minutes: int
    local_date: date  # the date the agency wrote: decides reference-data validity
    sequence: int | None
    payload: Mapping[str, Any]

    @property
    def order(self) -> tuple[datetime, str]:
        """Event time, then event_id for equal times (rule 1)."""
        return (self.occurred_at, self.event_id)


def parse_event(obj: Mapping[str, Any]) -> Event:
    written = datetime.fromisoformat(obj["occurred_at"])
    offset = written.utcoffset()
    if offset is None:
        raise ValueError(f"occurred_at without an offset: {obj['occurred_at']!r}")
    utc = written.astimezone(UTC).replace(tzinfo=None)
    return Event(
        event_id=str(obj["event_id"]).lower(),
        event_type=obj["event_type"],
        case_id=obj["case_id"],
        agency_id=obj["agency_id"],
        occurred_at=utc.replace(microsecond=utc.microsecond // 1000 * 1000),
        utc_offset_minutes=int(offset.total_seconds()) // 60,
        local_date=written.date(),
        sequence=obj.get("sequence"),
        payload=dict(obj["payload"]),
    )


def unique_events(events: Iterable[Mapping[str, Any]]) -> list[Event]:
    """The distinct events, in event-time order: the set every row is a function of."""
    by_id: dict[str, Event] = {}
    for obj in events:
        event = parse_event(obj)
        first = by_id.setdefault(event.event_id, event)
        if first != event:
            raise ValueError(f"event_id {event.event_id} was sent with two different contents")
    return sorted(by_id.values(), key=lambda e: e.order)


@cache
def _payload_defaults() -> dict[str, dict[str, Any]]:
    """Record name -> {field: default} for the payload fields that may be absent (avsc)."""
    schema = json.loads((SCHEMAS / "case_event.avsc").read_text(encoding="utf-8"))
    (payload,) = (f for f in schema["fields"] if f["name"] == "payload")
    return {
        record["name"]: {f["name"]: f["default"] for f in record["fields"] if "default" in f}
        for record in payload["type"]
    }


def whole_payload(event: Event) -> dict[str, Any]:
    """The payload record with every field, as the Avro form carries it."""
    return {**_payload_defaults()[PAYLOAD_RECORD[event.event_type]], **event.payload}


def event_row(e: Event) -> tuple:
    p = e.payload
    return (
        e.event_id,
        e.event_type,
        e.case_id,
        e.agency_id,
        province_at(e.agency_id, e.local_date),
        agency_type(e.agency_id),
        e.occurred_at,
        e.utc_offset_minutes,
        e.sequence,
        p["transfer_id"] if e.event_type in TRANSFER_EVENTS else "",
        p["to_agency_id"] if e.event_type == "case_transferred" else "",
        p["stage"] if e.event_type == "stage_changed" else "",
        p["outcome"] if e.event_type == "case_resolved" else "",
        whole_payload(e),
    )


# --------------------------------------------------------------------------- transfers


def _first(events: Iterable[Event], *types: str) -> Event | None:
    """The earliest event of the given types (events are in event-time order)."""
    return next((e for e in events if e.event_type in types), None)


def _last(events: Sequence[Event], *types: str) -> Event | None:
    return _first(reversed(events), *types)


def _hours(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() / 3600


class Transfer(NamedTuple):
    """A transfer as its three kinds of events describe it (rules 2-4)."""

    sent: Event
    received: Event | None
    returned: Event | None

    @property
    def status(self) -> str:
        returned, received = self.returned, self.received
        if returned and (not received or returned.occurred_at >= received.occurred_at):
            return "returned"
        return "received" if self.received else "pending"

    def row(self) -> tuple:
        sent, received, returned = self.sent, self.received, self.returned
        to_agency = sent.payload["to_agency_id"]
        return (
            sent.payload["transfer_id"],
            sent.case_id,
            sent.agency_id,
            province_at(sent.agency_id, sent.local_date),
            to_agency,
            province_at(to_agency, sent.local_date),
            agency_type(to_agency),
            sent.payload["reason"],
            sent.occurred_at,
            received.occurred_at if received else None,
            returned.occurred_at if returned else None,
            returned.payload["reason"] if returned else None,
            self.status,
            _hours(sent.occurred_at, received.occurred_at if received else None),
        )


def _grouped(events: Iterable[Event], types: Sequence[str], key: str) -> dict[str, list[Event]]:
    """Events of the given types grouped by a payload id, each group in event-time order."""
    groups: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.event_type in types:
            groups[e.payload[key]].append(e)
    return groups


def transfers_of(case_events: Sequence[Event]) -> dict[str, Transfer]:
    """The case's transfers by id; a transfer whose case_transferred is unknown has none."""
    transfers = {}
    for transfer_id, events in _grouped(case_events, TRANSFER_EVENTS, "transfer_id").items():
        sent = _first(events, "case_transferred")
        if sent is not None:
            transfers[transfer_id] = Transfer(
                sent, _first(events, "transfer_received"), _first(events, "transfer_returned")
            )
    return transfers


# --------------------------------------------------------------------------- appraisals


def appraisal_rows(case_events: Sequence[Event]) -> list[tuple]:
    rows = []
    for appraisal_id, events in _grouped(case_events, APPRAISAL_EVENTS, "appraisal_id").items():
        requested = _first(events, "appraisal_requested")
        completed = _first(events, "appraisal_completed")
        at_requested = requested.occurred_at if requested else None
        at_completed = completed.occurred_at if completed else None
        rows.append(
            (
                appraisal_id,
                events[0].case_id,
                (requested or completed or events[0]).agency_id,
                events[0].payload["kind"],
                at_requested,
                at_completed,
                "completed" if completed else "pending",
                _hours(at_requested, at_completed),
            )
        )
    return rows


# --------------------------------------------------------------------------- cases


def current_agency(case_events: Sequence[Event], transfers: Mapping[str, Transfer]) -> str:
    """Who holds the case file after its last hand-over (see the module docstring).

    Not the agency of the latest receipt: a receiver that gives the file back does not keep it.
    """
    opened = _first(case_events, "case_opened")
    holder = case_events[0].agency_id  # rule 6: nobody took it over yet
    for e in case_events:
        if e is opened or e.event_type == "transfer_received":
            holder = e.agency_id
        elif (
            e.event_type == "transfer_returned"
            and e.agency_id == holder
            and e.payload["transfer_id"] in transfers
        ):
            holder = transfers[e.payload["transfer_id"]].sent.agency_id
    return holder


def case_row(case_events: Sequence[Event]) -> tuple:
    """The `cases` row of one case from its distinct events in event-time order."""
    opened = _first(case_events, "case_opened")
    opening = opened.payload if opened else {}
    last_closing = _last(case_events, "case_resolved", "case_reopened")
    resolution = (
        last_closing if last_closing and last_closing.event_type == "case_resolved" else None
    )
    stage = _last(case_events, "stage_changed")
    monitoring = [e for e in case_events if e.event_type == "monitoring_assigned"]
    discipline = [e.payload for e in case_events if e.event_type == "discipline_imposed"]
    assets = [e.payload for e in case_events if e.event_type == "assets_recovered"]
    transfers = transfers_of(case_events)
    return (
        case_events[0].case_id,
        opened.agency_id if opened else "",
        province_at(opened.agency_id, opened.local_date) if opened else "",
        opened.occurred_at if opened else None,
        opening.get("origin", ""),
        opening.get("field", ""),
        opening.get("subject_kind", ""),
        int(bool(opening.get("prominent", False))),
        opening.get("damage_vnd"),
        current_agency(case_events, transfers),
        stage.payload["stage"] if stage else "",
        "resolved" if resolution else "open",
        resolution.payload["outcome"] if resolution else "",
        resolution.occurred_at if resolution else None,
        sum(1 for e in case_events if e.event_type == "case_reopened"),
        int(bool(monitoring)),
        monitoring[-1].payload["level"] if monitoring else "",
        monitoring[0].occurred_at if monitoring else None,
        len(transfers),
        sum(1 for t in transfers.values() if t.status == "pending"),
        sum(p["count"] for p in discipline if p["target"] == "party_member"),
        sum(p["count"] for p in discipline if p["target"] == "party_organization"),
        sum(p["identified_vnd"] for p in assets),
        sum(p["recovered_vnd"] for p in assets),
        max(e.occurred_at for e in case_events),
        len(case_events),
    )


# --------------------------------------------------------------------------- the tables


def expected_tables(events: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple]]:
    """Expected rows of `cases`, `transfers`, `appraisals` and `events`, each sorted by its id."""
    unique = unique_events(events)
    by_case: dict[str, list[Event]] = defaultdict(list)
    for e in unique:  # already in event-time order, so each case's list is too
        by_case[e.case_id].append(e)
    tables: dict[str, list[tuple]] = {
        "cases": [case_row(case_events) for case_events in by_case.values()],
        "transfers": [
            t.row() for case_events in by_case.values() for t in transfers_of(case_events).values()
        ],
        "appraisals": [
            row for case_events in by_case.values() for row in appraisal_rows(case_events)
        ],
        "events": [event_row(e) for e in unique],
    }
    return {name: sorted(rows, key=lambda row: row[0]) for name, rows in tables.items()}


# --------------------------------------------------------------------------- comparison


def _plain(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def comparable(table: str, rows: Iterable[Sequence[Any]]) -> list[tuple]:
    """Rows read from ClickHouse (or built by the worker) in the oracle's value types."""
    payload = EVENT_COLUMNS.index("payload")
    out = []
    for row in rows:
        values = [_plain(v) for v in row]
        if table == "events" and len(values) > payload and isinstance(values[payload], str):
            values[payload] = json.loads(values[payload])
        out.append(tuple(values))
    return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return got == pytest.approx(want)
    return got == want


def _examples(items: Sequence[Any], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def table_differences(
    table: str, actual: Iterable[Sequence[Any]], expected: Sequence[tuple]
) -> list[str]:
    """Human-readable differences between actual and expected rows, matched by their id."""
    columns = COLUMNS[table]
    got_rows = comparable(table, actual)
    problems = []
    bad_width = [row for row in got_rows if len(row) != len(columns)]
    if bad_width:
        return [f"{table}: rows have {len(bad_width[0])} columns, expected {len(columns)}"]
    got: dict[Any, tuple] = {}
    repeated = []
    for row in got_rows:
        if row[0] in got:
            repeated.append(row[0])
        got[row[0]] = row
    want = {row[0]: row for row in expected}
    if repeated:
        problems.append(f"{table}: ids on several rows: {_examples(repeated)}")
    if missing := sorted(want.keys() - got.keys()):
        problems.append(f"{table}: {len(missing)} expected rows missing: {_examples(missing)}")
    if extra := sorted(got.keys() - want.keys()):
        problems.append(f"{table}: {len(extra)} unexpected rows: {_examples(extra)}")
    common = sorted(want.keys() & got.keys())
    differing: dict[str, list[str]] = defaultdict(list)
    for key in common:
        for column, g, w in zip(columns, got[key], want[key], strict=True):
            if not _same(g, w):
                differing[column].append(f"{key}: got {g!r}, expected {w!r}")
    for column, diffs in differing.items():
        problems.append(
            f"{table}.{column}: {len(diffs)} of {len(common)} rows differ, e.g. "
            + "; ".join(diffs[:3])
        )
    return problems


def assert_tables_match(
    actual: Mapping[str, Iterable[Sequence[Any]]],
    expected: Mapping[str, Sequence[tuple]],
    tables: Iterable[str] = ("cases", "transfers", "appraisals", "events"),
) -> None:
    """Fail with every differing table.column (counts and examples) between actual and expected."""
    problems = [
        p for table in tables for p in table_differences(table, actual[table], expected[table])
    ]
    if problems:
        pytest.fail("tables differ from the oracle:\n" + "\n".join(problems), pytrace=False)
