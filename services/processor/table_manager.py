"""faust's table manager without the one-second wait at start.

faust's ``TableManager.on_start`` sleeps 1 s before it subscribes the tables' changelogs, to let
tables declared late (inside agents, at start-up) register first. The worker declares its one
table (the case state) when the app is created, long before the worker starts, so the second
only delays every start: a fresh or restarted worker derived nothing for it while its intake
process — started first — was already re-keying (the machine ran ~1.2 of its 2 cores for the
first ~1.8 s of a process benchmark; docs/benchmarks.md). The manager is chosen through faust's
``TableManager`` setting; ``tests/processor/test_table_manager.py`` fails when faust's own
``on_start`` changes, so this copy never drifts from it unnoticed.
"""

from __future__ import annotations

from faust.tables import TableManager


class PromptTableManager(TableManager):
    """``TableManager`` whose start does what faust's does, without ``sleep(1.0)`` first."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
