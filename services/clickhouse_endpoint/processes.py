"""Per-user views of running queries and errors, kept by the endpoint itself.

chDB runs every query as ``default``, so its ``system.processes`` and ``system.errors`` show
every user's query texts (suspects' names in literals) to everyone. The endpoint knows who
sent what: it keeps its own registry and substitutes ``system.processes``/``system.errors``
in a user's query with a ``values()`` table of that user's own entries. The registry is also
what ``KILL QUERY`` acts on.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .sql import quote_string

PROCESS_COLUMNS = (
    "is_initial_query UInt8, user String, query_id String, elapsed Float64, "
    "current_database String, query String, is_cancelled UInt8"
)
ERROR_COLUMNS = (
    "name String, code Int32, value UInt64, last_error_time DateTime, "
    "last_error_message String, remote UInt8"
)


@dataclass
class RunningQuery:
    user: str
    query_id: str
    query: str
    database: str
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Ends the text chDB runs, so an internal chDB KILL can find exactly this query (at the
    # end, on its own line, so syntax error positions still match the user's text).
    marker: str = field(default_factory=lambda: f"\n/* cs-run {secrets.token_hex(16)} */")


@dataclass
class _ErrorCount:
    code: int
    count: int
    last_time: int
    last_message: str


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, RunningQuery] = {}
        self._ids = itertools.count()
        self._errors: dict[str, dict[str, _ErrorCount]] = {}

    @contextmanager
    def running(self, entry: RunningQuery) -> Iterator[RunningQuery]:
        key = next(self._ids)
        with self._lock:
            self._running[key] = entry
        try:
            yield entry
        finally:
            with self._lock:
                self._running.pop(key, None)

    def own(self, user: str) -> list[RunningQuery]:
        with self._lock:
            return [q for q in self._running.values() if q.user == user]

    def kill(self, user: str, query_ids: set[str]) -> list[RunningQuery]:
        """Mark the user's queries with these ids cancelled; other users' are never touched."""
        killed = [q for q in self.own(user) if q.query_id in query_ids]
        for query in killed:
            query.cancelled.set()
        return killed

    def record_error(self, user: str, name: str, code: int, message: str) -> None:
        with self._lock:
            errors = self._errors.setdefault(user, {})
            entry = errors.get(name)
            if entry is None:
                errors[name] = _ErrorCount(code, 1, int(time.time()), message)
            else:
                entry.count += 1
                entry.last_time = int(time.time())
                entry.last_message = message

    def processes_view(self, user: str) -> str:
        now = time.monotonic()
        rows = [
            f"(1, {quote_string(q.user)}, {quote_string(q.query_id)}, {now - q.started:.6f}, "
            f"{quote_string(q.database)}, {quote_string(q.query)}, {int(q.cancelled.is_set())})"
            for q in self.own(user)
        ]
        return _values_view(PROCESS_COLUMNS, rows, "(0, '', '', 0, '', '', 0)")

    def errors_view(self, user: str) -> str:
        with self._lock:
            errors = dict(self._errors.get(user, {}))
        rows = [
            f"({quote_string(name)}, {e.code}, {e.count}, {e.last_time}, "
            f"{quote_string(e.last_message)}, 0)"
            for name, e in sorted(errors.items())
        ]
        return _values_view(ERROR_COLUMNS, rows, "('', 0, 0, 0, '', 0)")


def _values_view(columns: str, rows: list[str], empty_row: str) -> str:
    if not rows:
        return f"(SELECT * FROM values({quote_string(columns)}, {empty_row}) WHERE 0)"
    return f"(SELECT * FROM values({quote_string(columns)}, {', '.join(rows)}))"
