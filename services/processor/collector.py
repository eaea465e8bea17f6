"""The cyclic garbage collector on a clock, not on allocation counts, in the worker's processes.

CPython runs its cycle collector every ~700 net new container objects. The worker's two
processes allocate hundreds of thousands per batch (decoded events, facts, rows, states) and
nearly all of them die by reference counting: the pipeline builds no reference cycles (batch.py
says why the batch itself pauses the collector). Measured with ``gc.callbacks`` during the
process benchmark (200,492 events, one stack): derive spent **0.92 s** (0.27 s while starting) in
the collector (452 young, 41 middle, 4 full collections: each young one right after a batch
walks the rows still waiting for the write-behind), the intake 0.28 s of ~4.5 s. On two cores
shared with the broker and ClickHouse that CPU is the pipeline's.

So each process turns the automatic collector off and collects on a clock instead: the young
generations every ``YOUNG_EVERY_SECONDS``, everything every ``FULL_EVERY_SECONDS``. Measured the
same way with young collections every 5 s: each found **0 unreachable objects** in both
processes and still cost 180–230 ms in derive (84 and 9 ms in the intake) — they walk the
derivations batch.py keeps for 20,000 cases — so the clock is slow. Cycles that do appear
(asyncio futures, exceptions with tracebacks, the clients' internals) wait at most that long,
which bounds the memory they hold. What was allocated at start-up (modules, the clients) is
frozen out of the full collections (``gc.freeze``), so a full one walks only what the process
built since.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

#: Young collections (generations 0 and 1) this often: up to ~0.25 s each in derive under load.
YOUNG_EVERY_SECONDS = 30.0
#: A full collection this often.
FULL_EVERY_SECONDS = 300.0


class ClockedCollector:
    """Collects when due by the clock; ``tick`` is called by a thread (``run_on_a_clock``)."""

    def __init__(
        self,
        young_every: float = YOUNG_EVERY_SECONDS,
        full_every: float = FULL_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.young_every, self.full_every, self._clock = young_every, full_every, clock
        self._next_young = self._next_full = 0.0
        self.collections = {"young": 0, "full": 0}

    def start(self) -> None:
        """Freeze what exists now, turn the automatic collector off, start the clock."""
        gc.collect()
        gc.freeze()
        gc.disable()
        now = self._clock()
        self._next_young, self._next_full = now + self.young_every, now + self.full_every

    def tick(self) -> str | None:
        """Collect what is due now; returns which collection ran (None: none was due)."""
        now = self._clock()
        if now >= self._next_full:
            gc.collect()
            self._next_full = now + self.full_every
            self._next_young = now + self.young_every
            kind = "full"
        elif now >= self._next_young:
            gc.collect(1)
            self._next_young = now + self.young_every
            kind = "young"
        else:
            return None
        self.collections[kind] += 1
        return kind


def run_on_a_clock(collector: ClockedCollector | None = None) -> ClockedCollector:
    """Start ``collector`` (a default one when None) and a daemon thread ticking it."""
    collector = collector or ClockedCollector()
    collector.start()
    pause = min(collector.young_every, collector.full_every) / 5

    def loop() -> None:
        while True:
            time.sleep(pause)
            collector.tick()

    threading.Thread(target=loop, name="casestream-collector", daemon=True).start()
    return collector
