"""One case event: JSON form <-> validated, normalized (Avro-ready) form.

JSON form (what agencies send; one object per line in ``.jsonl``)::

    {"event_id": "0b6f1c2e-...", "event_type": "case_transferred", "case_id": "20-INSP/2024/0123",
     "agency_id": "20-INSP", "occurred_at": "2024-03-05T09:30:00+07:00", "sequence": 1234,
     "payload": {"transfer_id": "T-20-INSP-0456", "to_agency_id": "20-POLICE",
                 "reason": "signs_of_crime"}}

Normalized form (what :func:`parse_event` returns, what ``codec.encode`` takes and what
``codec.decode`` returns)::

    {"event_id": "0b6f1c2e-...",            # lower-case canonical UUID text
     "event_type": "case_transferred",
     "case_id": "20-INSP/2024/0123",
     "agency_id": "20-INSP",
     "occurred_at": datetime(2024, 3, 5, 2, 30, tzinfo=timezone.utc),   # aware, UTC, ms precision
     "utc_offset_minutes": 420,
     "sequence": 1234,                      # or None
     "payload": {"transfer_id": ..., "to_agency_id": ..., "reason": ...}}  # every field of the
                                            # payload record, None for absent optional ones

The payload rules (fields, which are required, enum symbols) are derived from
``schemas/case_event.avsc``, so the validator and the schema cannot drift apart.

There is one validator (``_validated``). :func:`parse_event` gives its normalized form;
:func:`parse_for_outbox` gives the agency SDK what it stores and chains (``occurred_at`` as
epoch milliseconds, and its canonical text) from the same pass, with the same errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from services.contracts import reference as _ref
from services.contracts.schema import PAYLOAD_RECORD_BY_EVENT_TYPE, enum_symbols, named_types

#: The event types of the contract, in schema order.
EVENT_TYPES: tuple[str, ...] = enum_symbols("casestream.EventType")

#: Regex of an agency topic (Python ``re``); group ``agency_id``.  Use ``fullmatch``.
TOPIC_PATTERN = re.compile(r"^agency\.(?P<agency_id>[0-9]{2}-[A-Z]+)\.events$")
#: The same as a librdkafka subscription pattern (``consumer.subscribe([TOPIC_SUBSCRIPTION])``).
TOPIC_SUBSCRIPTION = r"^agency\.[0-9][0-9]-[A-Z]+\.events$"

#: Allowed clock skew between the agency and the platform for "not in the future".
CLOCK_SKEW = timedelta(minutes=5)

#: Earliest accepted event time (the platform's horizon).
EARLIEST_OCCURRED_AT = datetime(1970, 1, 1, tzinfo=UTC)

#: The largest amount of money an event may carry (VND). The largest case the seeds report (Vạn
#: Thịnh Phát) is about 677 trillion VND (6.77e14); an amount above 10^15 VND (one
#: quadrillion, ~40 billion USD) is a typing error or a forgery meant to swamp the recovery
#: figures, so it is refused with the field named, wherever events enter (SDK, gateway, import,
#: worker intake).
MAX_PLAUSIBLE_VND = 10**15

MAX_OFFSET_MINUTES = 18 * 60
LONG_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

JSON_FIELDS = (
    "event_id",
    "event_type",
    "case_id",
    "agency_id",
    "occurred_at",
    "sequence",
    "payload",
)
REQUIRED_JSON_FIELDS = frozenset(JSON_FIELDS) - {"sequence"}
_JSON_FIELD_SET = frozenset(JSON_FIELDS)

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
#: Case, transfer and appraisal ids: 1-128 visible ASCII characters (no spaces).
ID_RE = re.compile(r"^[!-~]{1,128}$")
_MAX_TEXT = 1024

if set(EVENT_TYPES) != set(PAYLOAD_RECORD_BY_EVENT_TYPE):  # pragma: no cover - import-time guard
    raise RuntimeError("EventType symbols and PAYLOAD_RECORD_BY_EVENT_TYPE disagree")


class EventValidationError(ValueError):
    """An event breaks the contract.

    ``field`` is the path of the offending field (``"payload.to_agency_id"``; ``"<event>"`` for
    the whole object), ``value`` the offending value and ``reason`` a human explanation.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {_show(value)})")

    def __reduce__(self):  # keep pickling (multiprocessing, faust) working
        return (type(self), (self.field, self.value, self.reason))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- topics


def topic_for_agency(agency_id: str) -> str:
    """``"20-POLICE"`` -> ``"agency.20-POLICE.events"`` (ValueError on a malformed id)."""
    _ref.parse_agency_id(agency_id)
    return f"agency.{agency_id}.events"


def agency_from_topic(topic: str) -> str:
    """``"agency.20-POLICE.events"`` -> ``"20-POLICE"`` (ValueError when not an agency topic)."""
    m = TOPIC_PATTERN.fullmatch(topic) if isinstance(topic, str) else None
    if not m:
        raise ValueError(f"not an agency topic: {topic!r} (expected agency.<agency_id>.events)")
    return m["agency_id"]


def kafka_key(event: Mapping[str, Any]) -> bytes:
    """Kafka message key of an event: its ``case_id`` in UTF-8."""
    return str(event["case_id"]).encode("utf-8")


# --------------------------------------------------------------------------- payload specs


class _Ctx:
    __slots__ = ("local_date", "agency_id", "ref")

    def __init__(self, local_date: date, agency_id: str, ref: _ref.ReferenceData | None) -> None:
        self.local_date = local_date
        self.agency_id = agency_id
        self.ref = ref


_Checker = Callable[[Any, str, _Ctx], Any]


class _FieldSpec:
    __slots__ = ("name", "path", "nullable", "required", "default", "check")

    def __init__(self, name: str, nullable: bool, required: bool, default: Any, check: _Checker):
        self.name = name
        self.path = f"payload.{name}"  # built once, not per checked value
        self.nullable = nullable
        self.required = required
        self.default = default
        self.check = check


def _check_int(lo: int, hi: int) -> _Checker:
    def check(value: Any, path: str, ctx: _Ctx) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise EventValidationError(path, value, "must be an integer")
        if value < lo:
            raise EventValidationError(path, value, f"must be >= {lo}")
        if value > hi:
            raise EventValidationError(path, value, f"must be <= {hi}")
        return value

    return check


_check_count = _check_int(0, LONG_MAX)  # built once: not a closure per checked value


def _check_amount(value: Any, path: str, ctx: _Ctx) -> int:
    amount = _check_count(value, path, ctx)
    if amount > MAX_PLAUSIBLE_VND:
        raise EventValidationError(
            path, value, f"is not a plausible amount (above {MAX_PLAUSIBLE_VND:,} VND)"
        )
    return amount


def _check_bool(value: Any, path: str, ctx: _Ctx) -> bool:
    if not isinstance(value, bool):
        raise EventValidationError(path, value, "must be a boolean (true/false)")
    return value


def _check_enum(symbols: tuple[str, ...]) -> _Checker:
    allowed = frozenset(symbols)
    listing = ", ".join(symbols)

    def check(value: Any, path: str, ctx: _Ctx) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise EventValidationError(path, value, f"must be one of: {listing}")
        return value

    return check


def _check_id(value: Any, path: str, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise EventValidationError(
            path, value, "must be a string of 1-128 visible ASCII characters without spaces"
        )
    return value


def _check_text(value: Any, path: str, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise EventValidationError(
            path, value, f"must be a non-empty string of at most {_MAX_TEXT} characters"
        )
    return value


def _check_agency_ref(value: Any, path: str, ctx: _Ctx) -> str:
    _known_agency(value, ctx.local_date, ctx.ref, path)
    if value == ctx.agency_id:
        raise EventValidationError(path, value, "must differ from the event's own agency_id")
    return value


def _check_known_agency(value: Any, path: str, at: date, ref: _ref.ReferenceData | None) -> str:
    if not isinstance(value, str) or not _ref.AGENCY_ID_PATTERN.fullmatch(value):
        raise EventValidationError(
            path, value, "must be an agency id <2-digit province code>-<TYPE>, e.g. 20-POLICE"
        )
    if not _ref.is_known_agency(value, at, ref):
        code, type_code = _ref.parse_agency_id(value)
        if type_code not in _ref.agency_types(ref):
            hint = f"unknown agency type {type_code!r}"
        elif not _ref.is_known_province(code, None, ref):
            hint = f"unknown province code {code!r}"
        else:
            hint = "not valid on that date"
            with contextlib.suppress(KeyError, ValueError):
                hint += f"; its successor is {_ref.current_agency(value, at, ref)}"
        raise EventValidationError(path, value, f"unknown agency on {at.isoformat()} ({hint})")
    return value


def _type_checker(field_name: str, avro_type: Any, types: dict[str, dict]) -> _Checker:
    if isinstance(avro_type, str) and avro_type in types:
        avro_type = types[avro_type]
    if isinstance(avro_type, str):
        avro_type = {"type": avro_type}
    kind = avro_type["type"]
    if kind == "enum":
        return _check_enum(tuple(avro_type["symbols"]))
    if kind == "boolean":
        return _check_bool
    if kind == "long":
        # Every number in a payload is a count or an amount of money: never negative.
        if field_name.endswith("_vnd"):
            return _check_amount
        return _check_count
    if kind == "int":
        return _check_int(0, INT_MAX)
    if kind == "string":
        if field_name.endswith("agency_id"):
            return _check_agency_ref
        if field_name.endswith("_id"):
            return _check_id
        return _check_text
    raise NotImplementedError(f"payload field {field_name}: Avro type {kind!r} is not supported")


def _field_spec(field: dict[str, Any], types: dict[str, dict]) -> _FieldSpec:
    avro_type = field["type"]
    nullable = False
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        nullable = len(branches) < len(avro_type)
        if len(branches) != 1:
            raise NotImplementedError(
                f"payload field {field['name']}: only [null, T] unions supported"
            )
        avro_type = branches[0]
    has_default = "default" in field
    return _FieldSpec(
        name=field["name"],
        nullable=nullable,
        required=not has_default,
        default=field.get("default"),
        check=_type_checker(field["name"], avro_type, types),
    )


def _build_payload_specs() -> dict[str, tuple[_FieldSpec, ...]]:
    types = named_types()
    return {
        event_type: tuple(_field_spec(f, types) for f in types[record]["fields"])
        for event_type, record in PAYLOAD_RECORD_BY_EVENT_TYPE.items()
    }


_PAYLOAD_SPECS = _build_payload_specs()
_PAYLOAD_NAMES = {t: frozenset(s.name for s in specs) for t, specs in _PAYLOAD_SPECS.items()}


def payload_fields(event_type: str) -> tuple[str, ...]:
    """Names of the payload fields of ``event_type``, in schema order."""
    return tuple(s.name for s in _PAYLOAD_SPECS[event_type])


def required_payload_fields(event_type: str) -> tuple[str, ...]:
    return tuple(s.name for s in _PAYLOAD_SPECS[event_type] if s.required)


_ABSENT = object()


def _parse_payload(event_type: str, payload: Any, ctx: _Ctx) -> dict[str, Any]:
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise EventValidationError("payload", payload, "must be a JSON object")
    specs = _PAYLOAD_SPECS[event_type]
    names = _PAYLOAD_NAMES[event_type]
    for key in () if payload.keys() <= names else sorted(payload, key=str):
        if key not in names:
            raise EventValidationError(
                f"payload.{key}",
                payload[key],
                f"unknown field for event_type {event_type} (allowed: {', '.join(s.name for s in specs)})",
            )
    out: dict[str, Any] = {}
    for spec in specs:
        value = payload.get(spec.name, _ABSENT)
        if value is _ABSENT:
            if spec.required:
                raise EventValidationError(
                    spec.path, None, f"required field for event_type {event_type} is missing"
                )
            out[spec.name] = spec.default
        elif value is None:
            if not spec.nullable:
                raise EventValidationError(spec.path, None, "must not be null")
            out[spec.name] = None
        else:
            out[spec.name] = spec.check(value, spec.path, ctx)
    return out


# --------------------------------------------------------------------------- envelope


_MILLISECOND = timedelta(milliseconds=1)
_MICROSECOND = timedelta(microseconds=1)
_CLOCK_SKEW_US = CLOCK_SKEW // _MICROSECOND
#: The last epoch millisecond an aware datetime can hold in UTC (9999-12-31T23:59:59.999Z): a
#: later instant makes ``astimezone(UTC)`` overflow.
_MAX_MILLIS = (datetime.max.replace(tzinfo=UTC) - EARLIEST_OCCURRED_AT) // _MILLISECOND
_EPOCH_ORDINAL = EARLIEST_OCCURRED_AT.toordinal()
#: UTC offset -> whole minutes, for each offset that passed the checks (at most 2,161 exist).
_OFFSET_MINUTES: dict[timedelta, int] = {}


def _now_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now


def _occurred(value: Any, path: str) -> tuple[datetime, int, int]:
    """ISO-8601 string with offset -> (local time as written, epoch milliseconds of the UTC
    instant truncated to ms, offset minutes).

    The milliseconds come from the local time in integers: no UTC datetime is built,
    truncated and converted back to milliseconds for the outbox, and an offset is checked once
    per process, not with ``timedelta`` arithmetic per event (together ~2 us per event of the
    ~10.7 the SDK spent on validation, the storable form and the chain's timestamp text).
    """
    if not isinstance(value, str):
        raise EventValidationError(path, value, "must be an ISO-8601 string with a UTC offset")
    try:
        local = datetime.fromisoformat(value)
    except ValueError:
        raise EventValidationError(path, value, "is not a valid ISO-8601 timestamp") from None
    offset = local.utcoffset()
    if offset is None:
        raise EventValidationError(path, value, "must include a UTC offset, e.g. +07:00 or Z")
    minutes = _OFFSET_MINUTES.get(offset)
    if minutes is None:
        if offset % timedelta(minutes=1):
            raise EventValidationError(path, value, "UTC offset must be a whole number of minutes")
        minutes = int(offset.total_seconds()) // 60
        if abs(minutes) > MAX_OFFSET_MINUTES:
            raise EventValidationError(path, value, "UTC offset must be within +-18:00")
        _OFFSET_MINUTES[offset] = minutes
    # ``(local - EARLIEST_OCCURRED_AT) // _MILLISECOND`` in integers off the fields (half the
    # time: no timedelta built; tests/contracts/test_events.py holds them equal). Flooring is
    # truncation for every instant accepted: none is before 1970.
    millis = (
        (local.toordinal() - _EPOCH_ORDINAL) * 86_400_000
        + ((local.hour * 60 + local.minute - minutes) * 60 + local.second) * 1000
        + local.microsecond // 1000
    )
    if not 0 <= millis <= _MAX_MILLIS:
        try:
            local.astimezone(UTC)
        except (OverflowError, ValueError):
            raise EventValidationError(path, value, "is out of range") from None
        # Here millis < 0: past _MAX_MILLIS the conversion to UTC always overflows.
        raise EventValidationError(path, value, "must not be before 1970-01-01T00:00:00Z")
    return local, millis, minutes


def _instant(millis: int) -> datetime:
    """Epoch milliseconds -> the aware UTC datetime of the normalized form."""
    return EARLIEST_OCCURRED_AT + timedelta(milliseconds=millis)


def parse_occurred_at(value: Any, path: str = "occurred_at") -> tuple[datetime, int, date]:
    """ISO-8601 string with offset -> (UTC instant truncated to ms, offset minutes, local date)."""
    local, millis, minutes = _occurred(value, path)
    return _instant(millis), minutes, local.date()


def _validated(
    obj: Any, now: datetime | None, ref: _ref.ReferenceData | None
) -> tuple[dict[str, Any], str]:
    """The validator: every rule of an event in JSON form, in the order that decides which
    error is named.

    Returns the event with ``occurred_at`` as epoch milliseconds (the outbox's form) and the
    ``occurred_at`` text as given. :func:`parse_event` and :func:`parse_for_outbox` are both
    this function; they differ only in the form of ``occurred_at`` they give back, so the SDK's
    fast path and every other entry (gateway, bulk import, worker intake) cannot disagree. The
    walks that word an error (unknown fields, missing or null fields) run only when a quick
    test shows there is one to find.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise EventValidationError("<event>", obj, "event must be a JSON object")
    # The sorted walk names the first unknown field; skipped when every key is known.
    for key in () if obj.keys() <= _JSON_FIELD_SET else sorted(obj, key=str):
        if key not in JSON_FIELDS:
            raise EventValidationError(
                str(key), obj[key], f"unknown field (allowed: {', '.join(JSON_FIELDS)})"
            )
    event_id, event_type, case_id = obj.get("event_id"), obj.get("event_type"), obj.get("case_id")
    agency, occurred, payload = obj.get("agency_id"), obj.get("occurred_at"), obj.get("payload")
    if (
        event_id is None
        or event_type is None
        or case_id is None
        or agency is None
        or occurred is None
        or payload is None
    ):
        # The first required field that is missing or null, in field order.
        for key in JSON_FIELDS:
            if key in REQUIRED_JSON_FIELDS and key not in obj:
                raise EventValidationError(key, None, "required field is missing")
            if key in REQUIRED_JSON_FIELDS and obj[key] is None:
                raise EventValidationError(key, None, "must not be null")

    if not isinstance(event_id, str) or not _UUID_RE.fullmatch(event_id):
        raise EventValidationError(
            "event_id", event_id, "must be a UUID in 8-4-4-4-12 hexadecimal form"
        )

    if not isinstance(event_type, str) or event_type not in _PAYLOAD_SPECS:
        raise EventValidationError(
            "event_type", event_type, f"must be one of: {', '.join(EVENT_TYPES)}"
        )

    if not isinstance(case_id, str) or not ID_RE.fullmatch(case_id):
        raise EventValidationError(
            "case_id", case_id, "must be a string of 1-128 visible ASCII characters without spaces"
        )

    local, millis, offset_minutes = _occurred(occurred, "occurred_at")
    # The current time in integer microseconds: the clock datetime.now reads, without building
    # a datetime and adding the skew to it per event.
    now_us = (
        time.time_ns() // 1000
        if now is None
        else (_now_utc(now) - EARLIEST_OCCURRED_AT) // _MICROSECOND
    )
    if millis * 1000 > now_us + _CLOCK_SKEW_US:
        current = now if now is not None else EARLIEST_OCCURRED_AT + timedelta(microseconds=now_us)
        raise EventValidationError(
            "occurred_at",
            occurred,
            f"is in the future (now is {current.astimezone(UTC).isoformat(timespec='seconds')}, "
            f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew allowed)",
        )

    local_date = local.date()
    agency_id = _known_agency(agency, local_date, ref)

    sequence = obj.get("sequence")
    if sequence is not None:
        _check_count(sequence, "sequence", None)  # type: ignore[arg-type]

    checked = _parse_payload(event_type, payload, _Ctx(local_date, agency_id, ref))

    return {
        "event_id": event_id.lower(),
        "event_type": event_type,
        "case_id": case_id,
        "agency_id": agency_id,
        "occurred_at": millis,
        "utc_offset_minutes": offset_minutes,
        "sequence": sequence,
        "payload": checked,
    }, occurred


def parse_event(
    obj: Any, *, now: datetime | None = None, ref: _ref.ReferenceData | None = None
) -> dict[str, Any]:
    """Validate one event in JSON form and return its normalized (Avro-ready) form.

    ``now`` (aware datetime, default: the current time) is the reference for "not in the
    future"; ``ref`` overrides the shipped reference data (tests).  Raises
    :class:`EventValidationError` naming the first offending field.
    """
    event, _ = _validated(obj, now, ref)
    event["occurred_at"] = _instant(event["occurred_at"])
    return event


def parse_for_outbox(
    obj: Any, *, now: datetime | None = None, ref: _ref.ReferenceData | None = None
) -> tuple[dict[str, Any], str]:
    """:func:`parse_event` for the agency SDK: the same rules and errors (the same function),
    giving what the SDK stores and chains instead of the normalized form.

    Returns the event in the outbox's form, ``occurred_at`` as epoch milliseconds (equal to
    ``outbox.storable_form(parse_event(obj))``), and ``occurred_at`` as the canonical JSON form
    writes it (equal to ``to_json_form(parse_event(obj))["occurred_at"]``): the text as given
    when it is already canonical (generated and SDK-written events are), else formatted.

    The SDK built these forms one after the other: parse_event 7.3, storable form 0.7 and the
    chain's timestamp text 2.7 us per event, 10.7 in all; this pass takes 5.1 (in process, the
    20,033 generated events of the publish benchmark, best of 5). The equalities:
    tests/contracts/test_events.py and tests/agency/test_publish_bytes.py.
    """
    event, occurred = _validated(obj, now, ref)
    if type(occurred) is not str or not _CANONICAL_OCCURRED_AT.fullmatch(occurred):
        occurred = format_occurred_at(event["occurred_at"], event["utc_offset_minutes"])
    return event, occurred


def parse_json_line(
    line: str | bytes, *, now: datetime | None = None, ref: _ref.ReferenceData | None = None
) -> dict[str, Any]:
    """Parse one ``.jsonl`` line (JSON text) and validate it with :func:`parse_event`."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventValidationError("<event>", line, f"is not valid JSON: {exc}") from None
    return parse_event(obj, now=now, ref=ref)


_ZONES: dict[int, timezone] = {}  # offset minutes -> zone (the chain formats every event)

#: ``occurred_at`` text exactly as :func:`format_occurred_at` writes it: seconds, milliseconds
#: only when not ``.000``, ``Z`` for a zero offset (never ``+00:00`` or ``-00:00``). A valid
#: timestamp written so *is* its canonical text (tests/contracts/test_events.py).
_CANONICAL_OCCURRED_AT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.(?!000)[0-9]{3})?"
    r"(?:Z|[+-](?!00:00)[0-9]{2}:[0-9]{2})"
)


def format_occurred_at(occurred_at: datetime | int, utc_offset_minutes: int) -> str:
    """Reproduce the agency's ISO-8601 string from the UTC instant and the offset.

    Seconds precision, or milliseconds when non-zero; ``Z`` for a zero offset (so an input
    written as ``+00:00`` comes back as ``Z``: same instant, same offset).
    """
    if isinstance(occurred_at, int):
        occurred_at = EARLIEST_OCCURRED_AT + timedelta(milliseconds=occurred_at)
    elif occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    zone = _ZONES.get(utc_offset_minutes)
    if zone is None:
        zone = timezone(timedelta(minutes=utc_offset_minutes))
        if len(_ZONES) < 4096:
            _ZONES[utc_offset_minutes] = zone
    local = occurred_at.astimezone(zone)
    text = local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")
    return text[:-6] + "Z" if utc_offset_minutes == 0 else text


def to_json_form(event: Mapping[str, Any], occurred_at_text: str | None = None) -> dict[str, Any]:
    """Normalized event -> JSON form (canonical: optional fields that are null are omitted).

    ``occurred_at_text``, when the caller has it, is ``format_occurred_at`` of the event's
    ``occurred_at`` (what :func:`parse_for_outbox` gives): not formatted again.
    """
    out: dict[str, Any] = {
        "event_id": str(event["event_id"]),
        "event_type": event["event_type"],
        "case_id": event["case_id"],
        "agency_id": event["agency_id"],
        "occurred_at": occurred_at_text
        or format_occurred_at(event["occurred_at"], event["utc_offset_minutes"]),
    }
    if event.get("sequence") is not None:
        out["sequence"] = event["sequence"]
    out["payload"] = {k: v for k, v in event["payload"].items() if v is not None}
    return out


def validate_event(
    event: Mapping[str, Any], *, now: datetime | None = None, ref: _ref.ReferenceData | None = None
) -> dict[str, Any]:
    """Validate an event already in normalized form (e.g. decoded from Kafka).

    Applies exactly the rules of :func:`parse_event` (events written by foreign Confluent
    serializers are well-typed Avro but may still break the contract: unknown agency, payload
    record not matching event_type, event in the future, ...).  Returns the event re-normalized.
    """
    if type(event) is not dict and not isinstance(event, Mapping):
        raise EventValidationError("<event>", event, "event must be a mapping")
    common = _validate_common(event, now, ref)
    return common if common is not None else _validate_exact(event, now, ref)


def _validate_exact(
    event: Mapping[str, Any], now: datetime | None, ref: _ref.ReferenceData | None
) -> dict[str, Any]:
    """The rules of :func:`parse_event`, applied to the event's JSON form: every event the
    common path does not take, and the wording of every error."""
    try:
        json_form = to_json_form(event)
    except EventValidationError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EventValidationError(
            "<event>", dict(event), f"is not a normalized event: {exc!r}"
        ) from None
    return parse_event(json_form, now=now, ref=ref)


def _validate_common(
    event: Mapping[str, Any], now: datetime | None, ref: _ref.ReferenceData | None
) -> dict[str, Any] | None:
    """:func:`validate_event` for a valid event as the Avro decoder gives it, without the
    round trip through the JSON form (formatting ``occurred_at`` and parsing it back was ~5 µs
    of the ~21 µs validation costs the worker per event; validation was 12.7 % of its samples
    in the 2 M-event process benchmark, 2026-12-04).

    None whenever anything is unusual or wrong: the exact path then decides and words the
    error, so errors are the exact path's only. Equal results on valid events:
    ``tests/contracts/test_validate_common.py``.
    """
    occurred, minutes = event.get("occurred_at"), event.get("utc_offset_minutes")
    if (
        type(occurred) is not datetime
        or occurred.tzinfo is None
        or type(minutes) is not int
        or abs(minutes) > MAX_OFFSET_MINUTES
    ):
        return None
    event_id, event_type, case_id = (
        event.get("event_id"),
        event.get("event_type"),
        event.get("case_id"),
    )
    agency, payload = event.get("agency_id"), event.get("payload")
    if (
        not isinstance(event_id, str)
        or not _UUID_RE.fullmatch(event_id)
        or not isinstance(event_type, str)
        or event_type not in _PAYLOAD_SPECS
        or not isinstance(case_id, str)
        or not ID_RE.fullmatch(case_id)
        or not isinstance(agency, str)
        or (type(payload) is not dict and not isinstance(payload, Mapping))
    ):
        return None
    try:
        # What the JSON form gives back: the instant at millisecond precision (truncated, as
        # `format_occurred_at` writes it) and the date in the agency's own offset. An Avro
        # timestamp-millis decodes whole milliseconds already, and the offsets are a few: the
        # truncation and the offset's timedelta are skipped or built once.
        instant = occurred.astimezone(UTC)
        if instant.microsecond % 1000:
            instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
        shift = _OFFSET_DELTAS.get(minutes)
        if shift is None:
            shift = _OFFSET_DELTAS[minutes] = timedelta(minutes=minutes)
        local_date = (instant + shift).date()
        if instant < EARLIEST_OCCURRED_AT or instant > _now_utc(now) + CLOCK_SKEW:
            return None
        agency_id = _known_agency(agency, local_date, ref)
        sequence = event.get("sequence")
        if sequence is not None:
            _check_count(sequence, "sequence", None)  # type: ignore[arg-type]
        checked = _parse_payload(
            event_type,
            {k: v for k, v in payload.items() if v is not None},
            _Ctx(local_date, agency_id, ref),
        )
    except (EventValidationError, OverflowError, ValueError, TypeError):
        return None
    return {
        "event_id": event_id.lower(),
        "event_type": event_type,
        "case_id": case_id,
        "agency_id": agency_id,
        "occurred_at": instant,
        "utc_offset_minutes": minutes,
        "sequence": sequence,
        "payload": checked,
    }


#: Offset minutes -> its timedelta (at most 2,161 offsets pass the range check).
_OFFSET_DELTAS: dict[int, timedelta] = {}


def _known_agency(
    agency: Any, at: date, ref: _ref.ReferenceData | None, path: str = "agency_id"
) -> str:
    """`_check_known_agency(agency, path, at, ref)` on the hot path: the agency's validity
    intervals come from the reference data's memo, and every error still from
    `_check_known_agency`. It replaced a memo of (agency, local date) pairs found known, which
    missed for 86 % of a replayed 5-year history. On 100,000 events of the benchmark's history
    (CPU, best of 5): `validate_event` 7.2–7.7 → 5.7–5.8 µs per event, `parse_for_outbox`
    8.1–8.5 → 6.7–7.0 µs (with `type(...) is dict` before the ABC checks). A memo of its own
    here saved another 0.3 µs: not worth a second memo of the same intervals."""
    if (
        type(agency) is str
        and _ref.AGENCY_ID_PATTERN.fullmatch(agency)
        and _ref.valid_on(_ref.agency_intervals(agency, ref), at)
    ):
        return agency
    return _check_known_agency(agency, path, at, ref)  # raises, worded


def validate_publisher(event: Mapping[str, Any], agency_id: str) -> None:
    """The publishing agency may only publish its own events (JSON or normalized form)."""
    own = event.get("agency_id") if isinstance(event, Mapping) else None
    if own != agency_id:
        raise EventValidationError(
            "agency_id",
            own,
            f"event belongs to agency {own!r} but is published by agency {agency_id!r}: "
            f"an agency may only publish its own events to its own topic",
        )
