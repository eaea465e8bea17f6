"""`casestream verify`: read the agency topics from their beginning and check each hash chain.

The checking is pure (``services/contracts/chain.verify_agency``); this module reads Kafka (a
librdkafka consumer assigned to every partition from its log start offset to the high watermark
taken when the run starts, as ``dlq.read_entries`` does), decodes with the schema registry,
compares with this host's chain heads when it has any (``<home>/chain/chain.sqlite``: only the
publisher knows which position it gave out last) and stores the run in ClickHouse
(``chain_verifications``) so ``casestream health`` can show the last verification.

It reads every message of an agency into memory before checking it: about 1 KB per event, so a
few million events per agency on an ops host. Agencies are read one after the other.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.contracts.chain import AgencyResult, ChainHead, Record, verify_agency
from services.contracts.events import TOPIC_PATTERN, agency_from_topic, topic_for_agency
from services.settings import Settings

RESULT_TABLE = "chain_verifications"
MAX_STORED_FINDINGS = 200  # per run, in the stored summary (the CLI prints them all)


class VerifyError(RuntimeError):
    """A verification that cannot run (unknown agency, topic unreadable): one line for the CLI."""


@dataclass
class Run:
    scope: str
    started_at: float
    finished_at: float = 0.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    agencies: list[AgencyResult] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return all(a.intact for a in self.agencies)

    @property
    def findings(self) -> int:
        return sum(len(a.findings) for a in self.agencies)

    def as_dict(self, max_findings: int | None = None) -> dict[str, Any]:
        agencies = [a.as_dict() for a in self.agencies]
        if max_findings is not None:
            left = max_findings
            for a in agencies:
                a["findings"], left = a["findings"][: max(left, 0)], left - len(a["findings"])
                a["notes"] = a["notes"][:20]
        return {
            "run_id": self.run_id,
            "scope": self.scope,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "intact": self.intact,
            "findings": self.findings,
            "agencies": agencies,
        }


def _consumer(settings: Settings):
    from confluent_kafka import Consumer

    from services.ops.probe import kafka_config

    return Consumer(
        kafka_config(
            settings,
            **{
                "group.id": "casestream-verify",  # never commits: assign() only
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "log_level": 0,
            },
        )
    )


def agency_topics(settings: Settings, agency: str | None, timeout: float = 10.0) -> list[str]:
    """The topics to verify: one agency's, or every agency topic of the cluster."""
    consumer = _consumer(settings)
    try:
        topics = consumer.list_topics(timeout=timeout).topics
    finally:
        consumer.close()
    if agency is not None:
        try:
            topic = topic_for_agency(agency)
        except ValueError as exc:
            raise VerifyError(f"--agency {agency!r}: {exc}") from None
        if topic not in topics:
            raise VerifyError(f"--agency {agency}: no topic {topic} (nothing was ever published)")
        return [topic]
    return sorted(t for t in topics if TOPIC_PATTERN.fullmatch(t))


def read_topic(
    settings: Settings,
    topic: str,
    decode: Callable[[bytes], dict[str, Any]],
    *,
    progress: Callable[[str], None] | None = None,
    timeout: float = 600.0,
) -> tuple[list[Record], dict[tuple[str, int], int]]:
    """Every message of a topic up to the high watermarks taken now, and the log start offsets."""
    from confluent_kafka import TopicPartition

    from services.contracts.codec import WireFormatError
    from services.ops.dlq import _watermark

    consumer = _consumer(settings)
    records: list[Record] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise VerifyError(f"topic {topic} cannot be read ({meta.error if meta else 'gone'})")
        marks = {p: _watermark(consumer, TopicPartition(topic, p), 10) for p in meta.partitions}
        starts = {(topic, p): low for p, (low, _) in marks.items()}
        remaining = {p: high for p, (low, high) in marks.items() if high > low}
        total = sum(high - low for low, high in marks.values())
        if not remaining:
            return records, starts
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in remaining])
        deadline = time.monotonic() + timeout
        last_report = time.monotonic()
        while remaining:
            if time.monotonic() > deadline:
                raise VerifyError(
                    f"{topic} not read to its end within {timeout:.0f}s "
                    f"({len(records):,} of {total:,} messages)"
                )
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    continue
                p, offset = msg.partition(), msg.offset()
                end = remaining.get(p)
                if end is None or offset >= end:
                    continue
                try:
                    event, error = decode(msg.value()), None
                except WireFormatError as exc:
                    event, error = None, str(exc)
                records.append(Record(topic, p, offset, event, error, msg.timestamp()[1]))
                if offset >= end - 1:
                    remaining.pop(p, None)
            if progress and time.monotonic() - last_report >= 2.0:
                last_report = time.monotonic()
                progress(f"  {topic}: {len(records):,} of {total:,} messages read")
    finally:
        consumer.close()
    return records, starts


def publisher_heads(settings: Settings) -> dict[str, ChainHead]:
    """This host's chain heads (publishers that ran with the same CASESTREAM_HOME), if any."""
    path = settings.home / "chain" / "chain.sqlite"
    if not path.exists():
        return {}
    from services.agency.chain_store import ChainStore

    store = ChainStore(path)
    try:
        return store.heads()
    finally:
        store.close()


def verify(
    settings: Settings,
    *,
    agency: str | None = None,
    progress: Callable[[str], None] | None = None,
    use_publisher_heads: bool = True,
    timeout: float = 600.0,
) -> Run:
    """Read and check the chains; see the module docstring. Does not store the run."""
    from services.contracts.codec import AvroCodec
    from services.contracts.registry import SchemaCache, make_client

    run = Run(scope=agency or "all", started_at=time.time())
    topics = agency_topics(settings, agency)
    codec = AvroCodec()
    cache = SchemaCache(make_client(settings.registry_url, timeout=10))
    heads = publisher_heads(settings) if use_publisher_heads else {}
    for i, topic in enumerate(topics, start=1):
        agency_id = agency_from_topic(topic)
        if progress:
            progress(f"[{i}/{len(topics)}] reading {topic}")
        records, starts = read_topic(
            settings,
            topic,
            lambda raw: codec.decode(raw, cache),
            progress=progress,
            timeout=timeout,
        )
        run.agencies.append(verify_agency(agency_id, records, starts, heads.get(agency_id)))
    run.finished_at = time.time()
    return run


def store(settings: Settings, run: Run) -> None:
    """Append the run to ``chain_verifications`` (health reads the newest)."""
    client = settings.clickhouse_client()
    client.insert(
        RESULT_TABLE,
        [
            [
                run.run_id,
                run.scope,
                _utc(run.started_at),
                _utc(run.finished_at),
                len(run.agencies),
                sum(a.messages for a in run.agencies),
                sum(a.chained for a in run.agencies),
                run.findings,
                int(run.intact),
                [a.agency_id for a in run.agencies if not a.intact],
                json.dumps(run.as_dict(MAX_STORED_FINDINGS), separators=(",", ":")),
                f"{getpass.getuser()}@{socket.gethostname()}",
            ]
        ],
        column_names=[
            "run_id",
            "scope",
            "started_at",
            "finished_at",
            "agencies",
            "messages",
            "chained",
            "findings",
            "intact",
            "tampered",
            "summary",
            "run_by",
        ],
    )


def _utc(ts: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


def format_text(run: Run) -> str:
    """One line per agency, its findings below it, and the verdict."""
    lines = []
    for a in run.agencies:
        chain = f"chain #1..#{a.head_seq}" if a.head_seq else "no chained event"
        state = "intact" if a.intact else f"{len(a.findings)} finding(s)"
        lines.append(f"{a.agency_id:<14} {a.messages:>10,} messages  {chain:<22} {state}")
        lines.extend(f"    {f.line()}" for f in a.findings)
        lines.extend(f"    note: {n.line()}" for n in a.notes)
    took = run.finished_at - run.started_at
    verdict = (
        "INTACT"
        if run.intact
        else f"TAMPERED: {run.findings} finding(s) in "
        f"{', '.join(a.agency_id for a in run.agencies if not a.intact)}"
    )
    lines.append(f"verified {len(run.agencies)} agencies in {took:.1f}s: {verdict}")
    return "\n".join(lines)
