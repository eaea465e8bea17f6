"""FactProducer (librdkafka) must partition exactly like faust's producer (aiokafka).

The derive agent's ``case-facts`` table sends its changelog through faust's partitioner; if the
facts of a case landed in another partition than its table entry, a restarted or rebalanced
worker would restore the case's state on the wrong partition and derive from half its facts.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.ops.topics import ensure_topics
from services.processor.fact_producer import DeliveryFailed, FactProducer

pytestmark = pytest.mark.integration


def _consume_all(settings, topic: str, expected: int) -> dict[bytes, int]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        settings.kafka_client_config(
            **{"group.id": f"t-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(5)])
    seen: dict[bytes, int] = {}
    try:
        for _ in range(60):
            for msg in consumer.consume(1000, timeout=1.0):
                if not msg.error():
                    seen[msg.key()] = msg.partition()
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def test_facts_land_in_the_partition_faust_would_choose(stack):
    topic = f"test.fact-producer.{uuid.uuid4().hex[:8]}"
    ensure_topics(stack, {topic: 5})
    keys = [f"20-INSP:case/{i}".encode() for i in range(300)] + ["Hà Nội/ü".encode()]
    producer = FactProducer(stack)
    for key in keys:
        producer.send(topic, key, b"{}", headers=[("reason", b"x")] if key.endswith(b"7") else None)
    asyncio.run(producer.delivered(timeout=60))

    seen = _consume_all(stack, topic, len(keys))
    assert len(seen) == len(keys)
    faust_choice = DefaultPartitioner()
    partitions = list(range(5))
    mismatched = [k for k in keys if seen[k] != faust_choice(k, partitions, partitions)]
    assert mismatched == []
    assert len(set(seen.values())) == 5  # the keys really spread (the check is not vacuous)


def test_a_message_kafka_refuses_is_reported(stack):
    """The broker refuses a too-large message: delivered() must raise, not return quietly."""
    import os

    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"test.fact-producer.small-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(stack.kafka_client_config())
    new = NewTopic(
        topic, num_partitions=1, replication_factor=1, config={"max.message.bytes": "2000"}
    )
    admin.create_topics([new])[topic].result(30)
    producer = FactProducer(stack)
    producer.send(topic, b"ok", b"small")
    producer.send(topic, b"big", os.urandom(20_000))  # incompressible, over the topic's limit
    with pytest.raises(DeliveryFailed, match=topic):
        asyncio.run(producer.delivered(timeout=60))
    # The failure is reported once; what follows is judged on its own.
    producer.send(topic, b"ok2", b"small")
    asyncio.run(producer.delivered(timeout=60))
