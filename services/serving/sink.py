"""Batched, retrying writes of derived rows into ClickHouse.

The worker hands one `RowBatch` per consumed batch of messages and does not acknowledge those
messages until `ClickHouseSink.write` returns. So when ClickHouse is unreachable the worker keeps
its offsets and retries with backoff; nothing is lost, and because every target table is a
Replacing engine keyed by its natural id, writing the same batch twice is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.processor.case_state import CASE_COLUMNS, VIOLATION_COLUMNS
from services.processor.facts import EVENT_COLUMNS
from services.processor.transfer_lag import APPRAISAL_COLUMNS, TRANSFER_COLUMNS

log = logging.getLogger(__name__)

TABLES: dict[str, list[str]] = {
    "events": EVENT_COLUMNS,
    "cases_state": CASE_COLUMNS,
    "transfers_state": TRANSFER_COLUMNS,
    "appraisals_state": APPRAISAL_COLUMNS,
    "integrity_violations_state": VIOLATION_COLUMNS,
    "agency_activity": ["agency_id", "events", "last_occurred_at", "max_sequence", "ingested_at"],
}


@dataclass
class RowBatch:
    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: {t: [] for t in TABLES})

    def add(self, table: str, row: list[Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def extend(self, table: str, rows: list[list[Any]]) -> None:
        self.rows.setdefault(table, []).extend(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


class ClickHouseSink:
    """Writes batches through clickhouse-connect; `write` blocks until ClickHouse took them."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        columns: dict[str, list[str]] | None = None,
        max_backoff: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self._columns = columns or TABLES
        self._max_backoff = max_backoff
        self._stop = stop or threading.Event()
        self.rows_written = 0
        self.failures = 0

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def write(self, batch: RowBatch) -> None:
        delay = 0.5
        while True:
            try:
                client = self._get_client()
                for table, rows in batch.rows.items():
                    if rows:
                        client.insert(table, rows, column_names=self._columns[table])
                self.rows_written += len(batch)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: keep offsets, retry
                self.failures += 1
                self._client = None
                if self._stop.is_set():
                    raise
                log.warning("ClickHouse write failed (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
