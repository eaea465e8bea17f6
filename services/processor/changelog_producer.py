"""The ``case-facts`` table's changelog, written through librdkafka instead of faust's producer.

Why: in full test-suite runs the derive agent was seen blocked for minutes inside faust's
producer (aiokafka's accumulator waits for a partition's batch to drain, up to faust's 20-minute
producer request timeout) with facts waiting and nothing logged; with ``send_soon`` the same
wait sat behind faust's producer buffer. librdkafka batches and retries in its own threads and
``delivered()`` is bounded, so a stuck write becomes a restart (replay), never a silent stall.
It is also faster: a changelog entry costs a ``produce()`` call instead of a coroutine, a future
and a trip through aiokafka's Python accumulator (docs/benchmarks.md).

What stays faust's: the bytes (the caller serializes with the changelog topic's own codecs) and
the partition (``murmur2_random`` is the Java/aiokafka key hash), so faust's recovery reads these
records exactly as if it had written them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from services.settings import Settings


class DeliveryFailed(RuntimeError):
    """Kafka did not take every message sent since the last ``delivered()``."""


class ChangelogProducer:
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        from confluent_kafka import Producer

        self._failed: list[str] = []
        self._lock = threading.Lock()  # delivery reports arrive on the flushing thread
        self._producer = Producer(
            settings.kafka_client_config(
                **{
                    "enable.idempotence": True,  # acks=all; retries never duplicate or reorder
                    "linger.ms": 5,
                    "partitioner": "murmur2_random",
                    # Only failures come back to Python: a callback per message cost more than the
                    # produce call itself.
                    "delivery.report.only.error": True,
                    "on_delivery": self._on_delivery,
                    "message.timeout.ms": 60_000,
                    **overrides,
                }
            )
        )

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue one record; waits only while librdkafka's local queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)

    async def delivered(self, timeout: float) -> None:
        """Until Kafka acknowledged every queued record (flushed off the event loop).

        Raises TimeoutError if some are still in flight after ``timeout`` seconds and
        DeliveryFailed if Kafka refused any: the caller must not acknowledge its input then.
        """
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._producer.flush, timeout)
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            raise DeliveryFailed(f"{len(failed)} records not delivered: {failed[0]}")
        if left:
            raise TimeoutError(f"{left} records not acknowledged in {timeout:.0f}s")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed.append(f"{msg.topic()}: {err}")
