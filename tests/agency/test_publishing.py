"""The agency SDK: `Publisher` with its durable outbox.

* unit: validation, idempotency and the outbox without any server (fake registry, no broker);
* integration: every event type round-trips Publisher -> Kafka -> registry-aware decoding;
* integration + slow: the broker goes away (a private Kafka + Apicurio started here, never the
  session's Kafka, which other tests share) and every accepted event is delivered exactly once
  when it is back, also across a restart of the publishing process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from services.agency.outbox import Outbox, storable_form
from services.agency.publisher import Publisher
from services.contracts.codec import decode, schema_id_of
from services.contracts.events import (
    EVENT_TYPES,
    EventValidationError,
    parse_event,
    to_json_form,
    topic_for_agency,
)
from services.contracts.examples import CASE_ID, example_event
from services.contracts.fake_registry import InMemorySchemaRegistry
from services.contracts.registry import SchemaCache, make_client, subject_for_agency
from services.ops.topics import ensure_agency_topic
from services.settings import Settings
from tests.conftest import free_ports, stack_env
from tests.helpers import new_tag

# --------------------------------------------------------------------------- helpers (also
# used by tests/agency/test_bulk_import.py)


def read_topics(settings: Settings, topics: Iterable[str], timeout: float = 60.0) -> list[Message]:
    """Every message of the topics, from the beginning up to their current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        ends: dict[tuple[str, int], int] = {}
        start = []
        for topic in topics:
            if topic not in metadata.topics:
                continue
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high > low:
                    ends[(topic, partition)] = high
                    start.append(TopicPartition(topic, partition, low))
        consumer.assign(start)
        messages: list[Message] = []
        remaining = set(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            messages.append(message)
            if message.offset() + 1 >= ends[(message.topic(), message.partition())]:
                remaining.discard((message.topic(), message.partition()))
        assert not remaining, f"could not read to the end of {sorted(remaining)}"
        return messages
    finally:
        consumer.close()


def decoded_events(
    settings: Settings, messages: Iterable[Message], tag: str | None = None
) -> list[dict]:
    """Decode (with the real registry) the messages whose key (case_id) carries ``tag``."""
    cache = SchemaCache(make_client(settings.registry_url))
    prefix = f"{tag}:".encode() if tag else b""
    return [decode(m.value(), cache) for m in messages if (m.key() or b"").startswith(prefix)]


def _events(tag: str, count: int, agency: str = "20-INSP") -> list[dict]:
    return [
        example_event(
            "stage_changed",
            event_id=str(uuid.uuid4()),
            agency_id=agency,
            case_id=f"{tag}:{agency}/2024/{n:04d}",
            sequence=None,
        )
        for n in range(count)
    ]


def _without_none(event: dict) -> dict:
    return {k: v for k, v in event.items() if v is not None}


# =========================================================================== unit


@pytest.fixture
def offline(tmp_path) -> Settings:
    """Settings whose broker does not exist (nothing listens on the port)."""
    (port,) = free_ports(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASESTREAM_HOME", str(tmp_path / "home"))
        mp.setenv("CASESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
        return Settings.from_env()


def _offline_publisher(settings: Settings, agency: str | None, registry=None, **kw) -> Publisher:
    return Publisher(
        agency,
        settings,
        registry_client=registry or InMemorySchemaRegistry(),
        producer_config={"log_level": 0, "reconnect.backoff.max.ms": 1000},
        **kw,
    )


@pytest.mark.unit
def test_accepted_events_wait_in_the_outbox_while_the_broker_is_unreachable(offline):
    pub = _offline_publisher(offline, "20-INSP")
    events = _events("u", 5)
    accepted = pub.publish_many(events)
    assert [a.event_id for a in accepted] == [e["event_id"] for e in events]
    assert all(a.new for a in accepted)
    assert pub.flush(timeout=0.5) == 5
    # the same event again (a retry by the agency) is a no-op
    assert pub.publish(events[0]).new is False
    assert pub.outbox.counts() == {"pending": 5, "delivered": 0}
    assert pub.close(timeout=0.2) == 5

    # a new process finds them on disk
    outbox = Outbox(offline.home / "outbox" / "20-INSP.sqlite")
    pending = list(outbox.pending())
    outbox.close()
    assert [event_id for event_id, _ in pending] == [e["event_id"] for e in events]
    stored = pending[0][1]
    assert stored["case_id"] == events[0]["case_id"] and isinstance(stored["occurred_at"], int)


@pytest.mark.unit
def test_an_agency_publishes_only_as_itself_and_a_bad_batch_is_refused_whole(offline):
    pub = _offline_publisher(offline, "20-INSP")
    try:
        with pytest.raises(EventValidationError) as info:
            pub.publish(example_event("transfer_received"))  # an event of 20-POLICE
        assert info.value.field == "agency_id" and "only publish its own" in info.value.reason

        good = _events("u", 2)
        bad = {**_events("u", 1)[0], "payload": {"stage": "acquitted"}}
        with pytest.raises(EventValidationError) as info:
            pub.publish_many([*good, bad])
        assert info.value.field == "payload.stage"
        assert pub.outbox.counts() == {"pending": 0, "delivered": 0}
        future = {**good[0], "occurred_at": "2999-01-01T00:00:00Z"}
        with pytest.raises(EventValidationError, match="future"):
            pub.publish(future)
    finally:
        pub.close(timeout=0.1)


@pytest.mark.unit
def test_operator_publisher_keeps_one_outbox_for_many_agencies(offline, tmp_path):
    registry = InMemorySchemaRegistry()
    path = tmp_path / "operator.sqlite"
    pub = _offline_publisher(offline, None, registry, outbox_path=path)
    events = [example_event(t, event_id=str(uuid.uuid4())) for t in EVENT_TYPES]
    assert all(a.new for a in pub.publish_many(events))
    assert pub.close(timeout=0.2) == len(events)
    agencies = {e["agency_id"] for e in events}
    # the schema was registered for each agency's own subject
    assert set(registry.get_subjects()) == {subject_for_agency(a) for a in agencies}
    assert path.exists()


@pytest.mark.unit
def test_events_wait_when_the_registry_is_down(offline):
    class Down(InMemorySchemaRegistry):
        def lookup_schema(self, *args, **kwargs):
            raise ConnectionError("registry unreachable")

    pub = _offline_publisher(offline, "20-INSP", Down())
    assert all(a.new for a in pub.publish_many(_events("u", 3)))
    assert pub.close(timeout=0.3) == 3


@pytest.mark.unit
def test_prepare_registers_every_agency_and_checks_their_topics_in_one_call(
    offline, monkeypatch, tmp_path
):
    checked: list[list[str]] = []
    monkeypatch.setattr(
        "services.ops.topics.ensure_agency_topics",
        lambda settings, agencies, timeout: checked.append(list(agencies)),
    )
    registry = InMemorySchemaRegistry()
    pub = _offline_publisher(offline, None, registry, outbox_path=tmp_path / "op.sqlite")
    try:
        pub.prepare(["20-INSP", "20-POLICE", "01-COURT", "20-INSP"])
        assert set(registry.get_subjects()) == {
            subject_for_agency(a) for a in ("20-INSP", "20-POLICE", "01-COURT")
        }
        assert checked == [["01-COURT", "20-INSP", "20-POLICE"]]
        # the first events of these agencies pay neither again
        pub.publish_many([e for e in _events("p", 3)])
        assert len(checked) == 1
        with pytest.raises(ValueError, match="not-an-agency|agency"):
            pub.prepare(["not-an-agency"])
    finally:
        pub.close(timeout=0.1)


class FakeProducer:
    """Stands in for confluent_kafka.Producer: serves delivery reports in poll/flush, failing
    the first ``fail`` messages (as librdkafka does after message.timeout.ms)."""

    fail = 0

    def __init__(self, config: dict) -> None:
        self.config = config
        self.produced: list[tuple[str, bytes, bytes]] = []
        self._waiting: list = []

    def produce(self, topic, key=None, value=None, on_delivery=None) -> None:
        self.produced.append((topic, key, value))
        self._waiting.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            if FakeProducer.fail:
                FakeProducer.fail -= 1
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                callback(None, None)
        return len(waiting)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self._waiting)


@pytest.mark.unit
def test_each_event_is_produced_once_unless_its_delivery_failed(offline, monkeypatch):
    monkeypatch.setattr("services.agency.publisher.Producer", FakeProducer)
    monkeypatch.setattr(FakeProducer, "fail", 3)
    pub = Publisher("20-INSP", offline, registry_client=InMemorySchemaRegistry())
    statements: list[str] = []
    pub.outbox._db.set_trace_callback(statements.append)
    events = _events("u", 300)
    pub.publish_many(events)
    assert pub.flush(timeout=5) == 0
    assert pub.delivery_errors == 3
    assert pub.outbox.counts() == {"pending": 0, "delivered": 300}

    produced = Counter(key for _topic, key, _value in pub._producer.produced)
    assert sorted(produced.values()) == [1] * 297 + [2] * 3  # only the failed ones again
    assert set(produced) == {e["case_id"].encode() for e in events}

    # acknowledgements are written in a few transactions, not one commit per event
    in_transaction, commits = False, 0
    for statement in statements:
        if statement == "BEGIN":
            in_transaction = True
        elif statement == "COMMIT":
            in_transaction, commits = False, commits + 1
        elif statement.startswith("UPDATE outbox SET delivered_at"):
            assert in_transaction, "delivered events marked outside a transaction"
    assert commits <= 5
    pub.close(timeout=1)


class ScatteredProducer(FakeProducer):
    """Acknowledges every message, in the order ~800 partitions would: scattered."""

    def poll(self, timeout: float = 0) -> int:
        waiting, self._waiting = self._waiting, []
        for i in [*range(1, len(waiting), 2), *range(0, len(waiting), 2)]:
            waiting[i](None, None)
        return len(waiting)


@pytest.mark.unit
def test_scattered_acknowledgements_are_marked_later_in_long_runs_and_never_resent(
    offline, monkeypatch
):
    monkeypatch.setattr("services.agency.publisher.Producer", ScatteredProducer)
    monkeypatch.setattr("services.agency.publisher._MARK_SECONDS", 3600)  # the count decides
    pub = Publisher("20-INSP", offline, registry_client=InMemorySchemaRegistry())
    updates: list[str] = []
    pub.outbox._db.set_trace_callback(
        lambda s: updates.append(s) if s.startswith("UPDATE outbox SET delivered_at") else None
    )
    try:
        for part in range(3):
            pub.publish_many(_events(f"s{part}", 200))  # the producer polled: all acknowledged
        assert len(pub._in_flight) == 600  # acknowledged, not marked: in flight, never re-sent
        assert len(pub._producer.produced) == 600  # each event produced exactly once
        assert updates == []  # 600 scattered numbers would have been ~300 runs, one UPDATE each
        assert pub.flush(timeout=5) == 0  # flush marks whatever was acknowledged
        assert pub.outbox.counts() == {"pending": 0, "delivered": 600}
        assert len(updates) == 1  # one run: every number was acknowledged by then
        assert len(pub._producer.produced) == 600
        # enough acknowledged numbers waiting: marked without a flush
        monkeypatch.setattr("services.agency.publisher._MARK_EVERY", 100)
        pub.publish_many(_events("s3", 200))
        assert len(updates) == 2 and pub.outbox.counts() == {"pending": 0, "delivered": 800}
    finally:
        pub.close(timeout=1)


class SilentProducer(FakeProducer):
    """Takes messages and never reports a delivery: the broker never acknowledged them."""

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return len(self._waiting)

    def purge(self) -> None:
        self._waiting = []


class ShuffledProducer(FakeProducer):
    """Reports deliveries out of order (many partitions) and fails every third message."""

    def poll(self, timeout: float = 0) -> int:
        waiting, self._waiting = self._waiting, []
        order = list(range(len(waiting)))
        order = order[1::2] + order[::2]  # odd positions first, then even ones
        for i in order:
            if self.failing(i):
                waiting[i](KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                waiting[i](None, None)
        return len(waiting)

    @staticmethod
    def failing(i: int) -> bool:
        return i % 3 == 1


def _decoded(registry: InMemorySchemaRegistry, produced) -> dict[str, dict]:
    cache = SchemaCache(registry)
    return {e["event_id"]: e for e in (decode(value, cache) for _t, _k, value in produced)}


@pytest.mark.unit
def test_a_publisher_killed_before_any_acknowledgement_resends_every_event_at_next_start(
    offline, monkeypatch, tmp_path
):
    """`publish_many` returned = on disk: a process that dies before Kafka acknowledged
    anything (no close, no flush, no delivery report) loses nothing; the next publisher on the
    same outbox sends every event, with the same bytes as an unbroken run would have."""
    registry = InMemorySchemaRegistry()
    path = tmp_path / "outbox.sqlite"
    monkeypatch.setattr("services.agency.publisher.Producer", SilentProducer)
    killed = Publisher("20-INSP", offline, registry_client=registry, outbox_path=path)
    events = _events("k", 50)
    assert all(a.new for a in killed.publish_many(events))
    sent_before = list(killed._producer.produced)
    assert len(sent_before) == 50  # produced, never acknowledged
    killed.outbox._db.close()  # the process dies here: nothing else runs
    killed.chain._db.close()

    monkeypatch.setattr("services.agency.publisher.Producer", FakeProducer)
    restarted = Publisher("20-INSP", offline, registry_client=registry, outbox_path=path)
    try:
        assert restarted.flush(timeout=5) == 0
        resent = restarted._producer.produced
        assert sorted(resent) == sorted(sent_before)  # every event, the same bytes
        decoded = _decoded(registry, resent)
        assert set(decoded) == {e["event_id"] for e in events}
        for event in events:
            assert to_json_form(decoded[event["event_id"]]) == _without_none(event)
        assert restarted.outbox.counts() == {"pending": 0, "delivered": 50}
        assert not any(a.new for a in restarted.publish_many(events))  # still idempotent
    finally:
        restarted.close(timeout=1)


@pytest.mark.unit
def test_delivery_marks_only_what_kafka_acknowledged_whatever_the_order(
    offline, monkeypatch, tmp_path
):
    """Acknowledgements arrive out of order with failures between them: the outbox marks runs
    of acknowledged sequence numbers, and never an event whose delivery failed."""
    monkeypatch.setattr("services.agency.publisher.Producer", ShuffledProducer)
    monkeypatch.setattr("services.agency.publisher._MARK_EVERY", 1)  # mark after each call
    pub = Publisher(
        "20-INSP", offline, registry_client=InMemorySchemaRegistry(), outbox_path=tmp_path / "o"
    )
    try:
        events = _events("w", 60)
        pub.publish_many(events)
        failed = {e["event_id"] for i, e in enumerate(events) if ShuffledProducer.failing(i)}
        pending = {event_id for event_id, _ in pub.outbox.pending()}
        assert pending == failed
        assert pub.outbox.counts() == {"pending": len(failed), "delivered": 60 - len(failed)}
        assert pub.delivery_errors == len(failed)
        monkeypatch.setattr(ShuffledProducer, "failing", staticmethod(lambda i: False))
        assert pub.flush(timeout=5) == 0  # the failed ones are sent again and marked
        assert pub.outbox.counts() == {"pending": 0, "delivered": 60}
    finally:
        pub.close(timeout=1)


@pytest.mark.unit
def test_a_run_of_marks_never_covers_a_number_it_was_not_given(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        events = [(e["event_id"], storable_form(parse_event(e))) for e in _events("r", 8)]
        assert all(outbox.add_many(events))
        seqs = [m.seq for m in outbox.pending_messages()]
        assert seqs == list(range(seqs[0], seqs[0] + 8))  # one call: consecutive numbers
        outbox.mark_delivered([seqs[5], seqs[0], seqs[1], seqs[3], seqs[7]])
        assert [m.seq for m in outbox.pending_messages()] == [seqs[2], seqs[4], seqs[6]]
        outbox.mark_delivered([seqs[0]])  # marking twice changes nothing
        assert outbox.counts() == {"pending": 3, "delivered": 5}
    finally:
        outbox.close()


@pytest.mark.unit
def test_an_outbox_written_by_the_json_version_is_migrated_and_sent(offline, monkeypatch, tmp_path):
    """An outbox file of the earlier layout (validated JSON per row) keeps its pending events
    and its delivered ids (idempotency) after the upgrade."""
    import json
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE outbox (event_id TEXT PRIMARY KEY, event_json TEXT NOT NULL,"
        " accepted_at REAL NOT NULL, delivered_at REAL, attempts INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("CREATE INDEX outbox_pending ON outbox (delivered_at, accepted_at)")
    events = _events("m", 3)
    for n, event in enumerate(events):
        stored = storable_form(parse_event(event))
        old.execute(
            "INSERT INTO outbox (event_id, event_json, accepted_at, delivered_at) VALUES (?,?,?,?)",
            (event["event_id"], json.dumps(stored), n, 1.0 if n == 0 else None),
        )
    old.commit()
    old.close()

    registry = InMemorySchemaRegistry()
    monkeypatch.setattr("services.agency.publisher.Producer", FakeProducer)
    pub = Publisher("20-INSP", offline, registry_client=registry, outbox_path=path)
    try:
        assert pub.flush(timeout=5) == 0
        assert pub.outbox.counts() == {"pending": 0, "delivered": 3}
        decoded = _decoded(registry, pub._producer.produced)
        assert set(decoded) == {events[1]["event_id"], events[2]["event_id"]}
        assert to_json_form(decoded[events[1]["event_id"]]) == _without_none(events[1])
        assert not any(a.new for a in pub.publish_many(events))
    finally:
        pub.close(timeout=1)


# =========================================================================== round trip


@pytest.mark.integration
def test_every_event_type_round_trips_through_the_registry(stack):
    tag = new_tag()
    events = [
        example_event(t, event_id=str(uuid.uuid4()), case_id=f"{tag}:{CASE_ID}")
        for t in EVENT_TYPES
    ]
    # optional fields absent (sequence, damage_vnd, count) round-trip too
    events.append(
        example_event(
            "case_opened", event_id=str(uuid.uuid4()), case_id=f"{tag}:{CASE_ID}-b", sequence=None
        )
    )
    del events[-1]["payload"]["damage_vnd"]
    events = [_without_none(e) for e in events]
    by_agency: dict[str, list[dict]] = {}
    for event in events:
        by_agency.setdefault(event["agency_id"], []).append(event)

    schema_ids = {}
    for agency, own in by_agency.items():  # each agency publishes as itself
        pub = Publisher(agency, stack)
        assert all(a.new for a in pub.publish_many(own))
        schema_ids[agency] = pub.schema_id(agency)
        assert pub.close(timeout=60) == 0

    messages = [
        m
        for m in read_topics(stack, [topic_for_agency(a) for a in by_agency])
        if m.key().startswith(f"{tag}:".encode())
    ]
    assert len(messages) == len(events)
    cache = SchemaCache(make_client(stack.registry_url))
    sent = {e["event_id"]: e for e in events}
    for message in messages:
        event = decode(message.value(), cache)
        original = sent.pop(event["event_id"])
        assert to_json_form(event) == original
        chain = {name: event.pop(name) for name in ("chain_seq", "chain_prev", "chain_hash")}
        assert event == parse_event(original)
        assert chain["chain_seq"] >= 1 and len(chain["chain_hash"]) == 64  # chained on accept
        assert message.topic() == topic_for_agency(original["agency_id"])
        assert message.key() == original["case_id"].encode()
        assert schema_id_of(message.value()) == schema_ids[original["agency_id"]]
    assert sent == {}
    assert {e["event_type"] for e in events} == set(EVENT_TYPES)


# =========================================================================== broker outage


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Settings]:
    """A private Kafka + Apicurio (registry storage lives in this Kafka) that tests may stop."""
    from services.stack import manager

    home = Path(tempfile.mkdtemp(prefix="casestream-outbox-"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**stack_env(), "CASESTREAM_HOME": str(home)}.items():
            mp.setenv(key, value)
        settings = Settings.from_env()
    try:
        manager.up(settings, parts=["kafka", "registry"], log=lambda m: None)
        yield settings
    finally:
        manager.down(settings, log=lambda m: None)
        shutil.rmtree(home, ignore_errors=True)


def _stop_broker(settings: Settings) -> None:
    from services.stack import kafka, manager

    manager.down(settings, parts=["kafka"], log=lambda m: None)
    assert not kafka.is_ready(settings)


def _start_broker(settings: Settings) -> None:
    from services.stack import manager

    # `up` is idempotent: it restarts the registry only if it did not survive the outage
    manager.up(settings, parts=["kafka", "registry"], log=lambda m: None)


def _delivered_once(settings: Settings, agency: str, events: list[dict]) -> None:
    counts = Counter(
        e["event_id"]
        for e in decoded_events(settings, read_topics(settings, [topic_for_agency(agency)]))
    )
    wanted = {e["event_id"] for e in events}
    assert {eid: n for eid, n in counts.items() if eid in wanted} == dict.fromkeys(wanted, 1)


@pytest.mark.integration
@pytest.mark.slow
def test_events_accepted_while_the_broker_is_down_are_delivered_once(own_stack):
    s = own_stack
    agency = "20-INSP"
    ensure_agency_topic(s, agency)
    pub = Publisher(agency, s)
    try:
        pub.schema_id(agency)  # registered and cached while the registry can write to Kafka
        warm_up = _events("warm", 1, agency)
        pub.publish_many(warm_up)
        assert pub.flush(timeout=60) == 0

        _stop_broker(s)
        events = _events(new_tag(), 40, agency)
        accepted = pub.publish_many(events)
        assert all(a.new for a in accepted)
        assert pub.flush(timeout=3) == len(events)  # accepted, on disk, not delivered
        assert pub.outbox.counts() == {"pending": len(events), "delivered": 1}

        _start_broker(s)
        assert pub.flush(timeout=180) == 0
        assert pub.outbox.counts() == {"pending": 0, "delivered": len(events) + 1}
    finally:
        pub.close(timeout=5)
    _delivered_once(s, agency, [*warm_up, *events])


@pytest.mark.integration
@pytest.mark.slow
def test_pending_events_survive_a_publisher_restart_and_are_delivered_once(own_stack):
    s = own_stack
    agency = "20-POLICE"
    ensure_agency_topic(s, agency)
    first = Publisher(agency, s)
    first.schema_id(agency)
    assert first.flush(timeout=30) == 0

    _stop_broker(s)
    events = _events(new_tag(), 30, agency)
    assert all(a.new for a in first.publish_many(events))
    assert first.close(timeout=2) == len(events)  # the process ends with events pending
    del first

    _start_broker(s)
    second = Publisher(agency, s)  # same agency -> same outbox file; sends what is pending
    try:
        assert second.flush(timeout=180) == 0
        assert second.outbox.counts() == {"pending": 0, "delivered": len(events)}
        # publishing the same events again (the agency retries) sends nothing new
        assert not any(a.new for a in second.publish_many(events))
        assert second.flush(timeout=10) == 0
    finally:
        second.close(timeout=5)
    _delivered_once(s, agency, events)
