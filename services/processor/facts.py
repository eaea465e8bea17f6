"""`Fact`: one validated event as the processor keeps it, plus its row in the `events` table.

The processor keeps every fact of a case in its state and derives the case's rows from that set
(see case_state.py), so a fact must be small, identified by `event_id`, and cheap to serialise to
the internal re-keyed topic, the envelopes and the changelog.

Why a msgspec `Struct` (array-like, untracked by the garbage collector) rather than a frozen
dataclass: msgpack and JSON decode straight into it, and it is built ~5x faster. Measured on
20,000 generated facts: decoding a stored case state into `Fact`s 0.9 µs/fact (JSON lists then
`Fact(*f)`: 5.8 µs), `Fact(*fields)` 0.5 µs (the dataclass: 2.4 µs). A fact holds no reference
cycles (its payload is JSON data), so leaving it out of the cycle collector is safe.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec


class Fact(msgspec.Struct, frozen=True, array_like=True, gc=False):
    event_id: str
    event_type: str
    case_id: str
    agency_id: str
    occurred_ms: int  # event time, UTC epoch milliseconds
    utc_offset_minutes: int
    sequence: int | None
    payload: dict[str, Any]

    @property
    def order_key(self) -> tuple[int, str]:
        """Deterministic order of a case's facts, whatever order they arrived in."""
        return (self.occurred_ms, self.event_id)

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Fact:
        """From a decoded/validated event dict (occurred_at as aware datetime or epoch ms)."""
        occurred = event["occurred_at"]
        if isinstance(occurred, datetime):
            occurred_ms = round(occurred.timestamp() * 1000)
        else:
            occurred_ms = int(occurred)
        return cls(
            event_id=str(event["event_id"]),
            event_type=event["event_type"],
            case_id=event["case_id"],
            agency_id=event["agency_id"],
            occurred_ms=occurred_ms,
            utc_offset_minutes=int(event.get("utc_offset_minutes") or 0),
            sequence=event.get("sequence"),
            payload=dict(event.get("payload") or {}),
        )

    def to_json(self) -> bytes:
        """The JSON list `[event_id, event_type, ..., payload]` (UTF-8, no escaped non-ASCII)."""
        return _to_json(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Fact:
        return _from_json(raw)


_to_json = msgspec.json.Encoder().encode
_from_json = msgspec.json.Decoder(Fact).decode


def ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def province_of(agency_id: str) -> str:
    return agency_id.split("-", 1)[0]


def agency_type_of(agency_id: str) -> str:
    return agency_id.split("-", 1)[1] if "-" in agency_id else ""


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
    # The case's home province (its opening agency's) as the deriving step knew it when it wrote
    # the row, '' before the opening was known: the provincial rollups read it instead of
    # joining 4.6 M case events with 1.66 M cases' homes (0.35-0.42 s of a provincial yearly
    # rollup at 10 M events). A row whose home may have changed since is listed by its case in
    # `cases_rehomed` (batch.py), and the rollups take that case's home from `cases`.
    "home_province_code",
]


_PAYLOAD_OPTIONS = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
#: `json.dumps(payload, sort_keys=True, ensure_ascii=False)` with its C encoder built once: the
#: same encoder with the same options gives the same text, without building a `JSONEncoder` and
#: a C encoder per call (msgspec writes other separators). No circular-reference markers: a
#: payload is decoded JSON, which has no cycles.
_payload_chunks = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _PAYLOAD_OPTIONS.default,
        json.encoder.encode_basestring,
        None,
        _PAYLOAD_OPTIONS.key_separator,
        _PAYLOAD_OPTIONS.item_separator,
        True,
        False,
        True,
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def _payload_json(payload: Any) -> str:
    if _payload_chunks is None or isinstance(payload, str):
        return json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return "".join(_payload_chunks(payload, 0))


#: agency_id → (province code, agency type): a few hundred agencies, split once each.
_agency_parts: dict[str, tuple[str, str]] = {}


def event_row(fact: Fact, home: str = "") -> list[Any]:
    """The fact as a row of the `events` table (column order = EVENT_COLUMNS); ``home`` is its
    case's home province as derived with this fact (see EVENT_COLUMNS)."""
    p = fact.payload
    agency = fact.agency_id
    parts = _agency_parts.get(agency)
    if parts is None:
        parts = (province_of(agency), agency_type_of(agency))
        if len(_agency_parts) < 100_000:
            _agency_parts[agency] = parts
    return [
        fact.event_id,
        fact.event_type,
        fact.case_id,
        agency,
        parts[0],
        parts[1],
        datetime.fromtimestamp(fact.occurred_ms / 1000, tz=UTC),
        fact.utc_offset_minutes,
        fact.sequence,
        p.get("transfer_id") or "",
        p.get("to_agency_id") or "",
        p.get("stage") or "",
        p.get("outcome") or "",
        _payload_json(p),
        home,
    ]
