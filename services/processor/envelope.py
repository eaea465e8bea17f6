"""Envelopes: the facts of one facts-topic partition from one intake batch, as one Kafka message.

Why: faust's per-message stream machinery cost ~120 µs per fact before any of our code ran
(py-spy, docs/benchmarks.md); carrying a partition's facts of a batch in one message pays it
once per envelope instead. The intake groups a validated batch by the partition each case
hashes to (`partition_for`, the same murmur2 as Java's and librdkafka's `murmur2_random`
partitioner) and sends one envelope per partition, to that partition; derive unpacks it.

The body after `MAGIC` is msgpack of the facts as arrays (`Fact` is an array-like Struct), decoded
straight into `Fact`s. Measured on 100,000 generated facts in envelopes of 5,000 (CPU time, best
of 3, `python -m benchmarks.derive_micro --events 100000 --batch 5000`): decode 5.2 → 2.2
µs/fact and encode 3.1 → 0.3 µs/fact against the JSON lists of before. A body that msgpack cannot hold (an
integer beyond 64 bits) is written as those JSON lists, which `decode` still reads: the body's
first byte tells them apart (`[` never begins a msgpack array).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import msgspec

from services.processor.facts import Fact

#: First bytes of every envelope, so a derive that meets anything else (a probe, a message of an
#: older worker) can tell it apart.
MAGIC = b"CSE1"


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[Fact]).decode
_unpack_json = msgspec.json.Decoder(list[Fact]).decode


def encode(facts: Sequence[Fact]) -> bytes:
    try:
        return MAGIC + _pack(facts)
    except OverflowError:  # an integer msgpack cannot carry: JSON lists, as before
        return MAGIC + json_body(facts)


def json_body(facts: Sequence[Fact]) -> bytes:
    """The facts as JSON lists `[[event_id, event_type, ...], ...]` (the first envelope body)."""
    body = [msgspec.structs.astuple(f) for f in facts]  # a Fact's fields in their order
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def is_envelope(raw: bytes | None) -> bool:
    return raw is not None and raw[:4] == MAGIC


def decode(raw: bytes) -> list[Fact]:
    if not is_envelope(raw):
        raise ValueError("not an envelope (it does not begin with CSE1)")
    body = memoryview(raw)[4:]
    if body[:1] == b"[":
        return _unpack_json(body)
    return _unpack(body)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's `Utils.murmur2`), as a signed 32-bit int.

    The 4-byte words are read with `struct.iter_unpack` rather than byte by byte: the hash was
    4.3 % of the worker's samples in the 2 M-event process benchmark (2026-12-04).
    """
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:end]):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


_WORDS = struct.Struct("<I")
#: Recently seen cases' partitions: a case's events come again and again (6 per case in the
#: generated national history). Cleared when full, so it stays under ~30 MB.
_PARTITIONS: dict[tuple[str, int], int] = {}
_PARTITIONS_MAX = 200_000


def partition_for(case_id: str, partitions: int) -> int:
    """The facts partition of a case: Java's default partitioner over the UTF-8 case id."""
    key = (case_id, partitions)
    partition = _PARTITIONS.get(key)
    if partition is None:
        if len(_PARTITIONS) >= _PARTITIONS_MAX:
            _PARTITIONS.clear()
        partition = _PARTITIONS[key] = (murmur2(case_id.encode()) & 0x7FFFFFFF) % partitions
    return partition
