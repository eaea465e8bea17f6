"""The agency SDK: validate, keep in the outbox, encode with the registry, produce, confirm.

    from services.agency.publisher import Publisher
    with Publisher("20-INSP") as pub:
        pub.publish({"event_id": "…", "event_type": "case_opened", …})
    # leaving the block waits for Kafka's acknowledgements; what is not acknowledged stays
    # in the outbox and is sent by the next Publisher for the same agency.

Guarantees: an event that `publish` accepted is on disk before `publish` returns; it is produced
with an idempotent producer (acks=all) and marked delivered only from Kafka's delivery report.
The broker or the registry being down delays delivery, it loses nothing.

Speed (the publish benchmark, docs/benchmarks.md): each event is validated, chained and encoded
once; the outbox keeps the Avro body that is sent (outbox.py), a resend prepends the header and
does not encode again; delivery reports append the event's outbox sequence number to a list and
the outbox marks runs of consecutive numbers, not one row per event. Validation gives the
storable form and the canonical timestamp text in the same pass (``events.parse_for_outbox``,
the one validator, parse_event's own rules), the chain hashes a batch in one loop, and the
outbox is asked once per batch which ids it holds: publish_many in process with a fake producer
went from 36.5 to 27.7 us CPU per event (20,200 generated events in chunks of 2,000, best of 3).

Every accepted event is linked into its agency's hash chain (chain_seq, chain_prev, chain_hash;
services/contracts/chain.py) before it is stored: the heads live in one file per host
(services/agency/chain_store.py) shared by the SDK, bulk import and the gateway, and advance in
the same step as the outbox takes the events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Producer

from services.agency.chain_store import ChainStore
from services.agency.outbox import Message, Outbox, storable_form
from services.contracts.codec import HEADER, MAGIC_BYTE
from services.contracts.events import (
    parse_for_outbox,
    topic_for_agency,
    validate_publisher,
)
from services.contracts.registry import make_client, register_agency_subject
from services.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    event_id: str
    new: bool  # False when this event_id was accepted before (idempotent no-op)


_to_storable = storable_form  # the benchmark's name for it

#: Serve delivery reports (poll) once per this many produced messages, not after each one.
_POLL_EVERY = 500
#: Mark acknowledged events delivered once this many are waiting, or after this long.
_MARK_EVERY = 20_000
_MARK_SECONDS = 2.0


class Publisher:
    """Publishes one agency's events. Thread-safe; use as a context manager or call close().

    `agency_id=None` makes an operator publisher (bulk import of many agencies' records): each
    event still goes to its own agency's topic and subject, through one producer and one outbox.
    """

    def __init__(
        self,
        agency_id: str | None,
        settings: Settings | None = None,
        *,
        outbox_path: Path | str | None = None,
        producer_config: dict[str, Any] | None = None,
        registry_client: Any = None,
        chain_path: Path | str | None = None,
    ) -> None:
        self.agency_id = agency_id
        if agency_id is not None:
            topic_for_agency(agency_id)  # ValueError for a malformed id
        self.settings = settings or Settings.from_env()
        self.outbox = Outbox(
            outbox_path or self.settings.home / "outbox" / f"{agency_id or 'operator'}.sqlite"
        )
        # One chain store per host (not per outbox): see chain_store.py.
        self.chain = ChainStore(chain_path or self.settings.home / "chain" / "chain.sqlite")
        self.chain.adopt(event for _, event in self.outbox.pending())
        self._registry = registry_client or make_client(self.settings.registry_url, timeout=10)
        self._schema_ids: dict[str, int] = {}
        self._headers: dict[str, bytes] = {}  # agency -> wire-format header (magic, schema id)
        self._topics: dict[str, str] = {}
        self._in_flight: set[int] = set()  # outbox sequence numbers produced, not yet marked
        # Acknowledged by Kafka, not yet marked in the outbox: marked in one transaction per
        # produce/flush call (one SQLite commit per event capped bulk imports at ~600 events/s).
        # An acknowledged event stays in _in_flight until it is marked, so it is never re-sent.
        self._acked: list[int] = []
        self._marked_at = time.monotonic()
        self._lock = threading.Lock()  # guards _in_flight/_acked (callbacks run in poll/flush)
        self._send_lock = threading.RLock()  # serialises outbox reads/writes with producing
        self.delivery_errors = 0
        self._topics_ready: set[str] = set()
        self._topics_retry_at = 0.0
        self._producer = Producer(
            {
                # bootstrap servers plus SASL/SSL settings from the environment
                **self.settings.kafka_client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": 60_000,
                **(producer_config or {}),
            }
        )
        self._send_pending()

    # ------------------------------------------------------------------ public API

    def publish(self, event: Mapping[str, Any]) -> Accepted:
        """Validate one event (JSON form) and accept it; raises EventValidationError."""
        return self.publish_many([event])[0]

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[Accepted]:
        """Validate all, then accept all in one outbox transaction (all or none on error)."""
        own = self.agency_id
        ids: list[str] = []
        stored: list[dict[str, Any]] = []
        texts: list[str] = []  # occurred_at in canonical text, for the chain
        for event in events:
            form, text = parse_for_outbox(event)
            if own is not None:
                validate_publisher(form, own)
            ids.append(form["event_id"])
            stored.append(form)
            texts.append(text)
        encode = self.outbox.encode
        with self._send_lock:  # no re-send of pending rows between the commit and the produce
            # The chain commits only after the outbox did: a head never advances for an event
            # the outbox did not take. Ids already in the outbox keep the links they have; an
            # id given twice in one call is accepted once (the first), as the outbox would.
            # Which ids the outbox holds is read once, inside its accept transaction.
            with self.outbox.accepting(ids) as accept:
                seen = set(accept.held)
                fresh: list[dict[str, Any]] = []
                fresh_texts: list[str | None] = []
                for eid, event, text in zip(ids, stored, texts, strict=True):
                    if eid not in seen:
                        seen.add(eid)
                        fresh.append(event)
                        fresh_texts.append(text)
                with self.chain.assigning(fresh, fresh_texts) as links:
                    rows = []
                    for event, link in zip(fresh, links, strict=True):
                        event.update(link)
                        rows.append(
                            (event["event_id"], event["agency_id"], event["case_id"], encode(event))
                        )
                    seqs = accept.add(rows)
            messages = [
                Message(seq, row[0], row[1], row[2].encode("utf-8"), row[3])
                for row, seq in zip(rows, seqs, strict=True)
                if seq is not None
            ]
            self._produce(messages)
        new = {message.event_id for message in messages}
        accepted = []
        for eid in ids:
            accepted.append(Accepted(eid, eid in new))
            new.discard(eid)  # the second of a duplicate pair was not new
        return accepted

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for acknowledgements, re-sending what failed; returns events still pending."""
        deadline = time.monotonic() + timeout
        while True:
            self._producer.flush(max(0.0, min(5.0, deadline - time.monotonic())))
            self._mark_acked()
            self._send_pending()
            pending = self.outbox.counts()["pending"]
            if pending == 0 or time.monotonic() >= deadline:
                return pending
            time.sleep(0.2)

    def close(self, timeout: float = 30.0) -> int:
        pending = self.flush(timeout)
        if pending:
            # Unacknowledged events stay in the outbox for the next start; without the purge
            # librdkafka keeps the client (and its reconnect attempts) alive to deliver them.
            self._producer.purge()
            self._producer.flush(0)
        self.outbox.close()
        self.chain.close()
        self._producer = None  # stop librdkafka's reconnect loop now, not at garbage collection
        return pending

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, agency_ids: Iterable[str], threads: int = 8) -> None:
        """Do the once-per-agency work now: register the subjects and ensure the topics.

        Each is otherwise paid by the first event of each agency, on the publishing path: an
        operator publisher meeting ~830 agencies one by one spent ~0.1 s per topic check,
        which held a 1,000 events/s schedule up to 18 s behind (the latency benchmark,
        docs/benchmarks.md). Registry or Kafka being down is not an error here: the events
        then wait in the outbox as usual.
        """
        agencies = sorted(set(agency_ids))
        for agency in agencies:
            topic_for_agency(agency)  # ValueError naming a malformed id, before any request
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(self._header, agencies))
        except Exception as exc:  # noqa: BLE001 - registry down: the first send registers
            log.warning("could not register the subjects now (%s); events wait for it", exc)
        self._ensure_topics(set(agencies))

    # ------------------------------------------------------------------ internals

    def schema_id(self, agency_id: str) -> int:
        """The registered schema id of the agency's subject (registered on first use)."""
        if agency_id not in self._schema_ids:
            self._schema_ids[agency_id] = register_agency_subject(self._registry, agency_id)
        return self._schema_ids[agency_id]

    def _mark_acked(self, force: bool = True) -> None:
        """Mark the events Kafka acknowledged since the last marking as delivered (one commit).

        Unless forced (flush, close, re-send), marking waits until ``_MARK_EVERY`` events were
        acknowledged or ``_MARK_SECONDS`` passed: acknowledgements arrive partition by
        partition, so the numbers acknowledged after one 2,000-event call are scattered over
        ~800 agency partitions and marking them then took one UPDATE per number (9.6 % of the
        publisher's samples in the publish benchmark); later, most of them form long runs. An
        acknowledged event stays in flight until marked, so it is never re-sent meanwhile; a
        crash before the marking only re-sends it (deduplicated downstream by event_id).
        """
        with self._lock:
            due = (
                force
                or len(self._acked) >= _MARK_EVERY
                or time.monotonic() - self._marked_at >= _MARK_SECONDS
            )
            if not due:
                return
            acked, self._acked = self._acked, []
            self._marked_at = time.monotonic()
        if acked:
            self.outbox.mark_delivered(acked)
            with self._lock:
                self._in_flight.difference_update(acked)

    def _send_pending(self) -> None:
        """(Re)produce every outbox event that is neither delivered nor in flight."""
        with self._send_lock:
            self._mark_acked()
            with self._lock:
                in_flight = set(self._in_flight)
            self._produce([m for m in self.outbox.pending_messages() if m.seq not in in_flight])

    def _produce(self, messages: list[Message]) -> None:
        try:
            self._produce_messages(messages)
        finally:
            self._mark_acked(force=False)

    def _ensure_topics(self, agencies: set[str]) -> None:
        """Create missing agency topics with the record's retention (topics.py), once per agency.

        A topic auto-created by the first produce would take the broker's default retention (7
        days on a usual production cluster) and lose the record. An agency without the right to
        create topics (production ACLs: the operator creates them) publishes to the existing
        topic; `casestream health` fails on any record topic that still deletes.
        """
        new = agencies - self._topics_ready
        if not new or time.monotonic() < self._topics_retry_at:
            return
        from services.ops.topics import ensure_agency_topics

        try:
            ensure_agency_topics(self.settings, sorted(new), timeout=5)
            self._topics_ready |= new
        except Exception as exc:  # noqa: BLE001 - no CREATE right, or Kafka down: produce anyway
            log.warning("could not ensure the topics of %s (%s)", ", ".join(sorted(new)), exc)
            self._topics_retry_at = time.monotonic() + 30  # as the gateway: not on every send

    def _header(self, agency: str) -> bytes:
        header = self._headers.get(agency)
        if header is None:
            header = self._headers[agency] = HEADER.pack(MAGIC_BYTE, self.schema_id(agency))
            self._topics[agency] = topic_for_agency(agency)
        return header

    def _produce_messages(self, messages: list[Message]) -> None:
        if not messages:
            return
        self._ensure_topics({m.agency_id for m in messages})
        produce, poll = self._producer.produce, self._producer.poll
        in_flight, delivered = self._in_flight, self._delivered
        for n, message in enumerate(messages, 1):
            agency = message.agency_id
            try:
                header = self._header(agency)
            except Exception as exc:  # noqa: BLE001 - registry down: events wait in the outbox
                log.warning("registry unavailable (%s); events wait in the outbox", exc)
                return
            with self._lock:
                in_flight.add(message.seq)
            value = header + message.body
            while True:
                try:
                    produce(
                        self._topics[agency],
                        key=message.key,
                        value=value,
                        on_delivery=partial(delivered, message.seq, message.event_id),
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    poll(0.1)
            if n % _POLL_EVERY == 0:
                poll(0)
        poll(0)

    def _delivered(self, seq: int, event_id: str, err: KafkaError | None, _msg: Any) -> None:
        """Delivery report of one message (runs inside poll/flush)."""
        if err is None:
            with self._lock:  # stays in flight until _mark_acked wrote it to the outbox
                self._acked.append(seq)
            return
        with self._lock:
            self._in_flight.discard(seq)  # re-sent by the next _send_pending
        self.delivery_errors += 1
        log.warning("delivery of %s failed (%s); it stays in the outbox", event_id, err)
