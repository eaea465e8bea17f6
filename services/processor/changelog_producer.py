"""The case-state changelog, written through librdkafka to the partition of the facts it derives.

Why librdkafka: in full test-suite runs the derive agent was seen blocked for minutes inside
faust's producer (aiokafka's accumulator waits for a partition's batch to drain, up to faust's
20-minute producer request timeout) with facts waiting and nothing logged. librdkafka batches
and retries in its own threads and ``delivered()`` is bounded, so a stuck write becomes a
restart (replay), never a silent stall.

Why an explicit partition: a case's state must live in the changelog partition with the number
of the facts partition it is derived from, so that faust's assignor, which hands out partition
*p* of every topic of one partition count to the same worker, restores that state on the worker
that derives those facts, and moves it with them on a rebalance. (faust's own changelog keyed
the JSON-encoded case id, which murmur2 put elsewhere: several workers per app id were unsafe.)

Why delivery reports for every record: the highest offset delivered per partition is the
"persisted offset" the state store records with the state, so a restart reads only the
changelog's tail. Records of one partition are delivered in order (idempotent producer), so the
last report is the highest; a report costs ~1 µs, a few per envelope of hundreds of facts.

Why `connect` at start: a producer created at the first batch made that batch wait 0.5-1.0 s
for its first acknowledgement (connections, metadata, the idempotent producer's id), measured
on the local stack; connected beforehand, the first flush took 3 ms. The worker connects it
while faust joins its group, so derive's first batch does not pay it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from services.settings import Settings

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """Kafka did not take every message sent since the last ``delivered()``."""


class ChangelogProducer:
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._failed: list[str] = []
        self._offsets: dict[int, int] = {}  # partition → highest delivered offset
        self._lock = threading.Lock()  # delivery reports arrive on the flushing thread
        self._settings = settings
        self._overrides = overrides
        self._client: Any = None
        self._creating = threading.Lock()  # `connect` and a first batch may race to create it

    @property
    def _producer(self) -> Any:
        """Created on first use: building the app (and its unit tests) connects to nothing."""
        if self._client is None:
            with self._creating:
                if self._client is None:
                    self._client = self._new_producer(self._settings, self._overrides)
        return self._client

    def connect(self, topic: str, timeout: float = 10.0) -> bool:
        """Create the producer and fetch `topic`'s metadata now (blocking; run it off the event
        loop). False, logged, when the broker did not answer: the first batch then connects, as
        it would have without this."""
        try:
            self._producer.list_topics(topic, timeout=timeout)
            return True
        except Exception as exc:  # noqa: BLE001 - KafkaException: the first send retries
            log.warning("changelog producer not connected in advance (%s)", exc)
            return False

    def _new_producer(self, settings: Settings, overrides: dict[str, Any]) -> Any:
        from confluent_kafka import Producer

        return Producer(
            settings.kafka_client_config(
                **{
                    "enable.idempotence": True,  # acks=all; retries never duplicate or reorder
                    "linger.ms": 5,
                    "compression.type": "lz4",
                    "on_delivery": self._on_delivery,
                    "message.timeout.ms": 60_000,
                    **overrides,
                }
            )
        )

    def send(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """Queue one record for ``partition``; waits only while librdkafka's queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def delivered(self, timeout: float) -> dict[int, int]:
        """Wait until Kafka acknowledged every queued record; the highest offset per partition.

        Raises TimeoutError if some are still in flight after ``timeout`` seconds and
        DeliveryFailed if Kafka refused any: the caller must not acknowledge its input then.
        """
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._producer.flush, timeout)
        with self._lock:
            failed, self._failed = self._failed, []
            offsets, self._offsets = self._offsets, {}
        if failed:
            raise DeliveryFailed(f"{len(failed)} records not delivered: {failed[0]}")
        if left:
            raise TimeoutError(f"{left} records not acknowledged in {timeout:.0f}s")
        return offsets

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed.append(f"{msg.topic()}: {err}")
            return
        partition, offset = msg.partition(), msg.offset()
        if offset > self._offsets.get(partition, -1):
            self._offsets[partition] = offset
