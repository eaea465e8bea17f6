"""The agency's durable outbox: every accepted event stays on disk until Kafka acknowledged it.

SQLite in WAL mode, one file per agency. The event_id is the primary key, so accepting the same
event twice is a no-op ("exactly once per event_id from the agency's point of view"), and a
crash between accept and acknowledgement only means the event is sent again after restart (the
worker deduplicates by event_id). The stored form is the validated JSON, not Avro bytes, so
events can be accepted while the schema registry is unreachable too.

The file holds full events (names, identifiers): it is created 0600 in a 0700 directory
whatever the caller's umask, and SQLite gives its ``-wal``/``-shm`` the same mode.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.private_files import private_sqlite


class Outbox:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_sqlite(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # accepted = survives a power loss too
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " event_id TEXT PRIMARY KEY,"
            " event_json TEXT NOT NULL,"
            " accepted_at REAL NOT NULL,"
            " delivered_at REAL,"
            " attempts INTEGER NOT NULL DEFAULT 0)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_at, accepted_at)"
        )

    def add_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[bool]:
        """Store events (event_id, JSON form); True for each one that was new."""
        now = time.time()
        added = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for event_id, event in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (event_id, event_json, accepted_at) "
                        "VALUES (?, ?, ?)",
                        (event_id, json.dumps(event, separators=(",", ":")), now),
                    )
                    added.append(cur.rowcount == 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def known(self, event_ids: list[str]) -> set[str]:
        """The ids among these that the outbox already holds (delivered or not)."""
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(event_ids), 500):  # SQLite's bound-parameter limit
                chunk = event_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in self._db.execute(
                        f"SELECT event_id FROM outbox WHERE event_id IN ({marks})", chunk
                    )
                )
        return found

    def pending(self, limit: int = 10_000) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, event_json FROM outbox WHERE delivered_at IS NULL "
                "ORDER BY accepted_at, rowid LIMIT ?",
                (limit,),
            ).fetchall()
        for event_id, text in rows:
            yield event_id, json.loads(text)

    def mark_delivered(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        now = time.time()
        self._in_transaction(
            "UPDATE outbox SET delivered_at = ? WHERE event_id = ?", [(now, e) for e in event_ids]
        )

    def mark_attempt(self, event_ids: list[str]) -> None:
        self._in_transaction(
            "UPDATE outbox SET attempts = attempts + 1 WHERE event_id = ?",
            [(e,) for e in event_ids],
        )

    def _in_transaction(self, sql: str, rows: list[tuple]) -> None:
        """executemany in ONE transaction: the connection autocommits, so a bare executemany
        would commit (and fsync) once per row."""
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def counts(self) -> dict[str, int]:
        with self._lock:
            pending, delivered = self._db.execute(
                "SELECT count(*) FILTER (WHERE delivered_at IS NULL),"
                " count(*) FILTER (WHERE delivered_at IS NOT NULL) FROM outbox"
            ).fetchone()
        return {"pending": pending, "delivered": delivered}

    def close(self) -> None:
        with self._lock:
            self._db.close()
