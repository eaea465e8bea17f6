"""Avro codec: Confluent wire format, round trips, errors, schema evolution with fastavro."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts import codec
from services.contracts.codec import (
    AvroCodec,
    EncodeError,
    WireFormatError,
    decode,
    encode,
    schema_id_of,
)
from services.contracts.events import (
    EVENT_TYPES,
    EventValidationError,
    parse_event,
    to_json_form,
    validate_event,
)
from services.contracts.examples import example_event, example_events
from services.contracts.schema import (
    PAYLOAD_RECORD_BY_EVENT_TYPE,
    parsed_schema,
    schema_dict,
    schema_str,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)
SCHEMA_ID = 7


def lookup_current(schema_id):
    return {SCHEMA_ID: schema_str()}[schema_id]


def normalized(event_type="case_opened", **overrides):
    return parse_event(example_event(event_type, **overrides), now=NOW)


# --------------------------------------------------------------------------- helpers for evolution


def find_named(node, name):
    """The named type ``name`` (short name) inside a schema dict."""
    if isinstance(node, list):
        for item in node:
            found = find_named(item, name)
            if found is not None:
                return found
    elif isinstance(node, dict):
        if node.get("name") == name and node.get("type") in ("record", "enum"):
            return node
        for key in ("type", "fields", "items", "values"):
            if key in node:
                found = find_named(node[key], name)
                if found is not None:
                    return found
    return None


def evolved(mutate):
    schema = copy.deepcopy(schema_dict())
    mutate(schema)
    return schema


def add_optional_fields(schema):
    schema["fields"].append(
        {"name": "source_system", "type": ["null", "string"], "default": None, "doc": "added in v2"}
    )
    find_named(schema, "CaseOpened")["fields"].append(
        {"name": "commune_code", "type": ["null", "string"], "default": None, "doc": "added in v2"}
    )


def drop_optional_fields(schema):  # an "older" version without sequence and damage_vnd
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "sequence"]
    record = find_named(schema, "CaseOpened")
    record["fields"] = [f for f in record["fields"] if f["name"] != "damage_vnd"]


def encode_with(schema, record, schema_id):
    """Write ``record`` (payload in tuple notation) with an arbitrary writer schema."""
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("event", example_events(), ids=lambda e: e["event_type"])
def test_every_event_type_round_trips_json_avro_json(event):
    validated = parse_event(event, now=NOW)
    raw = encode(validated, SCHEMA_ID)
    decoded = decode(raw, lookup_current)
    assert decoded == validated
    assert to_json_form(decoded) == event
    assert validate_event(decoded, now=NOW) == validated


def test_wire_format_header():
    raw = encode(normalized(), 0x01020304)
    assert raw[:5] == b"\x00\x01\x02\x03\x04"
    assert schema_id_of(raw) == 0x01020304
    body = io.BytesIO(raw[5:])
    plain = fastavro.schemaless_reader(body, parsed_schema())
    assert plain["case_id"] == "20-INSP/2024/0123"


def test_decoded_types():
    event = normalized("stage_changed", sequence=None)
    decoded = decode(encode(event, SCHEMA_ID), lookup_current)
    assert isinstance(decoded["event_id"], str) and decoded["event_id"] == event["event_id"]
    assert decoded["occurred_at"] == datetime(2024, 4, 2, 9, 45, tzinfo=UTC)
    assert decoded["sequence"] is None
    assert decoded["utc_offset_minutes"] == 420


def test_encode_rejects_what_the_schema_cannot_hold():
    event = normalized()
    with pytest.raises(EncodeError):
        encode({**event, "event_type": "case_closed"}, SCHEMA_ID)
    with pytest.raises(EncodeError):
        encode({**event, "payload": {**event["payload"], "origin": "hotline"}}, SCHEMA_ID)
    with pytest.raises(EncodeError):
        encode({**event, "unexpected": 1}, SCHEMA_ID)
    with pytest.raises(EncodeError):
        encode(event, -1)
    with pytest.raises(EncodeError):
        encode(event, 2**32)


# --------------------------------------------------------------------------- wire format errors


def test_bad_magic_byte():
    raw = bytearray(encode(normalized(), SCHEMA_ID))
    raw[0] = 1
    with pytest.raises(WireFormatError, match="magic byte 0x01"):
        decode(bytes(raw), lookup_current)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x00\x00\x00\x07"])
def test_short_message(raw):
    with pytest.raises(WireFormatError, match="too short"):
        decode(raw, lookup_current)


def test_unknown_schema_id():
    raw = encode(normalized(), 99)
    with pytest.raises(WireFormatError, match="unknown schema id 99") as info:
        decode(raw, lookup_current)  # KeyError
    assert info.value.schema_id == 99
    with pytest.raises(WireFormatError, match="unknown schema id 99"):
        decode(raw, lambda schema_id: None)


def test_registry_outage_propagates_unchanged():
    def broken(schema_id):
        raise ConnectionError("registry down")

    with pytest.raises(ConnectionError):
        decode(encode(normalized(), SCHEMA_ID), broken)


def test_truncated_body():
    raw = encode(normalized(), SCHEMA_ID)
    with pytest.raises(WireFormatError, match="bad Avro body for schema id 7"):
        decode(raw[:-3], lookup_current)


def test_trailing_bytes():
    raw = encode(normalized(), SCHEMA_ID)
    with pytest.raises(WireFormatError, match="trailing bytes"):
        decode(raw + b"\x00", lookup_current)


def test_garbage_body_and_bad_enum_index():
    with pytest.raises(WireFormatError, match="bad Avro body"):
        decode(b"\x00\x00\x00\x00\x07" + b"\xff" * 40, lookup_current)


def test_schema_id_that_is_not_a_schema():
    with pytest.raises(WireFormatError, match="not a valid Avro schema"):
        decode(encode(normalized(), 3), {3: "{not avro"}.__getitem__)


def test_non_bytes_value():
    with pytest.raises(WireFormatError, match="must be bytes"):
        decode(None, lookup_current)  # type: ignore[arg-type]


def assert_decoded_is_judged(decoded) -> None:
    """What decode promises for bytes it accepts: a complete record of the reader schema (every
    field, nothing else), which validation then either refuses with a field and a reason or
    accepts unchanged, as an event that encodes and decodes to itself."""
    assert set(decoded) == set(normalized()), sorted(decoded)
    try:
        valid = validate_event(decoded, now=NOW)
    except EventValidationError as refused:
        assert refused.field and refused.reason
        return
    assert valid == decoded
    assert decode(encode(valid, SCHEMA_ID), lookup_current) == valid


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_only_ever_raise_wire_format_error(body):
    try:
        result = decode(b"\x00\x00\x00\x00\x07" + body, lookup_current)
    except WireFormatError as refused:
        assert refused.reason
        return
    assert_decoded_is_judged(result)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=80), st.data())
def test_corrupted_messages_only_ever_raise_wire_format_error(noise, data):
    event = normalized("case_transferred")
    original = encode(event, SCHEMA_ID)
    raw = bytearray(original)
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position : position + len(noise)] = noise
    try:
        decoded = decode(bytes(raw), lookup_current)
    except WireFormatError as refused:
        assert refused.reason
        return
    if bytes(raw) == original:  # the "noise" was the same bytes
        assert decoded == event
    else:
        assert_decoded_is_judged(decoded)


def test_a_corruption_that_keeps_the_avro_well_formed_decodes_into_another_event():
    """Avro carries no checksum, so the codec cannot tell such bytes from an event that was sent:
    integrity is Kafka's (a CRC32C over every record batch), validity is validate_event's."""
    event = normalized("case_transferred")
    raw = encode(event, SCHEMA_ID)
    corrupted = raw.replace(b"2024/0123", b"2024/0124")
    assert corrupted != raw
    decoded = decode(corrupted, lookup_current)
    assert decoded == {**event, "case_id": "20-INSP/2024/0124"}
    assert validate_event(decoded, now=NOW) == decoded


# --------------------------------------------------------------------------- caching


def test_writer_schemas_are_parsed_once_per_schema_object(monkeypatch):
    c = AvroCodec()
    raw = encode(normalized(), SCHEMA_ID)
    calls = []
    real = codec.parse_schema
    monkeypatch.setattr(codec, "parse_schema", lambda s: calls.append(1) or real(s))
    registered = json.loads(schema_str())  # a plain dict, returned as the same object every time
    for _ in range(50):
        assert c.decode(raw, {SCHEMA_ID: registered}.__getitem__) == normalized()
    assert len(calls) == 1
    for _ in range(50):  # strings are cached by value
        assert c.decode(raw, lambda _id: schema_str()) == normalized()
    assert len(calls) == 2


def test_same_writer_and_reader_schema_skips_resolution():
    c = AvroCodec()
    assert c.decode(encode(normalized(), SCHEMA_ID), lookup_current) == normalized()
    (writer,) = c._writers.values()
    assert writer.reader is None


# --------------------------------------------------------------------------- schema evolution


def test_current_data_is_readable_by_a_schema_that_adds_optional_fields():
    v2 = evolved(add_optional_fields)
    reader_v2 = AvroCodec(reader_schema=v2)
    raw = encode(normalized("case_opened"), 1)  # written with the current schema (id 1)
    decoded = reader_v2.decode(raw, {1: schema_str()}.__getitem__)
    assert decoded["source_system"] is None
    assert decoded["payload"]["commune_code"] is None
    assert decoded["payload"]["origin"] == "inspection"
    assert decoded["case_id"] == "20-INSP/2024/0123"


def test_events_written_with_an_older_version_stay_readable():
    v0 = evolved(drop_optional_fields)
    event = normalized("case_opened")
    record = {k: v for k, v in event.items() if k != "sequence"}
    payload = {k: v for k, v in event["payload"].items() if k != "damage_vnd"}
    record["payload"] = ("casestream.CaseOpened", payload)
    raw = encode_with(v0, record, 1)
    lookup = {1: json.dumps(v0), SCHEMA_ID: schema_str()}.__getitem__
    old = decode(raw, lookup)  # reader = current schema
    assert old["sequence"] is None and old["payload"]["damage_vnd"] is None
    assert old["payload"]["origin"] == "inspection"
    # the same event written with the current schema decodes identically apart from the new fields
    new = decode(encode(event, SCHEMA_ID), lookup)
    assert {**new, "sequence": None, "payload": {**new["payload"], "damage_vnd": None}} == old


def test_unknown_enum_symbols_fall_back_to_the_default():
    def add_symbols(schema):
        find_named(schema, "Origin")["symbols"].append("hotline")
        find_named(schema, "Stage")["symbols"].append("cassation_verdict")

    newer = evolved(add_symbols)
    lookup = {2: json.dumps(newer)}.__getitem__
    event = normalized("case_opened")
    record = {
        **event,
        "payload": ("casestream.CaseOpened", {**event["payload"], "origin": "hotline"}),
    }
    assert decode(encode_with(newer, record, 2), lookup)["payload"]["origin"] == "other"
    # Stage has no default: an unknown stage is refused rather than guessed.
    event = normalized("stage_changed")
    record = {
        **event,
        "payload": ("casestream.StageChanged", {**event["payload"], "stage": "cassation_verdict"}),
    }
    with pytest.raises(WireFormatError, match="cassation_verdict"):
        decode(encode_with(newer, record, 2), lookup)


def test_a_reader_requiring_a_field_without_default_cannot_read_old_data():
    def add_required(schema):
        schema["fields"].append({"name": "region", "type": "string", "doc": "required, no default"})

    reader = AvroCodec(reader_schema=evolved(add_required))
    with pytest.raises(WireFormatError, match="region"):
        reader.decode(encode(normalized(), 1), {1: schema_str()}.__getitem__)


def test_removing_a_required_field_breaks_readers_that_still_need_it():
    def remove_case_id(schema):
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "case_id"]

    without_case_id = evolved(remove_case_id)
    event = normalized()
    record = {k: v for k, v in event.items() if k != "case_id"}
    record["payload"] = ("casestream.CaseOpened", event["payload"])
    raw = encode_with(without_case_id, record, 5)
    # The current schema (reader) requires case_id and has no default for it.
    with pytest.raises(WireFormatError, match="case_id"):
        decode(raw, {5: json.dumps(without_case_id)}.__getitem__)


def test_decoding_through_schema_resolution_is_still_fast_enough_to_not_parse_per_message(
    monkeypatch,
):
    v0 = evolved(drop_optional_fields)
    event = normalized("case_resolved")
    record = {k: v for k, v in event.items() if k != "sequence"}
    record["payload"] = ("casestream.CaseResolved", event["payload"])
    raw = encode_with(v0, record, 1)
    v0_text = json.dumps(v0)
    c = AvroCodec()
    calls = []
    real = codec.parse_schema
    monkeypatch.setattr(codec, "parse_schema", lambda s: calls.append(1) or real(s))
    for _ in range(100):
        assert c.decode(raw, {1: v0_text}.__getitem__)["payload"] == {"outcome": "convicted"}
    assert len(calls) == 1


# --------------------------------------------------------------------------- compiled body writer


def _fastavro_body(event: dict) -> bytes:
    """The body fastavro writes (what ``encode`` wrote before the compiled writer existed)."""
    record = {
        **event,
        "payload": (PAYLOAD_RECORD_BY_EVENT_TYPE[event["event_type"]], event["payload"]),
    }
    for name in ("chain_seq", "chain_prev", "chain_hash"):
        record.setdefault(name, None)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(), record, strict=True)
    return buf.getvalue()


def _as_stored(event: dict) -> dict:
    """Normalized -> the outbox's form (occurred_at in epoch ms), the compiled writer's input."""
    return {**event, "occurred_at": round(event["occurred_at"].timestamp() * 1000)}


_longs = st.integers(0, 2**63 - 1)


@st.composite
def stored_events(draw):
    event = _as_stored(normalized(draw(st.sampled_from(EVENT_TYPES))))
    event["case_id"] = draw(st.text(min_size=1, max_size=40))  # any UTF-8, multi-byte too
    event["occurred_at"] = draw(st.integers(0, 2**50))
    event["utc_offset_minutes"] = draw(st.integers(-1080, 1080))
    event["sequence"] = draw(st.none() | _longs)
    payload = dict(event["payload"])
    for name, value in payload.items():  # every count and amount over the whole long range
        if type(value) is int:
            payload[name] = draw(_longs)
    event["payload"] = payload
    if draw(st.booleans()):
        event.update(
            chain_seq=draw(_longs),
            chain_prev=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
            chain_hash=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
        )
    return event


@given(stored_events())
@settings(max_examples=300, deadline=None)
def test_the_compiled_body_writer_writes_fastavros_bytes(event):
    writer = codec._body_writer()
    assert writer is not None, "the contract schema must compile"
    assert writer.encode(event) == _fastavro_body(event)
    assert codec.AvroCodec().encode_body(event) == _fastavro_body(event)


@pytest.mark.parametrize("event", example_events(), ids=lambda e: e["event_type"])
def test_what_the_compiled_writer_does_not_handle_fastavro_still_encodes(event):
    validated = parse_event(event, now=NOW)  # occurred_at a datetime: fastavro converts it
    with pytest.raises(codec._Unsupported):
        codec._body_writer().encode(validated)
    assert encode(validated, SCHEMA_ID)[5:] == _fastavro_body(_as_stored(validated))
