"""The worker's derivation run in the test process, into a database of the test's own.

Tests of what is built *on* the fact tables (rollups, reports) assert national figures, and a
national stock (pending cases, backlog by age) counts every case of every test that shares the
database: a module's figures then depended on which modules ran before it (the rebuild test's
pending 2017 cases moved the report test's 2018 backlog). These tests now derive their events
into a private database with exactly the code the worker runs between Kafka and ClickHouse
(validation → ``Fact`` → ``apply_batch`` → ``ClickHouseSink``), as bytewax's ``testing.py`` runs a
dataflow in memory; the flows then read that database through the real ClickHouse endpoint and
Prefect. The Kafka path itself is tested end to end in tests/integration/test_worker.py and
test_generated_history.py.

    with OwnDatabase(stack, "reports") as own:
        own.derive(events)
        with own.selected():          # CASESTREAM_CLICKHOUSE_DATABASE for the flows
            build_report(...)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from services.contracts.events import parse_event
from services.processor.batch import StoredState, apply_batch
from services.processor.facts import Fact
from services.serving.migrations import migrate
from services.serving.sink import ClickHouseSink
from services.settings import Settings


class OwnDatabase:
    """A migrated database no other test writes, fed by the worker's derivation in process."""

    def __init__(self, stack: Settings, purpose: str, tag: str = "") -> None:
        self.name = f"t_{purpose}_{uuid.uuid4().hex[:8]}"
        self.tag = tag
        self.settings = replace(stack, clickhouse_database=self.name)
        self.state: dict[str, StoredState] = {}  # the worker's case-state table
        self._sink = ClickHouseSink(lambda: self.settings.clickhouse_client())

    def __enter__(self) -> OwnDatabase:
        migrate(self.settings, log=lambda m: None)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.drop()

    def drop(self) -> None:
        self.settings.clickhouse_client(database="default").command(
            f"DROP DATABASE IF EXISTS {self.name}"
        )

    def client(self) -> Any:
        return self.settings.clickhouse_client()

    def derive(self, events: list[dict], batch_size: int = 500) -> None:
        """Validate the events as the intake does and derive them in batches as derive does."""
        facts = [Fact.from_event(parse_event(event)) for event in events]
        for start in range(0, len(facts), batch_size):
            result = apply_batch(facts[start : start + batch_size], self.state.get)
            self.state.update(result.changed)
            self._sink.write(result.rows)

    @contextmanager
    def selected(self) -> Iterator[Settings]:
        """Point the flows (which read ``Settings.from_env()``) at this database meanwhile."""
        key = "CASESTREAM_CLICKHOUSE_DATABASE"
        saved = os.environ.get(key)
        os.environ[key] = self.name
        try:
            yield self.settings
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved
