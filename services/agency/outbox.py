"""The agency's durable outbox: every accepted event stays on disk until Kafka acknowledged it.

SQLite in WAL mode, one file per agency. The event_id is unique, so accepting the same event
twice is a no-op ("exactly once per event_id from the agency's point of view"), and a crash
between accept and acknowledgement only means the event is sent again after restart (the worker
deduplicates by event_id).

What is stored is the event's Avro *body* (the Confluent wire format without its 5-byte header),
the bytes the producer sends: the body does not depend on the registry's schema id, so events
are accepted while the registry is unreachable, and a resend prepends the header instead of
encoding again. Each body names the schema it was written with (``writer_schemas``): an event
accepted before the contract schema evolved is re-encoded with the current one when it is sent.
Storing the body instead of JSON took the accept step from 11.8 us to a few us per event (the
publish benchmark, docs/benchmarks.md).

Each row has a sequence number (``seq``, given out in accept order inside the accepting
transaction, so the rows one call accepts are one contiguous range). Delivery is marked by
ranges of sequence numbers (:meth:`Outbox.mark_delivered`): one UPDATE per run of consecutive
acknowledged events instead of one per event (4.9 us per event before).

Durability, what a crash loses:

* the accept commit runs with ``synchronous=FULL``: when ``add`` returns, the events survive a
  process crash *and* a power loss (one fsync per call, i.e. per chunk of events, not per event);
* the delivered marks commit with ``synchronous=NORMAL`` (no fsync of their own; the next accept
  commit or checkpoint syncs them): a power loss may forget the last marks, never an event, and
  a forgotten mark only means the event is sent once more (deduplicated downstream by event_id).

The file holds full events (names, identifiers): it is created 0600 in a 0700 directory
whatever the caller's umask, and SQLite gives its ``-wal``/``-shm`` the same mode.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from services.agency import durable_sqlite
from services.contracts.codec import AvroCodec, parse_schema
from services.contracts.schema import schema_str
from services.private_files import private_sqlite

#: SQLite's bound-parameter limit per statement (the oldest supported builds: 999).
_PARAMS = 500


def storable_form(event: Mapping[str, Any]) -> dict[str, Any]:
    """Normalized event -> the form the outbox encodes (occurred_at as epoch milliseconds)."""
    stored = dict(event)
    occurred_at = event["occurred_at"]
    if not isinstance(occurred_at, int):
        stored["occurred_at"] = round(occurred_at.timestamp() * 1000)
    return stored


@dataclass(frozen=True, slots=True)
class Message:
    """One accepted event as the producer sends it: the wire value is header + body."""

    seq: int
    event_id: str
    agency_id: str
    key: bytes
    body: bytes


class Accepting:
    """An open accept transaction of :meth:`Outbox.accepting`."""

    def __init__(self, outbox: Outbox, held: set[str]) -> None:
        self._outbox = outbox
        #: The ids among those given that the outbox held when the transaction began.
        self.held = held
        self.done = False

    def add(self, rows: list[tuple[str, str, str, bytes]]) -> list[int | None]:
        """:meth:`Outbox.add` inside this transaction (once): inserts, then commits."""
        if self.done:
            raise RuntimeError("this accept transaction is over")
        self.done = True
        return self._outbox._insert(set(self.held), rows)


def _runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted sequence numbers -> runs of consecutive ones as (first, last)."""
    runs: list[tuple[int, int]] = []
    first = last = None
    for seq in sorted(set(seqs)):
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None:
            runs.append((first, last))  # type: ignore[arg-type]
        first = last = seq
    if first is not None:
        runs.append((first, last))  # type: ignore[arg-type]
    return runs


class Outbox:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_sqlite(self.path)
        self._lock = threading.Lock()
        self._codec = AvroCodec()
        self._db = durable_sqlite.connect(self.path)  # WAL, fsync per commit (durable_sqlite.py)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writer_schemas ("
            " ref INTEGER PRIMARY KEY, schema TEXT NOT NULL UNIQUE)"
        )
        self._db.execute(
            "INSERT OR IGNORE INTO writer_schemas (schema) VALUES (?)", (schema_str(),)
        )
        (self._schema_ref,) = self._db.execute(
            "SELECT ref FROM writer_schemas WHERE schema = ?", (schema_str(),)
        ).fetchone()
        self._writers: dict[int, dict[str, Any]] = {}
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "event_json" in columns:
            self._migrate_json_outbox()
        self._create()

    def _create(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " seq INTEGER PRIMARY KEY,"
            " event_id TEXT NOT NULL UNIQUE,"
            " agency_id TEXT NOT NULL,"
            " case_id TEXT NOT NULL,"
            " body BLOB NOT NULL,"
            " schema_ref INTEGER NOT NULL,"
            " accepted_at REAL NOT NULL,"
            " delivered_at REAL)"
        )
        # Only the undelivered rows are indexed: finding them stays cheap however long the
        # outbox (which keeps every event_id for idempotency) grows.
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_undelivered ON outbox (seq) "
            "WHERE delivered_at IS NULL"
        )

    def _migrate_json_outbox(self) -> None:
        """An outbox written by an earlier version (validated JSON per row) -> Avro bodies."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            if "event_json" not in columns:  # another process migrated it meanwhile
                self._db.execute("COMMIT")
                return
            self._db.execute("DROP INDEX IF EXISTS outbox_pending")
            self._db.execute("ALTER TABLE outbox RENAME TO outbox_json")
            self._create()
            rows = self._db.execute(
                "SELECT event_id, event_json, accepted_at, delivered_at FROM outbox_json "
                "ORDER BY accepted_at, rowid"
            )
            self._db.executemany(
                "INSERT INTO outbox (event_id, agency_id, case_id, body, schema_ref, "
                "accepted_at, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        event_id,
                        event["agency_id"],
                        event["case_id"],
                        self._codec.encode_body(event),
                        self._schema_ref,
                        accepted_at,
                        delivered_at,
                    )
                    for event_id, event, accepted_at, delivered_at in (
                        (r[0], json.loads(r[1]), r[2], r[3]) for r in rows.fetchall()
                    )
                ),
            )
            self._db.execute("DROP TABLE outbox_json")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ accept

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """The Avro body the outbox stores for a (chained) storable event."""
        return self._codec.encode_body(event)

    def add(self, rows: list[tuple[str, str, str, bytes]]) -> list[int | None]:
        """Store (event_id, agency_id, case_id, Avro body) rows in ONE transaction (one fsync).

        Returns each row's sequence number, None for an event_id the outbox already held (or
        that came earlier in the same call). The new rows get consecutive numbers.
        """
        if not rows:
            return []
        with self.accepting([row[0] for row in rows]) as accept:
            return accept.add(rows)

    @contextmanager
    def accepting(self, event_ids: list[str]) -> Iterator[Accepting]:
        """One accept transaction (``BEGIN IMMEDIATE``): which of these ids the outbox holds
        already, read once inside it, then :meth:`Accepting.add` inserts and commits.

        The publisher decides which events are new (and chains only those) from the same read
        that the insert relies on: it looked the ids up before the transaction and again
        inside it, two queries per 500 ids. Leaving the block without ``add`` rolls back.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Accepting(self, self._known(event_ids))
            finally:
                if self._db.in_transaction:  # not committed by Accepting.add
                    self._db.execute("ROLLBACK")

    def _insert(self, held: set[str], rows: list[tuple[str, str, str, bytes]]) -> list[int | None]:
        """The insert of :meth:`Accepting.add`, inside its transaction; commits it."""
        now = time.time()
        (top,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
        seqs: list[int | None] = []
        fresh = []
        ref = self._schema_ref
        for event_id, agency_id, case_id, body in rows:
            if event_id in held:
                seqs.append(None)
                continue
            held.add(event_id)
            top += 1
            seqs.append(top)
            fresh.append((top, event_id, agency_id, case_id, body, ref, now))
        self._db.executemany(
            "INSERT INTO outbox (seq, event_id, agency_id, case_id, body, schema_ref, "
            "accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            fresh,
        )
        self._db.execute("COMMIT")
        return seqs

    def add_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[bool]:
        """Store events (event_id, storable form, see :func:`storable_form`); True for each new one."""
        rows = [
            (event_id, event["agency_id"], event["case_id"], self.encode(event))
            for event_id, event in events
        ]
        return [seq is not None for seq in self.add(rows)]

    def known(self, event_ids: list[str]) -> set[str]:
        """The ids among these that the outbox already holds (delivered or not)."""
        with self._lock:
            return self._known(event_ids)

    def _known(self, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(event_ids), _PARAMS):
            chunk = event_ids[start : start + _PARAMS]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self._db.execute(
                    f"SELECT event_id FROM outbox WHERE event_id IN ({marks})", chunk
                )
            )
        return found

    # ------------------------------------------------------------------ send

    def pending_messages(self, limit: int = 10_000) -> list[Message]:
        """Undelivered events in accept order, as the producer sends them (current schema)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, agency_id, case_id, body, schema_ref FROM outbox "
                "WHERE delivered_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            Message(
                seq,
                event_id,
                agency,
                case_id.encode("utf-8"),
                body if ref == self._schema_ref else self.encode(self._read(body, ref)),
            )
            for seq, event_id, agency, case_id, body, ref in rows
        ]

    def pending(self, limit: int = 10_000) -> Iterator[tuple[str, dict[str, Any]]]:
        """Undelivered events in accept order as (event_id, storable form)."""
        for message in self.pending_messages(limit):
            yield message.event_id, self._read(message.body, self._schema_ref)

    def _read(self, body: bytes, ref: int) -> dict[str, Any]:
        """A stored body -> storable form (resolved into the current schema)."""
        writer = self._writers.get(ref)
        if writer is None:
            with self._lock:
                (text,) = self._db.execute(
                    "SELECT schema FROM writer_schemas WHERE ref = ?", (ref,)
                ).fetchone()
            writer = self._writers[ref] = parse_schema(text)
        reader = self._codec.reader_schema
        event = fastavro.schemaless_reader(
            io.BytesIO(body), writer, None if writer == reader else reader
        )
        event["event_id"] = str(event["event_id"])
        for name in ("chain_seq", "chain_prev", "chain_hash"):
            if event.get(name, 0) is None:
                del event[name]
        return storable_form(event)

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """Mark these sequence numbers delivered: one UPDATE per run of consecutive ones.

        Only numbers the caller saw acknowledged may be given: a run covers exactly the numbers
        between its ends, all of which were given, so no undelivered event is ever marked.
        """
        runs = _runs(seqs)
        if not runs:
            return
        now = time.time()
        with self._lock:
            # A lost mark only re-sends an event: no fsync of its own (see the module doc).
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(
                        "UPDATE outbox SET delivered_at = ? "
                        "WHERE seq BETWEEN ? AND ? AND delivered_at IS NULL",
                        [(now, first, last) for first, last in runs],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def counts(self) -> dict[str, int]:
        with self._lock:
            (pending,) = self._db.execute(
                "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
            ).fetchone()
            (total,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return {"pending": pending, "delivered": total - pending}

    def close(self) -> None:
        with self._lock:
            self._db.close()
