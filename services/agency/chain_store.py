"""The publishing side's chain heads: which position and hash each agency's next event links to.

The hash itself is pure (``services/contracts/chain.py``); this is where it is kept. One SQLite
file per host (``<CASESTREAM_HOME>/chain/chain.sqlite``) is shared by every publisher there: the
SDK's outboxes, the operator's bulk import and the gateway each have their own outbox, and an
agency published through two of them must still have one chain, not two forks.

* ``heads``: agency -> last position given out and its hash.
* ``links``: event_id -> its position and hashes. A retry of an event_id gets its first link
  back, whichever outbox it comes through, so a retry never forks the chain.

A link is given out in a transaction (``BEGIN IMMEDIATE``: one writer per host at a time) that
commits only after the caller stored the events in its outbox (:meth:`ChainStore.assigning`):
the head advances only for events actually accepted. A crash between the outbox's commit and
this one leaves events in the outbox whose links this file does not know; the publisher hands
its pending events to :meth:`ChainStore.adopt` when it starts, which records them.

The file is created 0600 in a 0700 directory (its ``-wal``/``-shm`` follow the file's mode).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.agency import durable_sqlite
from services.contracts.chain import ChainHead, chain_links
from services.private_files import private_sqlite

log = logging.getLogger(__name__)


class ChainStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_sqlite(self.path)
        self._lock = threading.RLock()
        self._db = durable_sqlite.connect(self.path, timeout=60)  # see durable_sqlite.py
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS heads ("
            " agency_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS links ("
            " event_id TEXT PRIMARY KEY, agency_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " prev TEXT NOT NULL, hash TEXT NOT NULL)"
        )

    @contextmanager
    def assigning(
        self,
        events: list[Mapping[str, Any]],
        occurred_at_texts: list[str | None] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """The chain fields of each event (normalized or outbox form), committed on success.

        Store the events inside the ``with`` block; an exception rolls the heads back, so an
        event the outbox did not take was never given a position. ``occurred_at_texts``: see
        ``chain.chain_links``.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                links = self._links(events, occurred_at_texts)
                yield links
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _links(
        self,
        events: list[Mapping[str, Any]],
        occurred_at_texts: list[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """The links of a batch with a few statements, not four per event: the known links in
        one query per 500 ids, each agency's head read once, the new links hashed in one loop
        (``chain.chain_links``) and inserted with one executemany, each touched head written
        once (4 statements per event cost ~5 us of the SDK's per-event budget in the publish
        benchmark)."""
        ids = [str(event["event_id"]) for event in events]
        given: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for event_id, seq, prev, digest in self._db.execute(
                f"SELECT event_id, seq, prev, hash FROM links WHERE event_id IN ({marks})", chunk
            ):
                given[event_id] = {"chain_seq": seq, "chain_prev": prev, "chain_hash": digest}
        # Not a retry: the next position of its agency (an id given twice in the batch gets
        # the link of its first occurrence).
        first: dict[str, int] = {}
        new: list[Mapping[str, Any]] = []
        texts: list[str | None] = []
        for i, (event_id, event) in enumerate(zip(ids, events, strict=True)):
            if event_id not in given and event_id not in first:
                first[event_id] = len(new)
                new.append(event)
                texts.append(occurred_at_texts[i] if occurred_at_texts is not None else None)
        heads = self._heads_of({str(event["agency_id"]) for event in new})
        computed = chain_links(new, heads, texts)
        links = []
        for event_id in ids:
            known = given.get(event_id)
            if known is not None:
                links.append(dict(known))
            else:
                seq, prev, digest = computed[first[event_id]]
                links.append({"chain_seq": seq, "chain_prev": prev, "chain_hash": digest})
        self._db.executemany(
            "INSERT INTO links (event_id, agency_id, seq, prev, hash) VALUES (?, ?, ?, ?, ?)",
            [
                (event_id, event["agency_id"], *link)
                for event_id, event, link in zip(first, new, computed, strict=True)
            ],
        )
        touched = dict.fromkeys(event["agency_id"] for event in new)
        self._db.executemany(
            "INSERT INTO heads (agency_id, seq, hash) VALUES (?, ?, ?) ON CONFLICT (agency_id) "
            "DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            [(agency, heads[agency].seq, heads[agency].hash) for agency in touched],
        )
        return links

    def _heads_of(self, agencies: set[str]) -> dict[str, ChainHead]:
        """The heads of these agencies in one query per 500 (one query per agency was ~4,000
        statements per 2,000-event batch of a national history: ~390 agencies each)."""
        names = sorted(agencies)
        heads: dict[str, ChainHead] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for agency, seq, digest in self._db.execute(
                f"SELECT agency_id, seq, hash FROM heads WHERE agency_id IN ({marks})", chunk
            ):
                heads[agency] = ChainHead(seq, digest)
        return heads

    def _record(self, event_id: str, agency: str, fields: Mapping[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO links (event_id, agency_id, seq, prev, hash) VALUES (?, ?, ?, ?, ?)",
            (event_id, agency, fields["chain_seq"], fields["chain_prev"], fields["chain_hash"]),
        )

    def _head(self, agency: str) -> ChainHead:
        row = self._db.execute(
            "SELECT seq, hash FROM heads WHERE agency_id = ?", (agency,)
        ).fetchone()
        return ChainHead(row[0], row[1]) if row else ChainHead()

    def head(self, agency: str) -> ChainHead | None:
        """The agency's head, None when no event of it was ever chained here."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, hash FROM heads WHERE agency_id = ?", (agency,)
            ).fetchone()
        return ChainHead(row[0], row[1]) if row else None

    def heads(self) -> dict[str, ChainHead]:
        with self._lock:
            rows = self._db.execute("SELECT agency_id, seq, hash FROM heads").fetchall()
        return {agency: ChainHead(seq, digest) for agency, seq, digest in rows}

    def adopt(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Record links found in an outbox that this file does not know (a crash between the
        two commits); returns how many. A position another event took meanwhile is a fork, which
        ``casestream verify`` will report: it is logged here too."""
        adopted = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    if event.get("chain_hash") is None:
                        continue
                    event_id, agency = str(event["event_id"]), event["agency_id"]
                    known = self._db.execute(
                        "SELECT 1 FROM links WHERE event_id = ?", (event_id,)
                    ).fetchone()
                    if known:
                        continue
                    self._record(event_id, agency, event)
                    adopted += 1
                    head = self._head(agency)
                    if event["chain_seq"] == head.seq + 1 and event["chain_prev"] == head.hash:
                        self._db.execute(
                            "INSERT INTO heads (agency_id, seq, hash) VALUES (?, ?, ?) "
                            "ON CONFLICT (agency_id) DO UPDATE SET seq = excluded.seq, "
                            "hash = excluded.hash",
                            (agency, event["chain_seq"], event["chain_hash"]),
                        )
                    else:
                        log.warning(
                            "chain of %s: outbox event %s at #%s does not follow the head #%s; "
                            "`casestream verify` will report the fork",
                            agency,
                            event_id,
                            event["chain_seq"],
                            head.seq,
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return adopted

    def close(self) -> None:
        with self._lock:
            self._db.close()
