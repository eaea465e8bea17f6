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
