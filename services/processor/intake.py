"""The worker's intake: agency topics → facts re-keyed by case (or dead letters), on a thread.

It runs on librdkafka (confluent-kafka), not as a faust agent, for two reasons measured on
this stack:

* librdkafka subscribes by regular expression, so a new agency's topic is read within one
  metadata refresh (``METADATA_REFRESH_MS``) with nothing restarted. faust's aiokafka driver
  cannot subscribe by pattern; the worker used to re-exec itself to subscribe to new topics,
  and after such a rejoin it was seen sitting idle with messages waiting (full test-suite runs,
  about one in two) and once committed an offset it had never processed.
* It sends envelopes (envelope.py): the facts of one batch that hash to one facts partition
  travel as one message to that partition, so derive pays faust's per-message machinery
  (~120 µs, py-spy) once per envelope instead of once per fact.
* The commit is ours: offsets are committed only after the broker acknowledged every fact and
  dead letter of the batch, and only up to the last message handled. A crash anywhere replays
  the batch; a batch whose delivery or commit failed is read again (everything downstream is
  idempotent, keyed by event_id).

The derive half (per-case state, ClickHouse) stays in faust: it reads only the app id's facts
topic (``<app_id>-facts-by-case``), whose partitions never change, so its group never has to
grow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from services.ops.probe import facts_key
from services.ops.topics import AGENCY_TOPIC_PATTERN, DLQ_TOPIC, PROBE_TOPIC, facts_topic
from services.processor import envelope
from services.processor.facts import Fact
from services.processor.ingest import Ingestor, RegistryUnavailable, Rejected
from services.settings import Settings

log = logging.getLogger("casestream.intake")

# A batch pays one wait for the broker's acknowledgements and one synchronous commit, and each
# of its envelopes is one faust message downstream. Under load `consume` returns full batches,
# so a larger batch spreads those costs over more events; at low traffic `consume` returns what
# came within BATCH_WITHIN_SECONDS, as before. 5,000 → 20,000 (with derive's 20 → 60 envelopes,
# worker.py) took the process benchmark from 23.9–24.0 k to 26.8–30.0 k events/s, interleaved,
# 3 runs each (docs/benchmarks.md); 50,000 was no better.
BATCH_SIZE = 20_000
# After a pause (start, restart, a lull) batches start small and double up to BATCH_SIZE, as TCP
# starts slowly: derive can only begin once the intake's first batch is re-keyed, and a first
# batch of 20,000 events is ~0.43 s of the intake's work before derive sees anything, 2,000
# ~0.08 s (`Intake.handle` over the process benchmark's topics).
FIRST_BATCH_SIZE = 2_000
ENVELOPE_MAX_FACTS = 1000  # ~400 kB of facts: well under Kafka's default 1 MB message limit
ENVELOPE_MAX_BYTES = 900_000  # an envelope of unusually large facts is split further
# At low traffic a batch waits this long to fill. Under load `consume` returns full batches at
# once, so the wait costs nothing there; at 1,000 events/s 0.05 s (was 0.2 s) took publish →
# re-keyed from p50 0.19 s to 0.09 s (the latency benchmark, docs/benchmarks.md).
BATCH_WITHIN_SECONDS = 0.05
METADATA_REFRESH_MS = 5000  # how soon a new agency topic is subscribed
REGISTRY_RETRY_MAX_SECONDS = 10.0
# Probes ride with the agency events, so they measure the same path (services/ops/probe.py).
SUBSCRIPTION = [AGENCY_TOPIC_PATTERN.pattern, PROBE_TOPIC]


class FatalConsumerError(RuntimeError):
    """librdkafka says the consumer is unusable: the intake process ends and the worker restarts."""


def _fatal(error: Any) -> bool:
    fatal = getattr(error, "fatal", None)  # confluent_kafka.KafkaError; fakes may give text
    return bool(fatal()) if callable(fatal) else False


def intake_group(app_id: str) -> str:
    """The intake's consumer group: its own, since faust's group speaks another assignor."""
    return f"{app_id}-intake"


def next_batch_size(limit: int, taken: int) -> int:
    """The next batch's limit: twice this one (up to BATCH_SIZE) when this batch was full, the
    first size again when it was not (the backlog is read: the next burst starts small)."""
    return min(BATCH_SIZE, 2 * limit) if taken >= limit else FIRST_BATCH_SIZE


class Message(Protocol):
    """The part of confluent_kafka.Message the intake uses (fakes implement it in tests)."""

    def error(self) -> Any: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class Metrics(Protocol):
    def accepted(self, agency_id: str) -> None: ...
    def rejected(self, topic: str, reason: str) -> None: ...
    def batch(self, agent: str, size: int, seconds: float) -> None: ...


class Intake:
    """Validates and re-keys one batch at a time; commits what the broker acknowledged."""

    def __init__(
        self,
        consumer: Any,
        producer: Any,
        ingestor: Ingestor,
        metrics: Metrics | None = None,
        *,
        facts: str,
        facts_partitions: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        topic_partition: Callable[[str, int, int], Any] | None = None,
    ) -> None:
        self.facts_topic = facts
        self.facts_partitions = facts_partitions  # learned from the broker in run() if None
        self._consumer = consumer
        self._producer = producer
        self._ingestor = ingestor
        self._metrics = metrics
        self._sleep = sleep
        self._tp = topic_partition or _topic_partition
        self.stop = threading.Event()
        self._owned: set[tuple[str, int]] = set()
        self._owned_lock = threading.Lock()
        # Set while a legitimate wait holds offsets still (registry down, broker not acking):
        # the worker's stall watchdogs must not restart for those.
        self.waiting = False
        # Told this process's member id in the group after each assignment (predecessor.py).
        self.on_member: Callable[[str], None] | None = None
        self._member: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, app_id: str, metrics: Metrics | None = None
    ) -> Intake:
        from confluent_kafka import Consumer, Producer

        consumer = Consumer(
            settings.kafka_client_config(
                **{
                    "group.id": intake_group(app_id),
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",  # a new agency's first events are read too
                    "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                    "fetch.wait.max.ms": 100,  # latency: an idle partition answers within 100 ms
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                }
            )
        )
        producer = Producer(
            settings.kafka_client_config(
                **{
                    "enable.idempotence": True,  # acks=all; retries never duplicate or reorder
                    "linger.ms": 10,
                    "compression.type": "lz4",  # envelopes are large; faust reads lz4 through cramjam
                    # Only failures come back to Python (py-spy: a report per message cost 18 % of the
                    # worker); flush() still waits for every acknowledgement.
                    "delivery.report.only.error": True,
                    # Java's and aiokafka's partitioner: a case lands in the partition faust expects.
                    "partitioner": "murmur2_random",
                }
            )
        )
        return cls(
            consumer, producer, Ingestor.from_settings(settings), metrics, facts=facts_topic(app_id)
        )

    def owned(self) -> set[tuple[str, int]]:
        """The agency-topic partitions this process's intake is assigned (for the watchdogs:
        with several workers, each judges only its own).

        Kept from the rebalance callbacks, which run on the intake's thread inside `consume`.
        Asking the consumer instead (`assignment()`) from the watchdog's thread blocked for as
        long as the intake kept consuming: py-spy showed that call in 38 % of the worker's
        samples, and the thread watchdog never got past it.
        """
        with self._owned_lock:
            return set(self._owned)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        with self._owned_lock:
            self._owned |= {(tp.topic, tp.partition) for tp in partitions}
        if self.on_member is not None:
            try:
                member = consumer.memberid()
                if member and member != self._member:
                    self.on_member(member)
                    self._member = member
            except Exception as exc:  # noqa: BLE001 - a note, never a reason to stop reading
                log.warning("member id not noted (%r)", exc)

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        with self._owned_lock:
            self._owned -= {(tp.topic, tp.partition) for tp in partitions}

    def run(self) -> None:
        """Consume until `stop` is set. Raises only on a bug or a fatal client error."""
        if self.facts_partitions is None:
            self.facts_partitions = self._partitions_of(self.facts_topic)
        self._consumer.subscribe(
            SUBSCRIPTION, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        try:
            limit = FIRST_BATCH_SIZE
            while not self.stop.is_set():
                messages = self._consumer.consume(limit, timeout=BATCH_WITHIN_SECONDS)
                if messages:
                    self.handle(messages)
                limit = next_batch_size(limit, len(messages))
        finally:
            self._consumer.close()

    def handle(self, messages: Sequence[Message]) -> bool:
        """Re-key one batch, wait for the acks, commit. False = not committed, read again."""
        started = time.perf_counter()
        failures: list[Any] = []
        first: dict[tuple[str, int], int] = {}
        after: dict[tuple[str, int], int] = {}
        by_partition: dict[int, list[Fact]] = {}
        partitions = self.facts_partitions or 1

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(err)

        for message in messages:
            error = message.error()
            if error is not None:
                if _fatal(error):  # the client says it cannot go on (librdkafka's fatal errors)
                    raise FatalConsumerError(f"the intake's consumer cannot go on: {error}")
                # Transport trouble and unknown-topic notices: librdkafka recovers by itself.
                log.warning("consumer: %s", error)
                continue
            where = (message.topic(), message.partition())
            first.setdefault(where, message.offset())
            after[where] = message.offset() + 1
            routed = self._route(message)
            if isinstance(routed, Fact):
                partition = envelope.partition_for(routed.case_id, partitions)
                by_partition.setdefault(partition, []).append(routed)
            else:
                self._produce(*routed, on_delivery)
        for partition, facts in by_partition.items():
            for body in envelopes(facts):
                self._produce(self.facts_topic, None, body, None, on_delivery, partition)
        self.waiting = True
        try:
            while self._producer.flush(1.0) > 0:  # librdkafka gives up after message.timeout.ms
                if self.stop.is_set():
                    return False
        finally:
            self.waiting = False
        if failures:
            log.error(
                "%d of the batch's messages were not acknowledged (%s): reading the batch again",
                len(failures),
                failures[0],
            )
            self._rewind(first)
            return False
        if after:
            try:
                self._consumer.commit(
                    offsets=[self._tp(t, p, o) for (t, p), o in after.items()], asynchronous=False
                )
            except Exception as exc:  # noqa: BLE001 - KafkaException: rebalance, coordinator
                log.warning("commit failed (%s): reading the batch again", exc)
                self._rewind(first)
                return False
        if self._metrics:
            self._metrics.batch("ingest", len(messages), time.perf_counter() - started)
        return True

    def _route(
        self, message: Message
    ) -> Fact | tuple[str, bytes | None, bytes | None, list | None]:
        """The fact for an envelope, or (topic, key, value, headers) of what else it becomes."""
        if message.topic() == PROBE_TOPIC:  # forwarded as is, never validated or stored
            return self.facts_topic, facts_key(message.key()), message.value(), None
        try:
            fact = self._accept(message)
        except Rejected as rejected:
            if self._metrics:
                self._metrics.rejected(message.topic(), rejected.reason)
            return DLQ_TOPIC, message.key(), message.value(), dlq_headers(rejected, message)
        if self._metrics:
            self._metrics.accepted(fact.agency_id)
        return fact

    def _accept(self, message: Message) -> Fact:
        """A registry outage is not the event's fault: wait for the registry, don't dead-letter."""
        delay = 0.5
        while True:
            try:
                return self._ingestor.accept(message.value(), message.topic())
            except RegistryUnavailable as exc:
                log.warning("registry unavailable (%s); retrying in %.1fs", exc, delay)
                self.waiting = True
                try:
                    self._sleep(delay)
                finally:
                    self.waiting = False
                delay = min(delay * 2, REGISTRY_RETRY_MAX_SECONDS)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list | None,
        on_delivery: Callable,
        partition: int | None = None,
    ) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=on_delivery, **extra
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)

    def _partitions_of(self, topic: str) -> int:
        """How many partitions the facts topic has. The worker created it just before; a broker
        may not list a new topic for a moment, so ask again for up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                return len(found.partitions)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the facts topic {topic!r} is missing ({found and found.error})"
                )
            self._sleep(0.5)

    def _rewind(self, first: dict[tuple[str, int], int]) -> None:
        """Seek back to the batch's first offsets; partitions lost to a rebalance are skipped
        (their new owner starts from the last commit anyway)."""
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(self._tp(topic, partition, offset))
            except Exception as exc:  # noqa: BLE001 - not assigned any more
                log.info("not rewinding %s[%d]: %s", topic, partition, exc)


def envelopes(facts: list[Fact]) -> list[bytes]:
    """The facts as envelopes of at most ENVELOPE_MAX_FACTS facts and ENVELOPE_MAX_BYTES bytes."""
    out: list[bytes] = []
    for start in range(0, len(facts), ENVELOPE_MAX_FACTS):
        chunk = facts[start : start + ENVELOPE_MAX_FACTS]
        body = envelope.encode(chunk)
        if len(body) > ENVELOPE_MAX_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            out.extend(envelopes(chunk[:half]))
            out.extend(envelopes(chunk[half:]))
        else:
            out.append(body)
    return out


def dlq_headers(rejected: Rejected, message: Message) -> list[tuple[str, bytes]]:
    """Why and where from: `casestream dlq` lists, groups and replays by these headers."""
    return [
        ("reason", rejected.reason.encode()),
        ("detail", rejected.detail.encode()[:2000]),
        ("field", (rejected.field or "").encode()),
        ("source_topic", message.topic().encode()),
        ("source_partition", str(message.partition()).encode()),
        ("source_offset", str(message.offset()).encode()),
        ("rejected_at_ms", str(int(time.time() * 1000)).encode()),
    ]


def _topic_partition(topic: str, partition: int, offset: int) -> Any:
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition, offset)
