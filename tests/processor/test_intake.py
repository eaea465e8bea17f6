"""The intake with in-memory consumer and producer: routing, acks before commits, replays."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.ops.probe import PROBE_KEY_PREFIX
from services.ops.topics import DLQ_TOPIC, PROBE_TOPIC, facts_topic
from services.processor import envelope
from services.processor.facts import Fact
from services.processor.ingest import RegistryUnavailable, Rejected
from services.processor.intake import (
    BATCH_SIZE,
    ENVELOPE_MAX_BYTES,
    FIRST_BATCH_SIZE,
    SUBSCRIPTION,
    Intake,
    envelopes,
    intake_group,
    next_batch_size,
)

pytestmark = pytest.mark.unit


@dataclass
class Msg:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = b"k"
    _error: object = None

    def error(self):
        return self._error

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value


@dataclass
class FakeConsumer:
    batches: list[list[Msg]] = field(default_factory=list)
    commits: list[list[tuple]] = field(default_factory=list)
    seeks: list[tuple] = field(default_factory=list)
    fail_commit: bool = False
    subscribed: list[str] | None = None
    closed: bool = False

    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None):
        self.subscribed = topics
        self.callbacks = (on_assign, on_revoke, on_lost)

    def consume(self, n, timeout):
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets, asynchronous):
        assert asynchronous is False, "the intake must know the commit happened"
        if self.fail_commit:
            raise RuntimeError("REBALANCE_IN_PROGRESS")
        self.commits.append(offsets)

    def seek(self, tp):
        self.seeks.append(tp)

    def close(self):
        self.closed = True


@dataclass
class FakeProducer:
    """Acks on flush; `fail` names topics whose deliveries fail."""

    fail: set[str] = field(default_factory=set)
    sent: list[tuple] = field(default_factory=list)
    pending: list[tuple] = field(default_factory=list)
    partitions: list[int | None] = field(default_factory=list)

    def produce(self, topic, key, value, headers, on_delivery, partition=None):
        self.pending.append((topic, key, value, headers, on_delivery))
        self.partitions.append(partition)

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        for topic, key, value, headers, callback in self.pending:
            if topic in self.fail:
                callback("MSG_TIMED_OUT", None)
            else:
                self.sent.append((topic, key, value, dict(headers or [])))
                callback(None, None)
        self.pending = []
        return 0


class FakeIngestor:
    """Values are commands: b'ok:<case>', b'bad', b'down' (registry outage once)."""

    def __init__(self) -> None:
        self.outages = 0

    def accept(self, raw, topic):
        if raw == b"bad":
            raise Rejected("invalid_event", "status 'x' is not allowed", "status")
        if raw == b"down" and self.outages == 0:
            self.outages += 1
            raise RegistryUnavailable("connection refused")
        case = raw.decode().split(":", 1)[-1]
        return Fact("e-" + case, "case_opened", case, "20-INSP", 0, 420, None, {})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def accepted(self, agency_id):
        self.calls.append(("accepted", agency_id))

    def rejected(self, topic, reason):
        self.calls.append(("rejected", topic, reason))

    def batch(self, agent, size, seconds):
        self.calls.append(("batch", agent, size))


def make(consumer=None, producer=None, metrics=None):
    sleeps: list[float] = []
    intake = Intake(
        consumer or FakeConsumer(),
        producer or FakeProducer(),
        FakeIngestor(),
        metrics,
        facts=FACTS_TOPIC,
        facts_partitions=PARTITIONS,
        sleep=sleeps.append,
        topic_partition=lambda t, p, o: (t, p, o),
    )
    return intake, sleeps


TOPIC = "agency.20-INSP.events"
FACTS_TOPIC = facts_topic("w1")
PARTITIONS = 4


def test_valid_events_travel_in_one_envelope_per_case_partition_and_offsets_are_committed():
    consumer, producer, metrics = FakeConsumer(), FakeProducer(), Recorder()
    intake, _ = make(consumer, producer, metrics)
    cases = ["C1", "C2", "C1", "C7", "C9"]
    messages = [Msg(TOPIC, 0, 7, b"ok:C1"), Msg(TOPIC, 0, 8, b"ok:C2"), Msg(TOPIC, 3, 2, b"ok:C1")]
    messages += [Msg(TOPIC, 3, 3, b"ok:C7"), Msg(TOPIC, 3, 4, b"ok:C9")]
    assert intake.handle(messages)
    expected: dict[int, list[str]] = {}
    for case in cases:
        expected.setdefault(envelope.partition_for(case, PARTITIONS), []).append(case)
    assert len(expected) > 1, "the cases must hash to several partitions for this test"
    assert producer.partitions == list(expected)
    assert all(t == FACTS_TOPIC and k is None for t, k, *_ in producer.sent)
    assert [[f.case_id for f in envelope.decode(v)] for _, _, v, _ in producer.sent] == list(
        expected.values()
    )
    assert consumer.commits == [[(TOPIC, 0, 9), (TOPIC, 3, 5)]]
    assert metrics.calls == [("accepted", "20-INSP")] * 5 + [("batch", "ingest", 5)]


def test_a_large_batch_is_split_into_envelopes_within_kafkas_message_size():
    facts = [
        Fact(f"e{i}", "case_opened", "C1", "20-INSP", 0, 420, None, {"note": "x" * 2000})
        for i in range(1200)
    ]
    bodies = envelopes(facts)
    assert len(bodies) > 2
    assert all(len(body) <= ENVELOPE_MAX_BYTES for body in bodies)
    assert [f.event_id for body in bodies for f in envelope.decode(body)] == [
        f.event_id for f in facts
    ]


def test_the_old_one_fact_per_message_layout_is_not_produced_any_more():
    consumer, producer = FakeConsumer(), FakeProducer()
    intake, _ = make(consumer, producer)
    assert intake.handle([Msg(TOPIC, 0, 7, b"ok:C1")])
    ((_, _, value, _),) = producer.sent
    assert envelope.is_envelope(value)
    with pytest.raises(ValueError):
        Fact.from_json(value)


def test_a_rejected_event_goes_to_the_dlq_with_its_bytes_reason_and_origin():
    consumer, producer, metrics = FakeConsumer(), FakeProducer(), Recorder()
    intake, _ = make(consumer, producer, metrics)
    assert intake.handle([Msg(TOPIC, 2, 41, b"bad", b"key-1"), Msg(TOPIC, 2, 42, b"ok:C9")])
    (topic, key, value, headers), fact = producer.sent
    assert (topic, key, value) == (DLQ_TOPIC, b"key-1", b"bad")
    assert headers["reason"] == b"invalid_event" and headers["field"] == b"status"
    assert b"'x'" in headers["detail"]
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == (
        TOPIC.encode(),
        b"2",
        b"41",
    )
    assert fact[0] == FACTS_TOPIC
    assert consumer.commits == [[(TOPIC, 2, 43)]]
    assert ("rejected", TOPIC, "invalid_event") in metrics.calls


def test_probes_are_forwarded_unvalidated_under_the_probe_key():
    consumer, producer = FakeConsumer(), FakeProducer()
    intake, _ = make(consumer, producer)
    assert intake.handle([Msg(PROBE_TOPIC, 0, 5, b'{"probe_id": "p"}', b"p")])
    assert producer.sent == [(FACTS_TOPIC, PROBE_KEY_PREFIX + b"p", b'{"probe_id": "p"}', {})]
    assert consumer.commits == [[(PROBE_TOPIC, 0, 6)]]


def test_an_unacknowledged_delivery_commits_nothing_and_rewinds_to_the_batch_start():
    consumer = FakeConsumer()
    intake, _ = make(consumer, FakeProducer(fail={DLQ_TOPIC}))
    assert not intake.handle(
        [Msg(TOPIC, 1, 10, b"ok:C1"), Msg(TOPIC, 1, 11, b"bad"), Msg(TOPIC, 2, 4, b"ok:C3")]
    )
    assert consumer.commits == []
    assert consumer.seeks == [(TOPIC, 1, 10), (TOPIC, 2, 4)]


def test_a_failed_commit_rewinds_so_the_batch_is_read_again():
    consumer = FakeConsumer(fail_commit=True)
    intake, _ = make(consumer)
    assert not intake.handle([Msg(TOPIC, 0, 3, b"ok:C1"), Msg(TOPIC, 0, 4, b"ok:C2")])
    assert consumer.seeks == [(TOPIC, 0, 3)]


def test_a_registry_outage_waits_instead_of_dead_lettering():
    producer = FakeProducer()
    intake, sleeps = make(producer=producer)
    assert intake.handle([Msg(TOPIC, 0, 0, b"down")])
    assert sleeps == [0.5]
    assert [t for t, *_ in producer.sent] == [FACTS_TOPIC]
    assert not intake.waiting


def test_consumer_errors_are_skipped_without_moving_offsets():
    consumer, producer = FakeConsumer(), FakeProducer()
    intake, _ = make(consumer, producer)
    assert intake.handle(
        [Msg(TOPIC, 0, -1001, None, None, "_TRANSPORT"), Msg(TOPIC, 0, 12, b"ok:C1")]
    )
    assert consumer.commits == [[(TOPIC, 0, 13)]]
    assert len(producer.sent) == 1


def test_run_subscribes_by_pattern_and_probe_topic_and_stops_on_request():
    consumer = FakeConsumer(batches=[[Msg(TOPIC, 0, 0, b"ok:C1")]])
    intake, _ = make(consumer)
    original = consumer.consume

    def consume_then_stop(n, timeout):
        batch = original(n, timeout)
        if not batch:
            intake.stop.set()
        return batch

    consumer.consume = consume_then_stop
    intake.run()
    assert consumer.subscribed == SUBSCRIPTION
    assert SUBSCRIPTION[0].startswith("^") and PROBE_TOPIC in SUBSCRIPTION
    assert consumer.commits == [[(TOPIC, 0, 1)]]
    assert consumer.closed


def test_batches_start_small_and_double_while_full_then_start_small_again():
    limits = [FIRST_BATCH_SIZE]
    for _ in range(6):  # a backlog: every batch comes full
        limits.append(next_batch_size(limits[-1], limits[-1]))
    assert limits[:4] == [2_000, 4_000, 8_000, 16_000]
    assert limits[4:] == [BATCH_SIZE] * 3  # never above the cap
    assert next_batch_size(BATCH_SIZE, 150) == FIRST_BATCH_SIZE  # caught up: the next burst


def test_run_asks_the_consumer_for_the_growing_batch_limits():
    full = [[Msg(TOPIC, 0, i, b"ok:C1")] for i in range(3)]
    consumer = FakeConsumer(batches=full)
    intake, _ = make(consumer)
    asked = []

    def consume(n, timeout):
        asked.append(n)
        if len(asked) == 5:
            intake.stop.set()
        return [m for m in consumer.batches.pop(0) for _ in range(n)] if consumer.batches else []

    consumer.consume = consume
    intake.run()
    assert asked == [2_000, 4_000, 8_000, 16_000, 2_000]  # the 4th came empty: back to small


@dataclass
class TP:
    topic: str
    partition: int


def test_owned_partitions_follow_the_rebalance_callbacks_without_asking_the_consumer():
    """The watchdogs read `owned()` from another thread: it must not call into the consumer
    (`assignment()` blocked there while the intake kept consuming)."""
    consumer = FakeConsumer(batches=[[], []])
    intake, _ = make(consumer)
    seen = []
    original = consumer.consume

    def consume(n, timeout):
        assign, revoke, lost = consumer.callbacks
        if len(seen) == 0:
            assign(consumer, [TP(TOPIC, 0), TP(TOPIC, 1), TP("agency.01-INSP.events", 0)])
        elif len(seen) == 1:
            revoke(consumer, [TP(TOPIC, 1)])
        else:
            lost(consumer, [TP(TOPIC, 0)])
            intake.stop.set()
        batch = original(n, timeout)
        seen.append(intake.owned())
        return batch

    consumer.consume = consume
    intake.run()
    assert seen == [
        {(TOPIC, 0), (TOPIC, 1), ("agency.01-INSP.events", 0)},
        {(TOPIC, 0), ("agency.01-INSP.events", 0)},
        {("agency.01-INSP.events", 0)},
    ]
    assert not hasattr(consumer, "assignment")


def test_the_intake_group_is_under_the_worker_app_id_prefix():
    # The worker's ACLs grant groups by the app id prefix (services/stack/kafka_security.py).
    assert intake_group("casestream-worker").startswith("casestream-worker")
    assert intake_group("casestream-worker") != "casestream-worker"


def test_a_fatal_consumer_error_ends_the_intake_instead_of_being_skipped():
    """librdkafka says the consumer cannot go on (`KafkaError.fatal()`): skipping the error, as
    transport trouble is skipped, would leave the intake reading nothing for good."""
    from services.processor.intake import FatalConsumerError

    class _Fatal:
        def fatal(self) -> bool:
            return True

        def __str__(self) -> str:
            return 'KafkaError{code=_FATAL,val=-150,str="Fatal error"}'

    consumer, producer = FakeConsumer(), FakeProducer()
    intake, _ = make(consumer, producer)
    with pytest.raises(FatalConsumerError, match="_FATAL"):
        intake.handle([Msg(TOPIC, 0, 12, b"ok:C1"), Msg(TOPIC, 0, -1001, None, None, _Fatal())])
    assert consumer.commits == []
