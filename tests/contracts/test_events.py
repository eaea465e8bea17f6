"""JSON form <-> normalized form: validation rules, offsets, topics, publisher check."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts.events import (
    CLOCK_SKEW,
    EVENT_TYPES,
    MAX_PLAUSIBLE_VND,
    TOPIC_PATTERN,
    EventValidationError,
    agency_from_topic,
    kafka_key,
    parse_event,
    parse_for_outbox,
    parse_json_line,
    parse_occurred_at,
    payload_fields,
    to_json_form,
    topic_for_agency,
    validate_event,
    validate_publisher,
)
from services.contracts.examples import example_event, example_events

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def rejected(event, field, value, *, now=NOW, reason_part=None) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        parse_event(event, now=now)
    err = info.value
    message = str(err)
    assert err.field == field, message
    assert message.startswith(f"{field}: "), message
    assert repr(value) in message, message
    if reason_part is not None:
        assert reason_part in message, message
    return err


def with_payload(event_type, **changes):
    event = example_event(event_type)
    event["payload"].update(changes)
    return event


def without(mapping, key):
    out = copy.deepcopy(mapping)
    del out[key]
    return out


# --------------------------------------------------------------------------- happy path


def test_brief_lists_twelve_event_types():
    assert EVENT_TYPES == (
        "case_opened",
        "case_transferred",
        "transfer_received",
        "transfer_returned",
        "stage_changed",
        "appraisal_requested",
        "appraisal_completed",
        "monitoring_assigned",
        "discipline_imposed",
        "assets_recovered",
        "case_resolved",
        "case_reopened",
    )


@pytest.mark.parametrize("event", example_events(), ids=lambda e: e["event_type"])
def test_every_example_is_valid_and_round_trips_through_json_form(event):
    normalized = parse_event(event, now=NOW)
    assert normalized["occurred_at"].tzinfo is UTC
    assert set(normalized["payload"]) == set(payload_fields(event["event_type"]))
    assert to_json_form(normalized) == event
    assert validate_event(normalized, now=NOW) == normalized


def test_brief_example_normalizes_to_utc_instant_and_offset():
    event = {
        "event_id": "0B6F1C2E-4A1D-4C6B-9F7E-0123456789AB",
        "event_type": "case_transferred",
        "case_id": "20-INSP/2024/0123",
        "agency_id": "20-INSP",
        "occurred_at": "2024-03-05T09:30:00+07:00",
        "sequence": 1234,
        "payload": {
            "transfer_id": "T-20-INSP-0456",
            "to_agency_id": "20-POLICE",
            "reason": "signs_of_crime",
        },
    }
    normalized = parse_event(event, now=NOW)
    assert normalized == {
        "event_id": "0b6f1c2e-4a1d-4c6b-9f7e-0123456789ab",
        "event_type": "case_transferred",
        "case_id": "20-INSP/2024/0123",
        "agency_id": "20-INSP",
        "occurred_at": datetime(2024, 3, 5, 2, 30, tzinfo=UTC),
        "utc_offset_minutes": 420,
        "sequence": 1234,
        "payload": {
            "transfer_id": "T-20-INSP-0456",
            "to_agency_id": "20-POLICE",
            "reason": "signs_of_crime",
        },
    }
    assert to_json_form(normalized)["occurred_at"] == "2024-03-05T09:30:00+07:00"


def test_optional_fields_may_be_omitted_or_null_and_come_back_omitted():
    event = example_event("case_opened")
    del event["payload"]["damage_vnd"]
    del event["sequence"]
    normalized = parse_event(event, now=NOW)
    assert normalized["sequence"] is None
    assert normalized["payload"]["damage_vnd"] is None
    assert to_json_form(normalized) == event

    explicit = example_event("case_opened", sequence=None)
    explicit["payload"]["damage_vnd"] = None
    assert parse_event(explicit, now=NOW) == normalized


@pytest.mark.parametrize(
    "text, offset, utc",
    [
        ("2024-03-05T09:30:00+07:00", 420, datetime(2024, 3, 5, 2, 30, tzinfo=UTC)),
        ("2024-03-05T09:30:00Z", 0, datetime(2024, 3, 5, 9, 30, tzinfo=UTC)),
        ("2024-03-05T09:30:00-03:30", -210, datetime(2024, 3, 5, 13, 0, tzinfo=UTC)),
        ("2024-03-05T09:30:00.123+05:45", 345, datetime(2024, 3, 5, 3, 45, 0, 123000, tzinfo=UTC)),
        ("2024-12-31T23:59:59+14:00", 840, datetime(2024, 12, 31, 9, 59, 59, tzinfo=UTC)),
    ],
)
def test_offsets_are_preserved(text, offset, utc):
    normalized = parse_event(example_event("case_resolved", occurred_at=text), now=NOW)
    assert normalized["utc_offset_minutes"] == offset
    assert normalized["occurred_at"] == utc
    assert to_json_form(normalized)["occurred_at"] == text


def test_equivalent_spellings_of_the_offset_come_back_canonical():
    for text, canonical in [
        ("2024-03-05T09:30:00+00:00", "2024-03-05T09:30:00Z"),
        ("2024-03-05T09:30:00.000+07:00", "2024-03-05T09:30:00+07:00"),
        ("2024-03-05T09:30:00.123999+07:00", "2024-03-05T09:30:00.123+07:00"),  # truncated to ms
    ]:
        normalized = parse_event(example_event("case_resolved", occurred_at=text), now=NOW)
        assert to_json_form(normalized)["occurred_at"] == canonical


def test_clock_skew_of_five_minutes_is_tolerated():
    at = NOW + timedelta(minutes=5)
    normalized = parse_event(example_event("case_resolved", occurred_at=at.isoformat()), now=NOW)
    assert (normalized["occurred_at"], normalized["utc_offset_minutes"]) == (at, 0)


def _now_in_refusal(event) -> datetime:
    """The "now" that parse_event (no `now` given) compared a future event with."""
    with pytest.raises(EventValidationError) as info:
        parse_event(event)
    assert info.value.field == "occurred_at"
    match = re.search(r"now is (\S+),", info.value.reason)
    assert match, info.value.reason
    return datetime.fromisoformat(match[1])


def test_now_defaults_to_current_time():
    # Within the allowed skew of the current time: accepted (a `now` years off would refuse it).
    soon = (datetime.now(UTC) + CLOCK_SKEW - timedelta(seconds=30)).replace(microsecond=0)
    normalized = parse_event(example_event("case_resolved", occurred_at=soon.isoformat()))
    assert normalized["occurred_at"] == soon
    # Beyond it: refused, and the refusal names the "now" it used, which is the current time.
    before = datetime.now(UTC).replace(microsecond=0)
    late = before + CLOCK_SKEW + timedelta(seconds=30)
    used = _now_in_refusal(example_event("case_resolved", occurred_at=late.isoformat()))
    after = datetime.now(UTC)
    assert before <= used <= after, (before, used, after)


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_event(example_event("case_resolved"), now=datetime(2025, 1, 1))


def test_parse_json_line():
    line = json.dumps(example_event("transfer_received"), ensure_ascii=False)
    assert parse_json_line(line, now=NOW) == parse_event(
        example_event("transfer_received"), now=NOW
    )
    with pytest.raises(EventValidationError, match="not valid JSON"):
        parse_json_line("{not json", now=NOW)


# --------------------------------------------------------------------------- envelope rules


def test_event_must_be_an_object():
    rejected(["not", "an", "object"], "<event>", ["not", "an", "object"])


def test_unknown_top_level_key_is_rejected():
    rejected(
        example_event("case_resolved", person_name="Nguyen Van A"), "person_name", "Nguyen Van A"
    )


def test_derived_normalized_keys_are_not_accepted_in_json_form():
    rejected(example_event("case_resolved", utc_offset_minutes=420), "utc_offset_minutes", 420)


@pytest.mark.parametrize(
    "key", ["event_id", "event_type", "case_id", "agency_id", "occurred_at", "payload"]
)
def test_required_keys(key):
    err = rejected(without(example_event("case_resolved"), key), key, None, reason_part="missing")
    assert err.value is None
    rejected(
        example_event("case_resolved", **{key: None}), key, None, reason_part="must not be null"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "0b6f1c2e4a1d4c6b9f7e0123456789ab",
        "0b6f1c2e-4a1d-4c6b-9f7e-0123456789ab\n",
        "{0b6f1c2e-4a1d-4c6b-9f7e-0123456789ab}",
        12,
        "",
    ],
)
def test_event_id_must_be_a_uuid(bad):
    rejected(example_event("case_resolved", event_id=bad), "event_id", bad, reason_part="UUID")


@pytest.mark.parametrize("bad", ["case_closed", "CASE_OPENED", 3])
def test_event_type_must_be_known(bad):
    rejected(
        example_event("case_resolved", event_type=bad), "event_type", bad, reason_part="case_opened"
    )


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "Vụ-án-1", 123, "case-1\n"])
def test_case_id_format(bad):
    rejected(example_event("case_resolved", case_id=bad), "case_id", bad)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("20-police", "agency id"),
        ("20POLICE", "agency id"),
        ("20-POLICE\n", "agency id"),
        ("20-FBI", "unknown agency type 'FBI'"),
        ("03-POLICE", "unknown province code '03'"),
        (20, "agency id"),
    ],
)
def test_agency_id_must_be_a_known_agency(bad, reason):
    rejected(example_event("case_resolved", agency_id=bad), "agency_id", bad, reason_part=reason)


def test_agency_validity_follows_the_local_date_of_the_event():
    after = datetime(2026, 1, 1, tzinfo=UTC)
    # Thái Bình (34) merged into Hưng Yên (33) on 2025-07-01.
    before_merger = example_event(
        "case_resolved", agency_id="34-POLICE", occurred_at="2025-06-30T23:59:00+07:00"
    )
    assert parse_event(before_merger, now=after)["agency_id"] == "34-POLICE"
    after_merger = example_event(
        "case_resolved", agency_id="34-POLICE", occurred_at="2025-07-01T00:00:00+07:00"
    )
    rejected(
        after_merger, "agency_id", "34-POLICE", now=after, reason_part="successor is 33-POLICE"
    )
    # same instant (2025-06-30T17:00Z), but written in UTC the local date is still June 30
    in_utc = parse_event(
        example_event("case_resolved", agency_id="34-POLICE", occurred_at="2025-06-30T17:00:00Z"),
        now=after,
    )
    assert (in_utc["agency_id"], in_utc["occurred_at"]) == (
        "34-POLICE",
        datetime(2025, 6, 30, 17, 0, tzinfo=UTC),
    )
    successor = parse_event(
        example_event(
            "case_resolved", agency_id="33-POLICE", occurred_at="2025-07-01T00:00:00+07:00"
        ),
        now=after,
    )
    assert successor["agency_id"] == "33-POLICE"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("2024-03-05T09:30:00", "UTC offset"),
        ("2024-03-05", "UTC offset"),
        ("05/03/2024 09:30", "ISO-8601"),
        ("2024-03-05T09:30:00+07:00:30", "whole number of minutes"),
        ("1969-12-31T23:59:59Z", "1970"),
        (1709605800000, "ISO-8601 string"),
    ],
)
def test_occurred_at_format(bad, reason):
    rejected(
        example_event("case_resolved", occurred_at=bad), "occurred_at", bad, reason_part=reason
    )


def test_occurred_at_must_not_be_in_the_future():
    future = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    rejected(
        example_event("case_resolved", occurred_at=future),
        "occurred_at",
        future,
        reason_part="future",
    )
    tomorrow_local = "2025-01-01T08:00:00+07:00"  # = 01:00Z, one hour after NOW
    rejected(
        example_event("case_resolved", occurred_at=tomorrow_local), "occurred_at", tomorrow_local
    )


@pytest.mark.parametrize("bad", [-1, 1.5, True, "12", 2**63])
def test_sequence_must_be_a_non_negative_long(bad):
    rejected(example_event("case_resolved", sequence=bad), "sequence", bad)


# --------------------------------------------------------------------------- payload rules


def test_payload_must_be_an_object():
    rejected(example_event("case_resolved", payload=["convicted"]), "payload", ["convicted"])


def test_payload_keys_must_match_the_event_type():
    # A transfer payload under case_opened: first offending key is reported.
    event = example_event("case_opened", payload=example_event("case_transferred")["payload"])
    rejected(
        event,
        "payload.reason",
        "signs_of_crime",
        reason_part="unknown field for event_type case_opened",
    )


def test_unknown_payload_key_is_rejected():
    rejected(with_payload("case_resolved", judge="Tran Van B"), "payload.judge", "Tran Van B")


@pytest.mark.parametrize(
    "event_type, key",
    [
        ("case_opened", "origin"),
        ("case_opened", "field"),
        ("case_opened", "subject_kind"),
        ("case_opened", "prominent"),
        ("case_transferred", "transfer_id"),
        ("case_transferred", "to_agency_id"),
        ("case_transferred", "reason"),
        ("transfer_received", "transfer_id"),
        ("transfer_returned", "transfer_id"),
        ("transfer_returned", "reason"),
        ("stage_changed", "stage"),
        ("appraisal_requested", "appraisal_id"),
        ("appraisal_completed", "kind"),
        ("monitoring_assigned", "level"),
        ("discipline_imposed", "target"),
        ("discipline_imposed", "count"),
        ("discipline_imposed", "form"),
        ("assets_recovered", "identified_vnd"),
        ("assets_recovered", "recovered_vnd"),
        ("case_resolved", "outcome"),
        ("case_reopened", "reason"),
    ],
)
def test_required_payload_keys(event_type, key):
    event = example_event(event_type)
    del event["payload"][key]
    rejected(event, f"payload.{key}", None, reason_part="missing")
    rejected(
        with_payload(event_type, **{key: None}),
        f"payload.{key}",
        None,
        reason_part="must not be null",
    )


@pytest.mark.parametrize(
    "event_type, key, bad",
    [
        ("case_opened", "origin", "hotline"),
        ("case_opened", "field", "fishing"),
        ("case_opened", "subject_kind", "person"),
        ("case_transferred", "reason", "because"),
        ("transfer_returned", "reason", "insufficient_evidence"),
        ("stage_changed", "stage", "closed"),
        ("appraisal_requested", "kind", "medical"),
        ("monitoring_assigned", "level", "district"),
        ("discipline_imposed", "target", "official"),
        ("discipline_imposed", "form", "fine"),
        ("case_resolved", "outcome", "acquitted"),
        ("case_reopened", "reason", "new evidence"),
        ("case_resolved", "outcome", "Convicted"),
    ],
)
def test_enum_values_are_closed(event_type, key, bad):
    rejected(
        with_payload(event_type, **{key: bad}), f"payload.{key}", bad, reason_part="must be one of"
    )


@pytest.mark.parametrize(
    "event_type, key, bad",
    [
        ("case_opened", "damage_vnd", -1),
        ("stage_changed", "count", -3),
        ("discipline_imposed", "count", -1),
        ("assets_recovered", "identified_vnd", -5),
        ("assets_recovered", "recovered_vnd", -100_000),
    ],
)
def test_counts_and_money_are_non_negative(event_type, key, bad):
    rejected(with_payload(event_type, **{key: bad}), f"payload.{key}", bad, reason_part=">= 0")


@pytest.mark.parametrize(
    "event_type, key, bad",
    [
        ("assets_recovered", "recovered_vnd", 1.5),
        ("assets_recovered", "identified_vnd", "1000"),
        ("assets_recovered", "identified_vnd", 2**63),
        ("discipline_imposed", "count", True),
        ("case_opened", "damage_vnd", 1e9),
        ("case_opened", "prominent", "yes"),
        ("case_opened", "prominent", 1),
        ("transfer_received", "transfer_id", "T 1"),
        ("transfer_received", "transfer_id", ""),
        ("appraisal_completed", "appraisal_id", 12),
    ],
)
def test_payload_types(event_type, key, bad):
    rejected(with_payload(event_type, **{key: bad}), f"payload.{key}", bad)


def test_zero_amounts_are_valid():
    recovered = parse_event(
        with_payload("assets_recovered", identified_vnd=0, recovered_vnd=0), now=NOW
    )
    assert (recovered["payload"]["identified_vnd"], recovered["payload"]["recovered_vnd"]) == (0, 0)
    assert parse_event(with_payload("stage_changed", count=0), now=NOW)["payload"]["count"] == 0


@pytest.mark.parametrize("bad", ["20-FBI", "03-POLICE", "police", "34-POLICE"])
def test_to_agency_id_must_be_known_on_the_event_date(bad):
    event = with_payload("case_transferred", to_agency_id=bad)
    event["occurred_at"] = "2025-08-01T10:00:00+07:00"
    rejected(event, "payload.to_agency_id", bad, now=datetime(2026, 1, 1, tzinfo=UTC))


def test_to_agency_id_must_differ_from_the_sender():
    rejected(
        with_payload("case_transferred", to_agency_id="20-INSP"),
        "payload.to_agency_id",
        "20-INSP",
        reason_part="differ",
    )


def test_error_carries_field_value_and_reason():
    with pytest.raises(EventValidationError) as info:
        parse_event(with_payload("case_transferred", to_agency_id="99-POLICE"), now=NOW)
    err = info.value
    assert (err.field, err.value) == ("payload.to_agency_id", "99-POLICE")
    assert "unknown agency" in err.reason
    assert isinstance(err, ValueError)
    import pickle

    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(EventValidationError) as info:
        parse_event(example_event("case_resolved", case_id="x" * 5000), now=NOW)
    assert len(str(info.value)) < 400
    assert info.value.value == "x" * 5000  # the attribute keeps the full value


# --------------------------------------------------------------------------- normalized validation


def test_validate_event_rejects_a_decoded_event_whose_payload_does_not_match_its_type():
    normalized = parse_event(example_event("transfer_received"), now=NOW)
    normalized["event_type"] = "case_reopened"  # foreign serializer: well-typed, wrong branch
    with pytest.raises(EventValidationError) as info:
        validate_event(normalized, now=NOW)
    assert info.value.field == "payload.transfer_id"


def test_validate_event_rejects_garbage():
    with pytest.raises(EventValidationError) as info:
        validate_event({"event_id": "x"}, now=NOW)
    assert info.value.field == "<event>"


# --------------------------------------------------------------------------- publisher and topics


def test_validate_publisher():
    event = example_event("case_transferred")
    validate_publisher(event, "20-INSP")
    validate_publisher(parse_event(event, now=NOW), "20-INSP")
    with pytest.raises(EventValidationError) as info:
        validate_publisher(event, "20-POLICE")
    message = str(info.value)
    assert info.value.field == "agency_id"
    assert "'20-INSP'" in message and "'20-POLICE'" in message and "own events" in message


def test_topics():
    assert topic_for_agency("20-POLICE") == "agency.20-POLICE.events"
    assert agency_from_topic("agency.20-POLICE.events") == "20-POLICE"
    assert agency_from_topic(topic_for_agency("00-AUDIT")) == "00-AUDIT"
    assert TOPIC_PATTERN.match("agency.79-CUSTOMS.events")["agency_id"] == "79-CUSTOMS"
    for bad in [
        "agency.20-POLICE.events.dlq",
        "agency.20-police.events",
        "agency..events",
        "x",
        "agency.20-POLICE.events\n",
    ]:
        assert not TOPIC_PATTERN.fullmatch(bad)
        with pytest.raises(ValueError, match="not an agency topic"):
            agency_from_topic(bad)
    with pytest.raises(ValueError):
        topic_for_agency("POLICE")
    import re

    from services.contracts.events import TOPIC_SUBSCRIPTION

    assert re.match(TOPIC_SUBSCRIPTION, "agency.20-POLICE.events")
    assert not re.match(TOPIC_SUBSCRIPTION, "agency.20-POLICE.events.dlq")


def test_kafka_key_is_the_case_id():
    assert kafka_key(example_event("case_opened")) == b"20-INSP/2024/0123"


# --------------------------------------------------------------------------- property


_ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


@st.composite
def valid_events(draw):
    event_type = draw(st.sampled_from(EVENT_TYPES))
    event = example_event(event_type)
    event["event_id"] = str(draw(st.uuids()))
    event["case_id"] = draw(_ids)
    offset = draw(st.integers(-12 * 60, 14 * 60))
    instant = draw(
        st.datetimes(
            min_value=datetime(1990, 1, 1), max_value=datetime(2024, 12, 31), timezones=st.just(UTC)
        )
    )
    instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    from services.contracts.events import format_occurred_at

    event["occurred_at"] = format_occurred_at(instant, offset)
    if draw(st.booleans()):
        event["sequence"] = draw(st.integers(0, 2**63 - 1))
    else:
        del event["sequence"]
    if "count" in event["payload"]:
        event["payload"]["count"] = draw(st.integers(0, 2**63 - 1))
    for key in ("identified_vnd", "recovered_vnd", "damage_vnd"):
        if key in event["payload"]:
            event["payload"][key] = draw(st.integers(0, MAX_PLAUSIBLE_VND))
    for key in ("transfer_id", "appraisal_id"):
        if key in event["payload"]:
            event["payload"][key] = draw(_ids)
    return event


@settings(max_examples=300, deadline=None)
@given(valid_events())
def test_json_form_round_trip_property(event):
    assert to_json_form(parse_event(event, now=NOW)) == event


@pytest.mark.parametrize("field", ["damage_vnd", "identified_vnd", "recovered_vnd"])
def test_an_implausible_amount_is_refused_naming_the_field_and_the_bound(field):
    kind = "case_opened" if field == "damage_vnd" else "assets_recovered"
    extra = {} if kind == "case_opened" else {"identified_vnd": 0, "recovered_vnd": 0}
    assert parse_event(with_payload(kind, **{**extra, field: MAX_PLAUSIBLE_VND}), now=NOW)
    with pytest.raises(EventValidationError) as err:
        parse_event(with_payload(kind, **{**extra, field: MAX_PLAUSIBLE_VND + 1}), now=NOW)
    assert err.value.field == f"payload.{field}"
    assert err.value.value == MAX_PLAUSIBLE_VND + 1
    assert "not a plausible amount (above 1,000,000,000,000,000 VND)" in err.value.reason


# --------------------------------------------------------------------------- one pass, two forms


def _reference_instant(text: str) -> datetime:
    """What the normalized form held before parse_event computed in integers: the instant of
    the local time converted to UTC and truncated to milliseconds."""
    instant = datetime.fromisoformat(text).astimezone(UTC)
    return instant.replace(microsecond=instant.microsecond // 1000 * 1000)


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-18 * 60, 18 * 60),
)
def test_the_instant_in_integers_is_the_truncated_utc_instant(local, offset_minutes):
    zone = timezone(timedelta(minutes=offset_minutes))
    text = local.replace(tzinfo=zone).isoformat()
    instant, minutes, local_date = parse_occurred_at(text)
    assert instant == _reference_instant(text)
    assert instant.tzinfo is UTC
    assert (minutes, local_date) == (offset_minutes, local.date())


@pytest.mark.parametrize(
    "text",
    [
        "1969-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59.9999999Z",
        "1970-01-01T06:59:59.999999+07:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_the_range_errors_are_those_of_the_utc_conversion(text):
    try:
        _reference_instant(text)
    except OverflowError:
        reason = "is out of range"
    else:
        reason = "must not be before 1970-01-01T00:00:00Z"
    with pytest.raises(EventValidationError) as err:
        parse_occurred_at(text)
    assert err.value.reason == reason


TIMESTAMP_SPELLINGS = [
    "2024-03-05T09:30:00+07:00",
    "2024-03-05T09:30:00.123+07:00",
    "2024-03-05T09:30:00.100-05:30",
    "2024-03-05T09:30:00Z",
    "2024-03-05T09:30:00.001Z",
    "2024-03-05T09:30:00+00:00",
    "2024-03-05T09:30:00-00:00",
    "2024-03-05T09:30:00.000+07:00",
    "2024-03-05T09:30:00.123456+07:00",
    "2024-03-05T09:30:00.1239+07:00",
    "2024-03-05T09:30:00.5+07:00",
    "2024-03-05T09:30+07:00",
    "2024-03-05 09:30:00+07:00",
    "20240305T093000+0700",
    "2024-03-05T09:30:00+0700",
    "2024-W10-2T09:30:00+07:00",
    "2024-03-05T09:30:00+07:00:30",
    "2024-03-05T09:30:00+18:00",
    "2024-03-05T09:30:00+18:01",
    "2024-03-05T09:30:00-14:00",
    "2024-03-05T09:30:00",
    "1970-01-01T00:00:00Z",
    "1970-01-01T06:59:59+07:00",
    "1970-01-01T07:00:00+07:00",
    "2024-02-30T09:30:00+07:00",
    "2024-03-05T24:00:00+07:00",
    "2024-03-05T09:30:00z",
]


@pytest.mark.parametrize("occurred_at", TIMESTAMP_SPELLINGS)
def test_parse_for_outbox_gives_epoch_ms_and_the_canonical_text_or_the_same_error(occurred_at):
    obj = example_event("case_transferred") | {"occurred_at": occurred_at}
    try:
        normalized = parse_event(obj, now=NOW)
    except EventValidationError as exc:
        with pytest.raises(EventValidationError) as err:
            parse_for_outbox(obj, now=NOW)
        assert (err.value.field, err.value.value, str(err.value)) == (
            exc.field,
            exc.value,
            str(exc),
        )
        return
    stored, text = parse_for_outbox(obj, now=NOW)
    assert stored == normalized | {
        "occurred_at": round(normalized["occurred_at"].timestamp() * 1000)
    }
    assert list(stored) == list(normalized)
    assert text == to_json_form(normalized)["occurred_at"]
    if text == occurred_at:  # as given: no second string built
        assert text is obj["occurred_at"]


def test_parse_for_outbox_and_parse_event_refuse_with_the_same_words():
    base = example_event("case_transferred")
    bad = [
        [],
        without(base, "payload"),
        base | {"extra": 1},
        base | {"event_id": None},
        base | {"event_id": "nope"},
        base | {"case_id": "has space"},
        base | {"agency_id": "99-NOWHERE"},
        base | {"sequence": True},
        base | {"occurred_at": "2030-01-01T00:00:00Z"},
        base | {"payload": {**base["payload"], "to_agency_id": base["agency_id"]}},
        base | {"payload": {**base["payload"], "unknown": 1}},
    ]
    for obj in bad:
        with pytest.raises(EventValidationError) as exact:
            parse_event(obj, now=NOW)
        with pytest.raises(EventValidationError) as outbox:
            parse_for_outbox(obj, now=NOW)
        assert (outbox.value.field, repr(outbox.value.value), str(outbox.value)) == (
            exact.value.field,
            repr(exact.value.value),
            str(exact.value),
        )


def test_the_future_limit_is_now_plus_the_skew_to_the_microsecond():
    event = example_event("case_opened") | {"occurred_at": "2025-01-01T00:05:00.001Z"}
    assert parse_event(event, now=NOW + timedelta(milliseconds=1))
    with pytest.raises(EventValidationError, match="is in the future"):
        parse_event(event, now=NOW + timedelta(microseconds=999))


def test_a_known_agency_is_remembered_for_its_dates_only():
    """Validation remembers each agency's validity intervals once it was found known: the day
    before a merger admits the predecessor, again and again, and the day after still refuses
    it, as the sender and as a transfer's receiver (the field named in the error)."""
    after = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(3):
        sent = with_payload("case_transferred", to_agency_id="34-POLICE")
        sent["occurred_at"] = "2025-06-30T23:59:00+07:00"
        assert parse_event(sent, now=after)["payload"]["to_agency_id"] == "34-POLICE"
        rejected(
            sent | {"occurred_at": "2025-07-01T00:00:00+07:00"},
            "payload.to_agency_id",
            "34-POLICE",
            now=after,
            reason_part="successor is 33-POLICE",
        )
        event = example_event(
            "case_resolved", agency_id="34-POLICE", occurred_at="2025-06-30T23:59:00+07:00"
        )
        assert parse_event(event, now=after)["agency_id"] == "34-POLICE"
        rejected(
            example_event(
                "case_resolved", agency_id="34-POLICE", occurred_at="2025-07-01T00:00:00+07:00"
            ),
            "agency_id",
            "34-POLICE",
            now=after,
            reason_part="successor is 33-POLICE",
        )
