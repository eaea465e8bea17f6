"""Facts spilled to disk by case: K bucket files, so a replay derives one bucket at a time.

Why: a case's rows need every fact of the case, and a national history does not fit in memory
as Python objects (the worker-based rebuild held ~0.9 kB of RSS per event, ~9 GB at 10 M). A
case always hashes to the same bucket, so once every fact is spilled, each bucket holds whole
cases and can be derived on its own with the memory of one bucket.

A bucket is a set of files (one per writer: each reader process, each catch-up round) of
length-prefixed chunks, each chunk the live worker's envelope of its facts
(`services.processor.envelope`: MessagePack, or JSON for an integer beyond 64 bits), so the
facts derived are the ones the live worker derives from. Within one writer's file, facts keep the order they were read in; files are read in the
order they were written (`bucket_paths`), so "the first copy of an event_id" means the same as
in the live worker (a duplicate is published to the same partition, read later).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from services.processor import envelope
from services.processor.facts import Fact

#: Facts buffered per bucket before they are written as one envelope. Memory of a writer is at
#: most buckets × CHUNK facts (200 buckets at 10 M events: 51,200 facts, ~60 MB).
CHUNK = 256

_LENGTH = struct.Struct("<I")


def bucket_of(case_id: str, buckets: int) -> int:
    """The bucket of a case (CRC-32 of the UTF-8 id: stable across processes and runs, unlike
    `hash()`, and ~40× cheaper than the murmur2 in Python)."""
    return zlib.crc32(case_id.encode()) % buckets


def bucket_file(directory: Path, bucket: int, writer: str) -> Path:
    return directory / f"b{bucket:05d}.{writer}"


def bucket_paths(directory: Path, bucket: int, writers: list[str]) -> list[Path]:
    """A bucket's files in write order (the order of `writers`), those that exist."""
    return [p for w in writers if (p := bucket_file(directory, bucket, w)).exists()]


class BucketWriter:
    """Appends facts to the bucket files of one writer. Not thread-safe; one per process."""

    def __init__(self, directory: Path, buckets: int, writer: str) -> None:
        self.directory = directory
        self.buckets = buckets
        self.writer = writer
        self.facts = 0
        self.bytes = 0
        self._pending: dict[int, list[Fact]] = {}
        self._files: dict[int, object] = {}

    def add(self, fact: Fact) -> int:
        """Buffer a fact; returns its bucket."""
        bucket = bucket_of(fact.case_id, self.buckets)
        pending = self._pending.get(bucket)
        if pending is None:
            pending = self._pending[bucket] = []
        pending.append(fact)
        if len(pending) >= CHUNK:
            self._flush(bucket)
        return bucket

    def _flush(self, bucket: int) -> None:
        facts = self._pending.pop(bucket, None)
        if not facts:
            return
        handle = self._files.get(bucket)
        if handle is None:
            handle = self._files[bucket] = open(  # noqa: SIM115 - closed in close()
                bucket_file(self.directory, bucket, self.writer), "ab", buffering=1 << 16
            )
        body = envelope.encode(facts)
        handle.write(_LENGTH.pack(len(body)))  # type: ignore[attr-defined]
        handle.write(body)  # type: ignore[attr-defined]
        self.facts += len(facts)
        self.bytes += _LENGTH.size + len(body)

    def close(self) -> None:
        for bucket in list(self._pending):
            self._flush(bucket)
        for handle in self._files.values():
            handle.close()  # type: ignore[attr-defined]
        self._files.clear()

    def __enter__(self) -> BucketWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_facts(paths: list[Path]) -> Iterator[Fact]:
    """Every fact of the files, in file order and, within a file, in write order."""
    for path in paths:
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (size,) = _LENGTH.unpack_from(data, at)
            at += _LENGTH.size
            if at + size > len(data):
                raise ValueError(f"{path}: truncated chunk at byte {at - _LENGTH.size}")
            yield from envelope.decode(data[at : at + size])
            at += size
