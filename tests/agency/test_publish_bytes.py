"""The SDK's one validation pass (``events.parse_for_outbox``) stores, chains and sends exactly
what validating, converting and chaining one event at a time did: the same outbox rows (Avro
bodies), chain links and produced messages, and the same errors."""

from __future__ import annotations

import copy
import sqlite3
import uuid
from datetime import date

import pytest

from services.agency import publisher as publisher_module
from services.agency.outbox import storable_form
from services.agency.publisher import Publisher
from services.contracts.chain import ChainHead, chain_event
from services.contracts.codec import HEADER, MAGIC_BYTE, AvroCodec
from services.contracts.events import (
    EventValidationError,
    parse_event,
    parse_for_outbox,
    to_json_form,
    topic_for_agency,
)
from services.contracts.examples import example_events
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.settings import Settings
from services.stack.process import free_ports
from tests.agency.test_publishing import FakeProducer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> list[dict]:
    from services.agency.generator import GeneratorOptions, generate

    tmp = tmp_path_factory.mktemp("bytes")
    options = GeneratorOptions(
        seed=11, events=3000, start=date(2021, 1, 1), end=date(2025, 12, 31), tmp_dir=str(tmp)
    )
    return list(generate(options)) + example_events()


def one_at_a_time(obj: dict) -> tuple[dict, str]:
    """The forms as the SDK built them before the one pass: validate, convert, format."""
    valid = parse_event(obj)
    return storable_form(valid), to_json_form(valid)["occurred_at"]


def test_every_generated_event_gives_the_forms_of_one_step_at_a_time(history):
    for obj in history:
        stored, text = parse_for_outbox(copy.deepcopy(obj))
        assert (stored, text) == one_at_a_time(obj)
        assert list(stored) == list(one_at_a_time(obj)[0])  # the same keys in the same order


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Settings:
    (port,) = free_ports(1)
    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setattr(publisher_module, "Producer", FakeProducer)
    monkeypatch.setattr("services.ops.topics.ensure_agency_topics", lambda *a, **k: None)
    return Settings.from_env()


def fake_publisher(settings: Settings, tmp_path, agency: str | None) -> Publisher:
    return Publisher(
        agency,
        settings,
        registry_client=InMemorySchemaRegistry(),
        outbox_path=tmp_path / "outbox.sqlite",
        chain_path=tmp_path / "chain.sqlite",
    )


def expected_rows(events: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """Outbox rows and chain links as made one event at a time (parse_event, storable_form,
    chain_event with the formatted timestamp, the codec's body)."""
    codec = AvroCodec()
    heads: dict[str, ChainHead] = {}
    rows, links, seen = [], [], set()
    for obj in events:
        event = storable_form(parse_event(obj))
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        agency = event["agency_id"]
        fields, heads[agency] = chain_event(event, heads.get(agency, ChainHead()))
        event.update(fields)
        rows.append((len(rows) + 1, event["event_id"], agency, event["case_id"]))
        rows[-1] += (codec.encode_body(event),)
        links.append((event["event_id"], agency, *fields.values()))
    return rows, links


def test_the_outbox_rows_chain_links_and_messages_are_those_of_one_step_at_a_time(
    history, offline, tmp_path
):
    events = [copy.deepcopy(e) for e in history]
    events.insert(2500, copy.deepcopy(events[100]))  # a retry in a later batch
    events.insert(10, copy.deepcopy(events[3]))  # a duplicate inside a batch
    # Timestamps not written canonically, in the middle of a batch: formatted, not taken as is.
    events[42]["occurred_at"] = events[42]["occurred_at"].replace("+07:00", "+07:00:00")
    events[43]["occurred_at"] = events[43]["occurred_at"].replace("T", " ")
    for obj in events[42:44]:
        assert parse_for_outbox(obj)[1] != obj["occurred_at"]
    pub = fake_publisher(offline, tmp_path, agency=None)
    accepted = []
    for start in range(0, len(events), 700):
        accepted += pub.publish_many(events[start : start + 700])
    agencies = {e["agency_id"] for e in events}
    headers = {agency: HEADER.pack(MAGIC_BYTE, pub.schema_id(agency)) for agency in agencies}
    producer = pub._producer  # the FakeProducer (close lets go of it)
    pub.close(timeout=1)
    assert [a.new for a in accepted].count(False) == 2
    rows, links = expected_rows(events)
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        got_rows = db.execute(
            "SELECT seq, event_id, agency_id, case_id, body FROM outbox ORDER BY seq"
        ).fetchall()
    with sqlite3.connect(tmp_path / "chain.sqlite") as db:
        got_links = db.execute(
            "SELECT event_id, agency_id, seq, prev, hash FROM links ORDER BY rowid"
        ).fetchall()
    assert got_rows == rows
    assert got_links == links
    assert producer.produced == [
        (topic_for_agency(agency), case_id.encode(), headers[agency] + body)
        for _, _, agency, case_id, body in rows
    ]


def test_errors_still_name_the_field_and_the_value(tmp_path, history, offline):
    pub = fake_publisher(offline, tmp_path, agency=None)
    bad = copy.deepcopy(history[5])
    field = next(iter(bad["payload"]))
    bad["payload"][field] = "\x00bad"
    with pytest.raises(EventValidationError) as caught:
        pub.publish_many([history[0], bad])
    assert caught.value.field == f"payload.{field}"
    assert caught.value.value == "\x00bad"
    pub.close(timeout=0.1)


def test_an_agency_publisher_refuses_another_agencys_valid_event_as_before(offline, tmp_path):
    pub = fake_publisher(offline, tmp_path, agency="20-POLICE")
    other = example_events()[0] | {"event_id": str(uuid.uuid4())}
    assert other["agency_id"] != "20-POLICE"
    with pytest.raises(EventValidationError) as caught:
        pub.publish_many([other])
    assert caught.value.field == "agency_id"
    assert "may only publish its own events" in str(caught.value)
    pub.close(timeout=0.1)
