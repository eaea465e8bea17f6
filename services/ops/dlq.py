"""The dead-letter topic: read its entries, and replay them after a fix.

The worker dead-letters a message to ``casestream.dlq`` with its raw key and value and headers
``reason``, ``detail``, ``field``, ``source_topic``, ``source_partition``, ``source_offset`` and
``rejected_at_ms`` (services/processor/worker.py). An entry's id is its place in the DLQ topic,
``<partition>:<offset>``.

Replay (`casestream dlq replay`) re-produces the *raw bytes* of an entry to its source topic and
partition, but only when the event now validates (same `Ingestor` as the worker, so with the
reference data and registry of this process: fix the reference data, restart the worker with it,
then replay with it). Each replay is recorded in the ClickHouse table ``dlq_replays`` keyed by
the source topic/partition/offset, and a second replay skips:

* entries whose source was already replayed (two workers may dead-letter the same message);
* entries whose event_id was already replayed (the same event published twice);
* entries that are themselves a dead-lettered replayed copy (a worker that still runs with the
  old reference data rejects the copy again: replaying it again would loop).

``--force`` ignores these records. The worker's event_id dedup is the second guard: a replayed
event that somehow arrives twice yields the same rows.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.contracts.events import agency_from_topic
from services.ops.probe import kafka_config
from services.ops.topics import DLQ_TOPIC
from services.settings import Settings

REPLAY_HEADER = "casestream_replay_of"
READER_GROUP = "casestream-ops-dlq-reader"  # never commits: reading moves no offsets


def _text(headers: dict[str, bytes], name: str) -> str:
    value = headers.get(name)
    return value.decode("utf-8", "replace") if value is not None else ""


def _int(headers: dict[str, bytes], name: str) -> int | None:
    text = _text(headers, name).strip()
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class DlqEntry:
    partition: int
    offset: int
    timestamp_ms: int  # Kafka timestamp of the dead letter
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    field: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    rejected_at_ms: int | None

    @classmethod
    def from_parts(
        cls,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]] | None,
    ) -> DlqEntry:
        h = {k: v for k, v in (headers or []) if v is not None}
        return cls(
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            reason=_text(h, "reason") or "unknown",
            detail=_text(h, "detail"),
            field=_text(h, "field"),
            source_topic=_text(h, "source_topic"),
            source_partition=_int(h, "source_partition"),
            source_offset=_int(h, "source_offset"),
            rejected_at_ms=_int(h, "rejected_at_ms"),
        )

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def agency(self) -> str:
        try:
            return agency_from_topic(self.source_topic)
        except ValueError:
            return "unknown"

    @property
    def source(self) -> tuple[str, int, int] | None:
        if not self.source_topic or self.source_partition is None or self.source_offset is None:
            return None
        return (self.source_topic, self.source_partition, self.source_offset)

    @property
    def at_ms(self) -> int:
        return self.rejected_at_ms if self.rejected_at_ms is not None else self.timestamp_ms

    def summary(self) -> dict[str, Any]:
        """JSON-able description (raw bytes left out; see `casestream dlq show`)."""
        return {
            "id": self.id,
            "reason": self.reason,
            "agency": self.agency,
            "field": self.field,
            "detail": self.detail,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "rejected_at": _iso(self.at_ms),
            "key": (self.key or b"").decode("utf-8", "replace"),
            "value_bytes": len(self.value or b""),
        }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def parse_id(text: str) -> tuple[int, int]:
    """``"0:17"`` → (0, 17); a bare ``"17"`` means partition 0."""
    part, _, off = text.strip().rpartition(":")
    try:
        return (int(part) if part else 0), int(off)
    except ValueError:
        raise ValueError(f"bad DLQ entry id {text!r}: expected <partition>:<offset>") from None


# --------------------------------------------------------------------------- reading


def _consumer(settings: Settings):
    from confluent_kafka import Consumer

    return Consumer(
        kafka_config(
            settings,
            **{
                "group.id": READER_GROUP,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "log_level": 0,  # errors surface as exceptions; no per-retry lines on stderr
            },
        )
    )


def watermarks(settings: Settings, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} of the DLQ topic (empty when it does not exist)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        topics = consumer.list_topics(DLQ_TOPIC, timeout=timeout).topics
        meta = topics.get(DLQ_TOPIC)
        if meta is None or meta.error is not None:
            return {}
        return {
            p: _watermark(consumer, TopicPartition(DLQ_TOPIC, p), timeout)
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def _watermark(consumer, tp, timeout: float, attempts: int = 10) -> tuple[int, int]:
    """Watermarks, retried while a just-created topic has no leader yet."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and hasattr(exc.args[0], "code") else None
            if code not in transient or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def read_entries(
    settings: Settings,
    *,
    limit: int | None = 100_000,
    timeout: float = 60.0,
    only: Iterable[tuple[int, int]] | None = None,
) -> list[DlqEntry]:
    """The newest `limit` entries per partition (all with None), oldest first.

    `only` reads just these (partition, offset) ids.
    """
    from confluent_kafka import TopicPartition

    marks = watermarks(settings)
    wanted: dict[int, set[int]] | None = None
    if only is not None:
        wanted = {}
        for p, o in only:
            wanted.setdefault(p, set()).add(o)
    ranges: dict[int, tuple[int, int]] = {}  # partition → [start, end)
    for p, (low, high) in marks.items():
        if wanted is not None:
            offsets = [o for o in wanted.get(p, ()) if low <= o < high]
            if offsets:
                ranges[p] = (min(offsets), max(offsets) + 1)
            continue
        start = low if limit is None else max(low, high - limit)
        if high > start:
            ranges[p] = (start, high)
    if not ranges:
        return []
    consumer = _consumer(settings)
    entries: list[DlqEntry] = []
    try:
        consumer.assign([TopicPartition(DLQ_TOPIC, p, start) for p, (start, _) in ranges.items()])
        remaining = {p: end for p, (_, end) in ranges.items()}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    continue
                p, o = msg.partition(), msg.offset()
                end = remaining.get(p)
                if end is None or o >= end:
                    continue
                if wanted is None or o in wanted.get(p, ()):
                    entries.append(
                        DlqEntry.from_parts(
                            p, o, msg.timestamp()[1], msg.key(), msg.value(), msg.headers()
                        )
                    )
                if o >= end - 1:
                    remaining.pop(p, None)
        if remaining:
            raise TimeoutError(f"DLQ not read to its end within {timeout:.0f}s: {remaining}")
    finally:
        consumer.close()
    entries.sort(key=lambda e: (e.at_ms, e.partition, e.offset))
    return entries


def get_entry(settings: Settings, entry_id: str) -> DlqEntry | None:
    found = read_entries(settings, limit=None, only=[parse_id(entry_id)], timeout=30)
    return found[0] if found else None


def select(
    entries: Iterable[DlqEntry],
    *,
    reason: str | None = None,
    agency: str | None = None,
    ids: Iterable[str] = (),
    since_ms: int | None = None,
) -> list[DlqEntry]:
    wanted = {parse_id(i) for i in ids}
    return [
        e
        for e in entries
        if (reason is None or e.reason == reason)
        and (agency is None or e.agency == agency)
        and (not wanted or (e.partition, e.offset) in wanted)
        and (since_ms is None or e.at_ms >= since_ms)
    ]


def counts(entries: Iterable[DlqEntry], *, since_ms: int | None = None) -> dict[str, Any]:
    """Dead letters by reason, by agency and by both (optionally only the recent ones)."""
    by_reason: dict[str, int] = {}
    by_agency: dict[str, int] = {}
    by_both: dict[str, int] = {}
    total = 0
    for e in entries:
        if since_ms is not None and e.at_ms < since_ms:
            continue
        total += 1
        by_reason[e.reason] = by_reason.get(e.reason, 0) + 1
        by_agency[e.agency] = by_agency.get(e.agency, 0) + 1
        by_both[f"{e.agency}/{e.reason}"] = by_both.get(f"{e.agency}/{e.reason}", 0) + 1
    return {
        "total": total,
        "by_reason": _sorted(by_reason),
        "by_agency": _sorted(by_agency),
        "by_agency_reason": _sorted(by_both),
    }


def _sorted(d: dict[str, int]) -> dict[str, int]:
    return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- replay records


@dataclass
class ReplayRecords:
    sources: set[tuple[str, int, int]] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    copies: set[tuple[str, int, int]] = field(default_factory=set)  # where replays were produced

    def by_source(self, entry: DlqEntry) -> str | None:
        """Why this entry counts as replayed already, or None."""
        if entry.source in self.sources:
            return "already_replayed"
        if entry.source in self.copies:
            return "replayed_copy"
        return None


def load_records(settings: Settings, client: Any = None) -> ReplayRecords:
    client = client or settings.clickhouse_client()
    rows = client.query(
        "SELECT source_topic, source_partition, source_offset, event_id, replayed_partition, "
        "replayed_offset FROM dlq_replays"
    ).result_rows
    records = ReplayRecords()
    for topic, part, off, event_id, rpart, roff in rows:
        records.sources.add((topic, int(part), int(off)))
        records.event_ids.add(event_id)
        records.copies.add((topic, int(rpart), int(roff)))
    return records


# --------------------------------------------------------------------------- replay


@dataclass
class Decision:
    entry: DlqEntry
    action: str  # replay | already_replayed | replayed_copy | duplicate | still_invalid | no_source
    detail: str = ""
    event_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.entry.id,
            "action": self.action,
            "detail": self.detail,
            "event_id": self.event_id,
            "agency": self.entry.agency,
            "reason": self.entry.reason,
            "source_topic": self.entry.source_topic,
            "source_partition": self.entry.source_partition,
            "source_offset": self.entry.source_offset,
        }


def plan(
    entries: Iterable[DlqEntry],
    records: ReplayRecords,
    validate: Callable[[bytes | None, str], Any],
    *,
    force: bool = False,
) -> list[Decision]:
    """Decide, without side effects, what a replay does with each entry.

    `validate(raw, topic)` returns the event's Fact or raises `Rejected` (the worker's rules).
    Each source message and each event_id is replayed at most once, in this run and over runs.
    """
    from services.processor.ingest import Rejected

    decisions = []
    seen_sources: set[tuple[str, int, int]] = set()
    seen_events: set[str] = set()
    for entry in entries:
        source = entry.source
        if source is None:
            decisions.append(Decision(entry, "no_source", "entry has no source coordinates"))
            continue
        done = None if force else records.by_source(entry)
        if done:
            decisions.append(Decision(entry, done))
            continue
        if source in seen_sources:
            decisions.append(Decision(entry, "duplicate", "same source as another entry"))
            continue
        seen_sources.add(source)
        try:
            fact = validate(entry.value, entry.source_topic)
        except Rejected as rejected:
            decisions.append(
                Decision(entry, "still_invalid", f"{rejected.reason}: {rejected.detail}")
            )
            continue
        event_id = str(fact.event_id)
        if event_id in seen_events or (not force and event_id in records.event_ids):
            decisions.append(
                Decision(
                    entry, "already_replayed", f"event {event_id} was replayed before", event_id
                )
            )
            continue
        seen_events.add(event_id)
        decisions.append(Decision(entry, "replay", "", event_id))
    return decisions


@dataclass
class ReplayResult:
    decisions: list[Decision]
    replayed: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def tally(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.decisions:
            out[d.action] = out.get(d.action, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "tally": self.tally(),
            "replayed": self.replayed,
            "decisions": [d.as_dict() for d in self.decisions],
        }


def replay(
    settings: Settings,
    entries: list[DlqEntry],
    *,
    dry_run: bool = False,
    force: bool = False,
    timeout: float = 60.0,
) -> ReplayResult:
    """Re-publish the entries that now validate; record each one in `dlq_replays`."""
    from confluent_kafka import Producer

    from services.processor.ingest import Ingestor

    client = settings.clickhouse_client()
    records = load_records(settings, client)
    ingestor = Ingestor.from_settings(settings)
    decisions = plan(entries, records, ingestor.accept, force=force)
    result = ReplayResult(decisions, dry_run=dry_run)
    todo = [d for d in decisions if d.action == "replay"]
    if dry_run or not todo:
        return result
    producer = Producer(
        kafka_config(
            settings,
            **{
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": int(timeout * 1000),
            },
        )
    )
    delivered: dict[str, tuple[int, int]] = {}
    errors: dict[str, str] = {}

    def on_delivery(entry_id: str):
        def callback(err, msg) -> None:
            if err is None:
                delivered[entry_id] = (msg.partition(), msg.offset())
            else:
                errors[entry_id] = str(err)

        return callback

    for d in todo:
        e = d.entry
        producer.produce(
            e.source_topic,
            key=e.key,
            value=e.value,
            partition=e.source_partition,
            headers=[
                (
                    REPLAY_HEADER,
                    f"{e.source_topic}:{e.source_partition}:{e.source_offset} dlq {e.id}".encode(),
                )
            ],
            on_delivery=on_delivery(e.id),
        )
        producer.poll(0)
    producer.flush(timeout)
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    now = datetime.now(UTC)
    rows = []
    for d in todo:
        e = d.entry
        if e.id not in delivered:
            d.action, d.detail = "failed", errors.get(e.id, "not acknowledged by Kafka")
            continue
        part, off = delivered[e.id]
        rows.append(
            [
                e.source_topic,
                e.source_partition,
                e.source_offset,
                d.event_id,
                e.agency,
                e.reason,
                e.partition,
                e.offset,
                part,
                off,
                now,
                who,
            ]
        )
        result.replayed.append({**d.as_dict(), "replayed_partition": part, "replayed_offset": off})
    if rows:
        client.insert(
            "dlq_replays",
            rows,
            column_names=[
                "source_topic",
                "source_partition",
                "source_offset",
                "event_id",
                "agency_id",
                "reason",
                "dlq_partition",
                "dlq_offset",
                "replayed_partition",
                "replayed_offset",
                "replayed_at",
                "replayed_by",
            ],
        )
    return result


def entry_details(settings: Settings, entry: DlqEntry) -> dict[str, Any]:
    """Everything about one entry: headers, raw bytes, decoded event, today's verdict."""
    from services.contracts.codec import AvroCodec
    from services.contracts.events import to_json_form
    from services.contracts.registry import SchemaCache, make_client
    from services.processor.ingest import Ingestor, Rejected

    out: dict[str, Any] = asdict(entry)
    out.pop("key"), out.pop("value")
    out.update(entry.summary())
    raw = entry.value or b""
    out["value_hex"] = raw[:256].hex() + ("…" if len(raw) > 256 else "")
    try:
        event = AvroCodec().decode(raw, SchemaCache(make_client(settings.registry_url)))
        try:
            out["event"] = to_json_form(event)
        except Exception:  # noqa: BLE001 - decodable but not normalizable: show it raw
            out["event"] = {k: str(v) for k, v in event.items()}
    except Exception as exc:  # noqa: BLE001
        out["event"] = None
        out["decode_error"] = str(exc)
    try:
        fact = Ingestor.from_settings(settings).accept(raw, entry.source_topic)
        out["now"] = {"valid": True, "event_id": fact.event_id}
    except Rejected as rejected:
        out["now"] = {"valid": False, "reason": rejected.reason, "detail": rejected.detail}
    try:
        records = load_records(settings)
        out["replayed"] = records.by_source(entry)
    except Exception:  # noqa: BLE001 - ClickHouse down: still show the entry
        out["replayed"] = None
    return out
