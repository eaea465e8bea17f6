"""Read given offsets of the facts topic again, straight from Kafka (librdkafka).

When a batch would skip facts that faust fetched but never delivered (written_offsets.py), the
worker reads exactly those offsets here and writes them with the batch, instead of restarting
to replay from the committed offset: a restart costs the ~10–20 s of a group join and table
recovery, this costs one assign and one fetch. The reader joins no group and commits nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple


class Partition(NamedTuple):
    """Equal to (and hashing like) faust's TP, so the offset tracker sees one partition."""

    topic: str
    partition: int


@dataclass(frozen=True)
class RawMessage:
    """The parts of a faust message the derive batch reads."""

    tp: Partition
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Refetched:
    """Stands for a faust event in a batch: ``event.message``."""

    message: RawMessage


def read_offsets(
    config: dict[str, Any],
    ranges: list[tuple[str, int, int, int]],
    timeout: float = 30.0,
) -> list[Refetched]:
    """The messages at offsets [first, last] of each (topic, partition, first, last); several
    ranges of one partition are read in one pass.

    Raises TimeoutError naming what was not read within `timeout` (the caller then falls back
    to a restart, which replays them).
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **config,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "log_level": 0,
        }
    )
    wanted: dict[tuple[str, int], set[int]] = {}
    for topic, partition, first, last in ranges:
        wanted.setdefault((topic, partition), set()).update(range(first, last + 1))
    found: list[Refetched] = []
    try:
        consumer.assign([TopicPartition(t, p, min(offsets)) for (t, p), offsets in wanted.items()])
        remaining = {key: set(offsets) for key, offsets in wanted.items()}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    continue
                key = (msg.topic(), msg.partition())
                left = remaining.get(key)
                if left is None or msg.offset() not in left:
                    continue
                found.append(
                    Refetched(RawMessage(Partition(*key), msg.offset(), msg.key(), msg.value()))
                )
                left.discard(msg.offset())
                if not left:
                    remaining.pop(key)
        if remaining:
            missing = ", ".join(
                f"{t}[{p}] {min(left)}..{max(left)}" for (t, p), left in remaining.items()
            )
            raise TimeoutError(f"facts not read again within {timeout:.0f}s: {missing}")
    finally:
        consumer.close()
    return found


def start_offsets(
    config: dict[str, Any], group: str, partitions: list[tuple[str, int]], timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """Where a member of `group` starts reading each partition: the group's committed offset,
    else the partition's first offset (the worker reads from the earliest).

    faust 0.15 records no committed offset for a partition committed at 0 or never committed
    (``offset if offset else None``), and a partition without a known start could not show
    facts skipped at its very beginning: seen with three workers, a new owner's first
    envelopes went undelivered, the next was taken as the start, and the commit passed them.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient(config)
    wanted = [TopicPartition(t, p) for t, p in partitions]
    future = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, wanted)], request_timeout=timeout
    )[group]
    starts = {
        (tp.topic, tp.partition): tp.offset
        for tp in future.result(timeout).topic_partitions
        if tp.offset >= 0
    }
    missing = [tp for tp in wanted if (tp.topic, tp.partition) not in starts]
    if missing:
        earliest = admin.list_offsets(
            {tp: OffsetSpec.earliest() for tp in missing}, request_timeout=timeout
        )
        for tp, result in earliest.items():
            starts[(tp.topic, tp.partition)] = result.result(timeout).offset
    return starts
