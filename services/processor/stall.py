"""Is a partition stuck? The worker's watchdogs decide per partition, never on a sum.

Seen in full test-suite runs: a worker restarted after a SIGKILL kept consuming one partition of
the facts topic (the one the latency probes hash to) and never fetched the three with a backlog.
A watchdog that looked at the *sum* of committed offsets saw the probes' partition move and
called that progress. Per partition, the rule is: messages waiting and the committed offset not
moved for longer than the window means stuck (a restart replays from the committed offsets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class Lag(Protocol):
    topic: str
    partition: int
    committed: int
    high_watermark: int

    @property
    def lag(self) -> int: ...


@dataclass
class StallTracker:
    """Remembers, per partition, its committed offset and since when it has not moved."""

    window: float
    _seen: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def stuck(
        self, lags: Iterable[Lag], now: float, window: float | None = None
    ) -> list[tuple[str, int, int, float]]:
        """(topic, partition, lag, seconds stuck) of every partition stuck beyond the window
        (a shorter `window` asks which partitions look suspect, for the log)."""
        window = self.window if window is None else window
        stuck = []
        for p in lags:
            where = (p.topic, p.partition)
            committed, since = self._seen.get(where, (None, now))
            if p.lag <= 0 or p.committed != committed:
                self._seen[where] = (p.committed, now)  # caught up or moving: progress
                continue
            self._seen[where] = (committed, since)
            if now - since > window:
                stuck.append((p.topic, p.partition, p.lag, now - since))
        return stuck

    def only(self, lags: Iterable[Lag], owned: set[tuple[str, int]]) -> list[Lag]:
        """The lags of the partitions this process owns; the clocks of the others are dropped.

        With several workers on one app id each judges its own partitions: a member that
        restarted itself over another member's partition (seen with three workers) only set off
        one more rebalance. A partition that comes back later starts a fresh clock.
        """
        for where in [w for w in self._seen if w not in owned]:
            del self._seen[where]
        return [p for p in lags if (p.topic, p.partition) in owned]

    def excuse(self, now: float, topics: Iterable[str] | None = None) -> None:
        """A legitimate pause (recovery, a batch waiting for ClickHouse): restart the clocks."""
        wanted = None if topics is None else set(topics)
        for where, (committed, _since) in self._seen.items():
            if wanted is None or where[0] in wanted:
                self._seen[where] = (committed, now)
