"""Bad input, generated: every bad request or message ends in a clear rejection or the DLQ.

Three levels, all with hypothesis (bounded examples, no deadline):

* the HTTP gateway app (FastAPI TestClient, no servers): malformed bodies, wrong types, huge
  values, future dates, unknown and spoofed agencies, and JSON *text* (lone surrogate escapes,
  NaN/Infinity, overflowing numbers, duplicate keys, invalid UTF-8, deep nesting) → a 4xx for
  the request or a per-event ``rejected`` with field and reason; never a 5xx, always strict
  JSON; valid events of the same batch accepted, and exactly they are in the outbox;
* `Ingestor.accept` with an in-memory registry: arbitrary bytes, wrong schema ids, corrupted
  Avro → a `Fact` or `Rejected`, never any other exception;
* the real topics while the session's worker runs: bad messages interleaved with good events →
  the worker keeps running, every bad message is in ``casestream.dlq`` with a reason and a
  detail, every good event is in ClickHouse exactly once.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.agency import gateway as gateway_module
from services.agency.gateway import GatewayConfig, create_app
from services.agency.tokens import TokenStore
from services.contracts.codec import AvroCodec
from services.contracts.events import parse_event, topic_for_agency
from services.contracts.examples import example_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.contracts.registry import SchemaCache, make_client, register_agency_subject
from services.contracts.schema import PAYLOAD_RECORD_BY_EVENT_TYPE, parsed_schema
from services.ops.consumer_lag import wait_caught_up
from services.ops.topics import DLQ_TOPIC, ensure_topics
from services.processor.facts import Fact
from services.processor.ingest import REASONS, Ingestor, Rejected
from services.settings import Settings
from tests.helpers import new_tag, wait_for

AGENCY = "20-INSP"
UNKNOWN_AGENCY = "99-FUZZ"  # well-formed, but no such province or agency
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- generators

ORIGINS = ["inspection", "audit", "supervision", "denunciation", "press", "investigation"]
FIELDS = ["land", "construction", "minerals", "finance", "banking", "health", "other"]
SUBJECTS = ["party_member", "party_organization", "official", "enterprise", "unknown"]


@st.composite
def good_events(draw, agency: str = AGENCY, tag: str = "fuzz") -> dict:
    """A valid JSON-form event of `agency` (case_opened, transferred or resolved)."""
    case = f"{tag}:{agency}/{draw(st.integers(2000, 2024))}/{uuid.uuid4().hex[:10]}"
    day = draw(
        st.dates(min_value=datetime(2001, 1, 1).date(), max_value=datetime(2024, 12, 31).date())
    )
    event_type, payload = draw(
        st.sampled_from(
            [
                (
                    "case_opened",
                    {
                        "origin": draw(st.sampled_from(ORIGINS)),
                        "field": draw(st.sampled_from(FIELDS)),
                        "subject_kind": draw(st.sampled_from(SUBJECTS)),
                        "prominent": draw(st.booleans()),
                        "damage_vnd": draw(st.none() | st.integers(0, 10**15)),
                    },
                ),
                (
                    "case_transferred",
                    {
                        "transfer_id": f"{case}/T",
                        "to_agency_id": "20-POLICE",
                        "reason": "signs_of_crime",
                    },
                ),
                ("case_resolved", {"outcome": draw(st.sampled_from(["convicted", "dismissed"]))}),
            ]
        )
    )
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "case_id": case,
        "agency_id": agency,
        "occurred_at": f"{day.isoformat()}T{draw(st.integers(0, 23)):02d}:15:00+07:00",
        "payload": payload,
    }


WRONG_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)


@st.composite
def bad_events(draw) -> tuple[str, dict]:
    """(kind, event) that must be rejected for a token of AGENCY."""
    event = draw(good_events())
    kind = draw(
        st.sampled_from(
            [
                "wrong_type",
                "future_date",
                "unknown_agency",
                "spoofed_agency",
                "huge_value",
                "bad_event_id",
                "bad_enum",
                "unknown_field",
                "missing_field",
                "bad_date",
                "wrong_payload",
            ]
        )
    )
    if kind == "wrong_type":
        key = draw(
            st.sampled_from(
                ["event_id", "event_type", "case_id", "agency_id", "occurred_at", "payload"]
            )
        )
        value = draw(
            WRONG_TYPES.filter(lambda v: not isinstance(v, dict))
            if key == "payload"
            else WRONG_TYPES
        )
        event[key] = value
    elif kind == "future_date":
        ahead = draw(st.integers(1, 3_000_000))  # one hour .. ~340 years
        event["occurred_at"] = (datetime.now(UTC) + timedelta(hours=ahead)).isoformat()
    elif kind == "unknown_agency":
        event["agency_id"] = draw(st.sampled_from([UNKNOWN_AGENCY, "20-NOPE", "00-XX", "99-INSP"]))
    elif kind == "spoofed_agency":
        event["agency_id"] = draw(st.sampled_from(["20-POLICE", "01-COURT", "79-INSP", "00-SC"]))
    elif kind == "huge_value":
        size = draw(st.integers(129, 20_000))
        key = draw(st.sampled_from(["case_id", "event_id", "payload.reason_text"]))
        if key == "payload.reason_text":
            event["event_type"], event["payload"] = "case_reopened", {"reason": "x" * (size + 1024)}
        else:
            event[key] = "A" * size
    elif kind == "bad_event_id":
        event["event_id"] = draw(st.text(max_size=40).filter(lambda s: len(s) != 36))
    elif kind == "bad_enum":
        event["event_type"] = "case_opened"
        event["payload"] = {
            "origin": draw(st.text(max_size=12).filter(lambda s: s not in ORIGINS)),
            "field": "land",
            "subject_kind": "official",
            "prominent": False,
        }
    elif kind == "unknown_field":
        name = draw(
            st.text(min_size=1, max_size=12).filter(lambda s: s not in event and s != "sequence")
        )
        event[name] = draw(JSON_VALUES)
    elif kind == "missing_field":
        del event[
            draw(
                st.sampled_from(
                    ["event_id", "event_type", "case_id", "agency_id", "occurred_at", "payload"]
                )
            )
        ]
    elif kind == "bad_date":
        event["occurred_at"] = draw(
            st.sampled_from(
                [
                    "yesterday",
                    "2024-13-01T00:00:00+07:00",
                    "2024-03-05T09:30:00",  # no offset
                    "2024-03-05T09:30:00+25:00",
                    "1969-12-31T23:59:59Z",
                    "",
                ]
            )
        )
    elif kind == "wrong_payload":
        event["payload"] = {"nonsense": draw(JSON_VALUES)}
    return kind, event


# --------------------------------------------------------------------------- gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The gateway app with no Kafka behind it and an in-memory schema registry: requests are
    judged, and valid events accepted into the outbox, without any network round trip."""
    home = tmp_path_factory.mktemp("fuzz-gateway")
    app_settings = replace(
        Settings.from_env(),
        home=home,
        kafka_bootstrap="127.0.0.1:9",
        registry_url="http://127.0.0.1:9/apis/ccompat/v7",
    )
    store = TokenStore(home / "tokens.json")
    token, _ = store.create(AGENCY)
    config = GatewayConfig(
        max_body_bytes=256 * 1024,
        max_events=50,
        max_event_age_days=0,  # valid events are drawn from 2001 on: the age limit is off
        outbox_dir=home / "outbox",
        shutdown_flush_seconds=0.5,
    )
    registry = InMemorySchemaRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway_module, "make_client", lambda *_a, **_k: registry)
        app = create_app(app_settings, store, config=config)
        # A 5xx must show up as a status code here, not as an exception in the test.
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, {"Authorization": f"Bearer {token}"}


def _strict_json(response) -> Any:
    """The answer as strict JSON: UTF-8, no NaN/Infinity (what any JSON client can read)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"non-JSON constant {name} in the answer")

    return json.loads(response.content.decode("utf-8"), parse_constant=refuse)


def _no_server_error(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    _strict_json(response)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"]


@pytest.mark.unit
@FUZZ
@given(
    batch=st.lists(st.tuples(st.booleans(), good_events(), bad_events()), min_size=1, max_size=12)
)
def test_gateway_rejects_every_bad_event_one_by_one_and_accepts_the_good(gateway, batch):
    client, auth = gateway
    events, expect_good = [], []
    for use_good, good, (_kind, bad) in batch:
        events.append(good if use_good else bad)
        expect_good.append(use_good)
    response = client.post("/v1/events", json={"events": events}, headers=auth)
    _no_server_error(response)
    if response.status_code == 413:  # a huge value can make the body too large: fine
        assert response.json()["error"]["code"] == "body_too_large"
        return
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(events)))
    for good, result in zip(expect_good, results, strict=True):
        if good:
            assert result["status"] in ("accepted", "duplicate"), result
        else:
            assert result["status"] == "rejected", result
            assert result["error"]["field"] and result["error"]["reason"]


@pytest.mark.unit
@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=2000),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.lists(JSON_VALUES, max_size=5).map(lambda v: json.dumps({"events": v}).encode()),
        st.integers(1, 4300).map(lambda n: b'{"events": [' + b"7" * n + b"]}"),
        st.integers(1, 3).map(lambda k: b'{"events": [' + b'"x",' * (60 * k) + b'"x"]}'),
        st.just(b"[" * 100_000 + b"]" * 100_000),
        st.just(b'{"events": [NaN, -Infinity, {"event_id": NaN, "payload": Infinity}]}'),
        st.integers(300_000, 600_000).map(lambda n: b'{"events": ["' + b"x" * n + b'"]}'),
    ),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
)
def test_gateway_answers_malformed_requests_with_a_4xx_never_a_5xx(gateway, body, content_type):
    client, auth = gateway
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/v1/events", content=body, headers=headers)
    _no_server_error(response)
    if response.status_code == 200:
        assert all(
            r["status"] in ("accepted", "duplicate", "rejected") for r in response.json()["results"]
        )


#: Literals put in place of one value of a valid event: each makes that event invalid.
POISONS = [
    '"\\ud800"',  # lone high surrogate (as a JSON escape)
    '"x\\udfff"',  # lone low surrogate
    '"\\udc00\\ud800"',  # a pair in the wrong order
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1E+400",
    "[" * 50 + "]" * 50,  # nested deeper than any field
    '{"a": {"b": {"c": [NaN]}}}',
]
POISON_FIELDS = ["case_id", "occurred_at", "sequence", "event_type", "payload.field", "payload.x"]
MARK = "__FUZZ_POISON__"


@st.composite
def poisoned_events(draw) -> tuple[dict, str]:
    """(event, its JSON text with one value replaced by a poison literal or a duplicate key)."""
    event = draw(good_events())
    kind = draw(st.sampled_from(["value", "value", "duplicate"]))
    if kind == "duplicate":  # the same key twice: which one counts depends on the parser
        key = draw(st.sampled_from(["agency_id", "event_type", "case_id"]))
        text = json.dumps(event)
        return event, text.replace("{", f'{{"{key}": {json.dumps(event[key])}, ', 1)
    where = draw(st.sampled_from(POISON_FIELDS))
    if where.startswith("payload."):
        event["payload"][where.split(".", 1)[1]] = MARK
    else:
        event[where] = MARK
    return event, json.dumps(event).replace(f'"{MARK}"', draw(st.sampled_from(POISONS)))


def _corrupt(draw: Any, text: bytes) -> bytes:
    """Whole-body damage: invalid UTF-8, deep nesting, truncation, a huge number."""
    how = draw(
        st.sampled_from(["none", "none", "none", "bad_utf8", "truncate", "deep", "huge", "bom"])
    )
    if how == "bad_utf8":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82"]))
        return text[:at] + junk + text[at:]
    if how == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "deep":
        depth = draw(st.sampled_from([500, 990, 1000, 5000, 100_000]))
        return text[:-2] + b", " + b"[" * depth + b"]" * depth + b"]}"
    if how == "huge":
        digits = draw(st.sampled_from([300, 4300, 4301, 20_000]))
        return text[:-2] + b", " + b"9" * digits + b"]}"
    if how == "bom":
        return b"\xef\xbb\xbf" + text
    return text


@pytest.mark.unit
@FUZZ
@given(
    batch=st.lists(
        st.one_of(
            good_events().map(lambda e: (e, json.dumps(e), True)),
            poisoned_events().map(lambda p: (p[0], p[1], False)),
        ),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_gateway_json_text_fuzz_never_5xx_and_answers_what_it_stored(gateway, batch, data):
    """JSON *text* (not values a JSON encoder produces): lone surrogates, NaN/Infinity,
    overflowing numbers, duplicate keys, invalid UTF-8, deep nesting. The answer is never a 5xx
    and always strict JSON; every event answered `accepted` is in the outbox, every other
    event of the batch is not (a 500 came after the valid events were stored)."""
    client, auth = gateway
    text = ("{" + '"events": [' + ", ".join(t for _, t, _ in batch) + "]}").encode()
    body = _corrupt(data.draw, text)
    response = client.post(
        "/v1/events", content=body, headers={**auth, "Content-Type": "application/json"}
    )
    _no_server_error(response)
    ids = [event["event_id"] for event, _, _ in batch]
    ch = client.app.state.gateway.channel(AGENCY)
    with ch.lock:
        stored = ch.publisher.outbox.known(ids)
    if response.status_code != 200:
        assert response.status_code in (400, 413, 422), response.text[:300]
        assert stored == set(), "a refused request stored events"
        return
    results = _strict_json(response)["results"]
    if body == text:  # an undamaged body: one result per event, as drawn
        assert len(results) == len(batch)
        for (event, _, good), result in zip(batch, results, strict=True):
            assert result["status"] == ("accepted" if good else "rejected"), (result, event)
            if not good:
                assert result["error"]["field"] and result["error"]["reason"]
    answered = {r["event_id"] for r in results if r["status"] == "accepted"}
    assert answered <= stored
    assert stored <= answered, "stored events that were not answered as accepted"


@pytest.mark.unit
def test_gateway_answers_a_huge_integer_with_a_4xx(gateway):
    """An integer literal beyond Python's digit limit (4300) cannot even be parsed: the whole
    request is refused with a 400 that says where the number is and what it looks like."""
    client, auth = gateway
    limit = sys.get_int_max_str_digits()
    headers = {**auth, "Content-Type": "application/json"}

    response = client.post(
        "/v1/events", content=b'{"events": [' + b"7" * (limit + 1) + b"]}", headers=headers
    )
    assert response.status_code == 400, response.text[:500]
    assert response.json()["error"] == {
        "code": "malformed_json",
        "message": f"request body is not usable JSON: the integer at events[0] has {limit + 1} "
        f"digits (at most {limit})",
        "field": "events[0]",
        "value": "7" * 61 + "...",
    }

    good = json.dumps(example_event("case_opened", agency_id=AGENCY))
    marker = example_event("case_opened", event_id=str(uuid.uuid4()))
    marker["payload"]["damage_vnd"] = 123454321
    deep = json.dumps(marker).replace("123454321", "-" + "9" * 5000)
    response = client.post(
        "/v1/events", content=f'{{"events": [{good}, {deep}]}}'.encode(), headers=headers
    )
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert (error["field"], error["value"]) == (
        "events[1].payload.damage_vnd",
        "-" + "9" * 60 + "...",
    )
    assert "has 5000 digits" in error["message"]

    # One digit fewer is a number: no request error, the event alone is rejected.
    response = client.post(
        "/v1/events", content=b'{"events": [' + b"7" * limit + b"]}", headers=headers
    )
    assert response.status_code == 200, response.text[:500]
    (result,) = response.json()["results"]
    assert result["status"] == "rejected" and result["error"]["field"] == "<event>"


# --------------------------------------------------------------------------- Ingestor (unit)

_REGISTRY = InMemorySchemaRegistry()
_SCHEMA_ID = register_agency_subject(_REGISTRY, AGENCY)
_STRING_ID = _REGISTRY.register_schema("fuzz.string-value", Schema('"string"', "AVRO"))
_WRONG_TYPES_SCHEMA = {
    "type": "record",
    "name": "CaseEvent",
    "namespace": "casestream",
    "fields": [{"name": "event_id", "type": "long"}, {"name": "case_id", "type": "long"}],
}
_WRONG_TYPES_ID = _REGISTRY.register_schema(
    "fuzz.wrong-types-value", Schema(json.dumps(_WRONG_TYPES_SCHEMA), "AVRO")
)
_CODEC = AvroCodec()
_NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _header(schema_id: int) -> bytes:
    return struct.pack(">bI", 0, schema_id)


def _avro(record: dict, schema: Any, schema_id: int) -> bytes:
    buf = io.BytesIO()
    buf.write(_header(schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def _normalized(event: dict) -> dict:
    return parse_event(event, now=_NOW)


@st.composite
def bad_messages(
    draw,
    schema_id: int,
    wrong_types_id: int,
    string_id: int,
    agency: str = AGENCY,
    tag: str = "fuzz",
) -> tuple[str, str, bytes | None, set]:
    """(kind, topic, raw value, acceptable DLQ reasons) of a message the worker must refuse."""
    topic = topic_for_agency(agency)
    good = _normalized(draw(good_events(agency, tag)))
    encoded = _CODEC.encode(good, schema_id)
    wire = {"bad_wire_format"}
    kind = draw(
        st.sampled_from(
            [
                "random_bytes",
                "bad_magic",
                "unknown_schema_id",
                "wrong_schema_id",
                "wrong_types",
                "truncated",
                "trailing_bytes",
                "bit_flip",
                "huge_random",
                "empty",
                "tombstone",
                "spoofed_agency",
                "future_date",
                "unknown_agency",
                "huge_case_id",
                "bad_offset",
                "mismatched_payload",
            ]
        )
    )
    if kind == "random_bytes":
        return kind, topic, draw(st.binary(min_size=1, max_size=300)), set(REASONS)
    if kind == "bad_magic":
        first = draw(st.integers(1, 255))
        return kind, topic, bytes([first]) + encoded[1:], wire
    if kind == "unknown_schema_id":
        return kind, topic, _header(draw(st.integers(10**8, 2**32 - 1))) + encoded[5:], wire
    if kind == "wrong_schema_id":
        return kind, topic, _avro(draw(st.text(max_size=50)), "string", string_id), wire
    if kind == "wrong_types":
        record = {
            "event_id": draw(st.integers(-(2**63), 2**63 - 1)),
            "case_id": draw(st.integers(-(2**63), 2**63 - 1)),
        }
        return kind, topic, _avro(record, _WRONG_TYPES_SCHEMA, wrong_types_id), wire
    if kind == "truncated":
        return (
            kind,
            topic,
            encoded[: draw(st.integers(0, len(encoded) - 1))],
            wire | {"empty_message"},
        )
    if kind == "trailing_bytes":
        return kind, topic, encoded + draw(st.binary(min_size=1, max_size=50)), wire
    if kind == "bit_flip":  # corrupt the header: the schema id becomes unknown or wrong
        position = draw(st.integers(1, 2))  # ids >= 2**23: never registered
        flipped = bytearray(encoded)
        flipped[position] ^= 0x80
        return kind, topic, bytes(flipped), wire
    if kind == "huge_random":
        size = draw(st.integers(200_000, 600_000))
        return kind, topic, _header(schema_id) + bytes(size), wire
    if kind == "empty":
        return kind, topic, b"", {"empty_message"}
    if kind == "tombstone":
        return kind, topic, None, {"empty_message"}
    if kind == "spoofed_agency":
        spoofed = {**good, "agency_id": draw(st.sampled_from(["20-POLICE", "79-COURT"]))}
        return kind, topic, _CODEC.encode(spoofed, schema_id), {"spoofed_agency"}
    if kind == "future_date":
        ahead = timedelta(days=draw(st.integers(1, 3650)))
        future = {**good, "occurred_at": datetime.now(UTC) + ahead}
        return kind, topic, _CODEC.encode(future, schema_id), {"invalid_event"}
    if kind == "unknown_agency":
        unknown = {**good, "agency_id": UNKNOWN_AGENCY}
        return (
            kind,
            topic_for_agency(UNKNOWN_AGENCY),
            _CODEC.encode(unknown, schema_id),
            {"invalid_event"},
        )
    if kind == "huge_case_id":
        huge = {**good, "case_id": f"{tag}:" + "C" * draw(st.integers(129, 300_000))}
        return kind, topic, _CODEC.encode(huge, schema_id), {"invalid_event"}
    if kind == "bad_offset":
        odd = {**good, "utc_offset_minutes": draw(st.sampled_from([-5000, 1081, 2**31 - 1]))}
        return kind, topic, _CODEC.encode(odd, schema_id), {"invalid_event"}
    # mismatched_payload: event_type says one thing, the payload record is another's
    other = "case_resolved" if good["event_type"] != "case_resolved" else "case_opened"
    record = {
        **good,
        "payload": (
            PAYLOAD_RECORD_BY_EVENT_TYPE[other],
            {"outcome": "other"}
            if other == "case_resolved"
            else {
                "origin": "press",
                "field": "land",
                "subject_kind": "unknown",
                "prominent": False,
                "damage_vnd": None,
            },
        ),
    }
    return kind, topic, _avro(record, parsed_schema(), schema_id), wire | {"invalid_event"}


@pytest.mark.unit
@FUZZ
@given(message=bad_messages(_SCHEMA_ID, _WRONG_TYPES_ID, _STRING_ID))
def test_ingestor_refuses_bad_messages_with_a_reason_and_nothing_else(message):
    kind, topic, raw, reasons = message
    ingestor = Ingestor(SchemaCache(_REGISTRY), now=_NOW + timedelta(days=1))
    with pytest.raises(Rejected) as refused:
        ingestor.accept(raw, topic)
    assert refused.value.reason in reasons, (kind, refused.value.reason, refused.value.detail)
    assert refused.value.detail


@pytest.mark.unit
@FUZZ
@given(raw=st.binary(max_size=500), topic=st.text(max_size=40) | st.just(f"agency.{AGENCY}.events"))
def test_ingestor_never_raises_anything_but_rejected(raw, topic):
    ingestor = Ingestor(SchemaCache(_REGISTRY), now=_NOW)
    try:
        fact = ingestor.accept(raw, topic)
    except Rejected as refused:
        assert refused.reason in REASONS
    else:
        assert isinstance(fact, Fact)


@pytest.mark.unit
@FUZZ
@given(event=good_events())
def test_ingestor_accepts_every_good_event(event):
    ingestor = Ingestor(SchemaCache(_REGISTRY), now=_NOW)
    fact = ingestor.accept(_CODEC.encode(_normalized(event), _SCHEMA_ID), topic_for_agency(AGENCY))
    assert fact.event_id == event["event_id"] and fact.case_id == event["case_id"]


# --------------------------------------------------------------------------- real topics


def _read_dlq(settings: Settings, tag: str, want: int, timeout: float) -> dict[bytes, dict]:
    """DLQ entries whose key starts with the tag: key → headers (reason, detail, ...)."""
    consumer = Consumer(
        settings.kafka_client_config(
            **{
                "group.id": f"fuzz-dlq-{tag}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([DLQ_TOPIC])
    found: dict[bytes, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < want and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or not (msg.key() or b"").startswith(tag.encode()):
                continue
            found[msg.key()] = {k: v.decode(errors="replace") for k, v in msg.headers() or []}
    finally:
        consumer.close()
    return found


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bad_messages_on_the_topics_go_to_the_dlq_and_good_events_through(stack, worker, ch):
    tag = new_tag()
    registry = make_client(stack.registry_url)
    schema_id = register_agency_subject(registry, AGENCY)
    wrong_types_id = registry.register_schema(
        f"fuzz.{tag}.wrong-types-value", Schema(json.dumps(_WRONG_TYPES_SCHEMA), "AVRO")
    )
    string_id = registry.register_schema(f"fuzz.{tag}.string-value", Schema('"string"', "AVRO"))
    ensure_topics(stack, {topic_for_agency(UNKNOWN_AGENCY): stack.topic_partitions})
    producer = Producer(stack.kafka_client_config(**{"message.max.bytes": 2_000_000}))
    bad: dict[bytes, tuple[str, set]] = {}
    good: dict[str, str] = {}  # event_id → case_id

    @settings(
        max_examples=8,
        deadline=None,
        phases=[Phase.generate],
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        batch=st.lists(
            st.one_of(
                bad_messages(schema_id, wrong_types_id, string_id, tag=tag).map(
                    lambda m: ("bad", m)
                ),
                good_events(tag=tag).map(lambda e: ("good", e)),
            ),
            min_size=5,
            max_size=20,
        )
    )
    def produce(batch) -> None:
        for what, item in batch:
            if what == "good":
                normalized = parse_event(item)
                producer.produce(
                    topic_for_agency(AGENCY),
                    key=item["case_id"].encode(),
                    value=_CODEC.encode(normalized, schema_id),
                )
                good[normalized["event_id"]] = normalized["case_id"]
            else:
                kind, topic, raw, reasons = item
                key = f"{tag}:{kind}:{len(bad)}".encode()
                producer.produce(topic, key=key, value=raw)
                bad[key] = (kind, reasons)
        assert producer.flush(60) == 0

    produce()
    assert bad and good
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events FINAL WHERE case_id LIKE {p:String}",
                parameters={"p": f"{tag}:%"},
            )
            >= len(good)
            or not worker.alive()
        ),
        timeout=240,
        what="the good events",
    )
    assert worker.alive(), worker.log_tail()
    wait_caught_up(stack, timeout=240)
    assert worker.alive(), worker.log_tail()

    rows = ch.query(
        "SELECT toString(event_id), case_id FROM events FINAL WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    assert dict(rows) == good, "good events lost or extra"
    assert ch.command(
        "SELECT count() FROM cases WHERE case_id LIKE {p:String}", parameters={"p": f"{tag}:%"}
    ) == len(set(good.values()))

    dead = _read_dlq(stack, tag, len(bad), timeout=120)
    assert set(dead) == set(bad), f"missing from the DLQ: {sorted(set(bad) - set(dead))[:5]}"
    for key, headers in dead.items():
        kind, reasons = bad[key]
        assert headers["reason"] in reasons, (kind, headers)
        assert headers["detail"], (kind, headers)
