"""Envelopes: the facts of one facts-topic partition from one intake batch, as one Kafka message.

Why: faust's per-message stream machinery cost ~120 µs per fact before any of our code ran
(py-spy, docs/benchmarks.md); carrying a partition's facts of a batch in one message pays it
once per envelope instead. The intake groups a validated batch by the partition each case
hashes to (`partition_for`, the same murmur2 as Java's and librdkafka's `murmur2_random`
partitioner) and sends one envelope per partition, to that partition; derive unpacks it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.processor.facts import Fact

#: First bytes of every envelope, so a derive that meets anything else (a probe, a message of an
#: older worker) can tell it apart.
MAGIC = b"CSE1"


def encode(facts: Sequence[Fact]) -> bytes:
    body = [
        [
            f.event_id,
            f.event_type,
            f.case_id,
            f.agency_id,
            f.occurred_ms,
            f.utc_offset_minutes,
            f.sequence,
            f.payload,
        ]
        for f in facts
    ]
    return MAGIC + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def is_envelope(raw: bytes | None) -> bool:
    return raw is not None and raw[:4] == MAGIC


def decode(raw: bytes) -> list[Fact]:
    if not is_envelope(raw):
        raise ValueError("not an envelope (it does not begin with CSE1)")
    return [Fact(*f) for f in json.loads(raw[4:])]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's `Utils.murmur2`), as a signed 32-bit int."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = (
            (data[i4 + 0] & 0xFF)
            + ((data[i4 + 1] & 0xFF) << 8)
            + ((data[i4 + 2] & 0xFF) << 16)
            + ((data[i4 + 3] & 0xFF) << 24)
        )
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    index = length & ~3
    if extra >= 3:
        h ^= (data[index + 2] & 0xFF) << 16
    if extra >= 2:
        h ^= (data[index + 1] & 0xFF) << 8
    if extra >= 1:
        h ^= data[index] & 0xFF
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(case_id: str, partitions: int) -> int:
    """The facts partition of a case: Java's default partitioner over the UTF-8 case id."""
    return (murmur2(case_id.encode()) & 0x7FFFFFFF) % partitions
