"""Which facts offsets may be committed: only those below the first one not yet written.

A worker SIGKILLed in the middle of a stream was seen, in 2 of 4 full test runs, to come back
without one fact of 1,500 (docs/guarantees.md): the facts topic's committed offset had moved
past a fact whose rows were never written. faust decides what to commit from the events its
stream acknowledged, and three paths in faust-streaming 0.15 acknowledge a fact that was never
handed to the agent: records fetched for a partition paused mid-fetch are dropped, and the
next offset of that partition is then treated as a gap, which faust marks acknowledged
(`Consumer._add_gap`); its commit rule accepts acknowledged offsets that start one past the
committed offset; and `take_events` can acknowledge an event added to its buffer while a batch
is being processed, without yielding it.

This tracker does not trust any of that. Per partition it keeps the next offset to write,
starting at the offset committed when the partition was assigned; a batch written to
ClickHouse moves it only over offsets that follow one another. A batch that skips an offset
reports the skip (the worker then restarts and replays from the committed offset, which is
below the skip), and the offset the worker commits is never past a fact it did not write.
A batch derived while the previous one's rows are still being written (the worker overlaps the
two) is `derived` first: the next batch's holes are judged past it, its commit waits for its
write. Pure: no faust, no Kafka; the worker feeds it (partition, offset) pairs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Skip:
    """Offsets [first, last] of a partition that reached no batch."""

    partition: Hashable
    first: int
    last: int

    def describe(self) -> str:
        count = self.last - self.first + 1
        return f"{self.partition}: offsets {self.first}..{self.last} ({count}) never processed"


@dataclass
class WrittenOffsets:
    """Per partition, the offset below which every fact has been written."""

    _next: dict[Hashable, int] = field(default_factory=dict)
    _derived: dict[Hashable, int] = field(default_factory=dict)  # past batches being written
    _generation: dict[Hashable, int] = field(default_factory=dict)

    def assigned(self, partition: Hashable, committed: int | None, generation: int = 0) -> None:
        """(Re)start a partition at its committed offset (None: from the first offset seen)."""
        self._derived.pop(partition, None)
        if committed is None or committed < 0:
            self._next.pop(partition, None)
        else:
            self._next[partition] = committed
        self._generation[partition] = generation

    def knows(self, partition: Hashable, generation: int = 0) -> bool:
        """Whether the partition was assigned in this consumer generation."""
        return self._generation.get(partition) == generation

    def holes(self, offsets: Iterable[tuple[Hashable, int]]) -> list[Skip]:
        """Every offset range a batch would skip, without recording anything.

        What the worker reads again directly from the topic before writing the batch, so that a
        fact faust never delivered is written with it instead of costing a restart.
        """
        by_partition: dict[Hashable, list[int]] = {}
        for partition, offset in offsets:
            by_partition.setdefault(partition, []).append(offset)
        found = []
        for partition, seen in by_partition.items():
            expected = self._derived.get(partition, self._next.get(partition, min(seen)))
            for offset in sorted(set(seen)):
                if offset > expected:
                    found.append(Skip(partition, expected, offset - 1))
                expected = max(expected, offset + 1)
        return found

    def derived(self, offsets: Iterable[tuple[Hashable, int]]) -> None:
        """Record a batch derived whose rows are still being written: the next batch follows it
        (`holes`), while the committable offset waits for `written`."""
        for partition, offset in offsets:
            self._derived[partition] = max(self._derived.get(partition, 0), offset + 1)

    def written(self, offsets: Iterable[tuple[Hashable, int]]) -> list[Skip]:
        """Record a written batch; return the skips found (the partition's offset then stops)."""
        by_partition: dict[Hashable, list[int]] = {}
        for partition, offset in offsets:
            by_partition.setdefault(partition, []).append(offset)
        skips = []
        for partition, seen in by_partition.items():
            expected = self._next.get(partition, min(seen))
            for offset in sorted(set(seen)):
                if offset < expected:
                    continue  # replayed after a restart: already counted
                if offset > expected:
                    skips.append(Skip(partition, expected, offset - 1))
                    break
                expected += 1
            self._next[partition] = expected
        return skips

    def committable(self, partition: Hashable) -> int | None:
        """The offset to commit (the next one to read), or None when nothing is known."""
        return self._next.get(partition)
