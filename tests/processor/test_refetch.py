"""Facts faust never delivered are read again from the real broker and written with the batch."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Counter

from services.ops.topics import ensure_topics
from services.processor import worker
from services.processor.refetch import Partition, RawMessage, Refetched, read_offsets
from services.processor.written_offsets import WrittenOffsets
from tests.helpers import new_tag

pytestmark = pytest.mark.integration


def _topic_with(stack, values: list[bytes]) -> str:
    topic = f"refetch-{new_tag()}"
    ensure_topics(stack, {topic: 1})
    producer = Producer(stack.kafka_client_config())
    for i, value in enumerate(values):
        producer.produce(topic, key=f"k{i}".encode(), value=value, partition=0)
    assert producer.flush(30) == 0
    return topic


def test_read_offsets_returns_exactly_the_asked_offsets(stack):
    topic = _topic_with(stack, [f"v{i}".encode() for i in range(10)])
    config = stack.kafka_client_config(**{"group.id": "refetch-test"})
    got = read_offsets(config, [(topic, 0, 3, 5)], timeout=30)
    assert [(m.message.offset, m.message.key, m.message.value) for m in got] == [
        (3, b"k3", b"v3"),
        (4, b"k4", b"v4"),
        (5, b"k5", b"v5"),
    ]
    assert got[0].message.tp == (topic, 0)


def test_offsets_past_the_end_are_a_timeout_naming_them(stack):
    topic = _topic_with(stack, [b"only"])
    config = stack.kafka_client_config(**{"group.id": "refetch-test"})
    with pytest.raises(TimeoutError, match=rf"{topic}\[0\] 1\.\.4"):
        read_offsets(config, [(topic, 0, 0, 4)], timeout=3)


def test_a_batch_with_a_hole_gets_the_missing_facts_before_it_is_written(stack):
    values = [f"fact-{i}".encode() for i in range(8)]
    topic = _topic_with(stack, values)
    tp = Partition(topic, 0)
    delivered = [Refetched(RawMessage(tp, o, None, values[o])) for o in (0, 1, 4, 5, 7)]
    app = SimpleNamespace(
        consumer=SimpleNamespace(_committed_offset={tp: 0}, _acked_index=defaultdict(set)),
        consumer_generation_id=3,
        casestream_metrics=SimpleNamespace(
            facts_refetched=Counter("refetched", "test", registry=CollectorRegistry())
        ),
    )
    written = WrittenOffsets()

    batch = asyncio.run(worker._fill_holes(app, written, delivered, stack, "refetch-test"))

    assert sorted(e.message.offset for e in batch) == list(range(8))
    assert {e.message.offset: e.message.value for e in batch} == dict(enumerate(values))
    assert app.casestream_metrics.facts_refetched._value.get() == 3
    worker._note_written(written, batch)
    assert written.committable(tp) == 8


def test_facts_skipped_at_the_very_start_of_a_partition_are_read_again(stack):
    """faust keeps no committed offset for a partition committed at 0 or never: the start is
    then asked of the broker, so envelopes faust never delivered *before* the first one it did
    are found too (seen with three workers: a new owner's first envelopes were lost)."""
    values = [f"fact-{i}".encode() for i in range(6)]
    topic = _topic_with(stack, values)
    tp = Partition(topic, 0)
    delivered = [Refetched(RawMessage(tp, o, None, values[o])) for o in (3, 4, 5)]
    app = SimpleNamespace(
        consumer=SimpleNamespace(
            _committed_offset=defaultdict(lambda: None), _acked_index=defaultdict(set)
        ),
        consumer_generation_id=1,
        casestream_metrics=SimpleNamespace(
            facts_refetched=Counter("refetched", "test", registry=CollectorRegistry())
        ),
    )
    written = WrittenOffsets()

    batch = asyncio.run(worker._fill_holes(app, written, delivered, stack, f"never-{new_tag()}"))

    assert sorted(e.message.offset for e in batch) == list(range(6))
    worker._note_written(written, batch)
    assert written.committable(tp) == 6
