"""The ingest agent's producer: re-keyed facts and dead letters through librdkafka.

Why not faust's own producer: every ``topic.send()`` there is a coroutine, a future and a trip
through aiokafka's Python batch accumulator on the worker's only event loop. py-spy put that at
about a third of the ingest agent (benchmarks/, docs/benchmarks.md). ``confluent_kafka.Producer``
does the batching, compression and acknowledgements in librdkafka's own threads; the event loop
only hands it bytes (a few µs each).

What stays the same:

* Partitioning: ``murmur2_random`` is the Java/aiokafka key hash (``murmur2(key) & 0x7fffffff %
  partitions``), so a case's facts land in the partition faust's partitioner gives the
  ``case-facts`` table's changelog for the same key (tests/processor/test_fact_producer.py
  checks it against aiokafka's DefaultPartitioner on a real broker).
* Delivery before acknowledgement: ``delivered()`` waits (off the event loop) until Kafka has
  acknowledged everything sent so far, and reports any message Kafka refused, so the caller can
  keep the input unacknowledged and restart (replay) instead of losing it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, Producer

from services.settings import Settings


class DeliveryFailed(RuntimeError):
    """Kafka did not take every message sent since the last ``delivered()``."""


class FactProducer:
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._failed: list[str] = []
        self._lock = threading.Lock()
        self._producer = Producer(
            {
                **settings.kafka_client_config(),  # bootstrap plus SASL/SSL (issue 7)
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                # Only failures come back to Python: one callback per message cost more
                # than the produce call itself.
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                "message.timeout.ms": 60_000,
                **overrides,
            }
        )

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message (never blocks the loop for long: waits only if the queue is full)."""
        while True:
            try:
                if headers:
                    self._producer.produce(topic, value, key, headers=headers)
                else:
                    self._producer.produce(topic, value, key)
                return
            except BufferError:  # librdkafka's local queue is full: let it drain a little
                self._producer.poll(0.05)

    async def delivered(self, timeout: float) -> None:
        """Until Kafka acknowledged every queued message.

        Raises TimeoutError if some are still in flight after ``timeout`` seconds and
        DeliveryFailed if Kafka refused any (the caller must not acknowledge its input then).
        """
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._producer.flush, timeout)
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            raise DeliveryFailed(f"{len(failed)} messages not delivered: {failed[0]}")
        if left:
            raise TimeoutError(f"{left} messages not acknowledged in {timeout:.0f}s")

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed.append(f"{msg.topic()}: {err}")
