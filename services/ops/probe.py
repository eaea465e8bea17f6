"""End-to-end latency probes: produced to Kafka → visible as a row in ClickHouse.

A probe is a tiny JSON message on its own topic, ``casestream.probe``. The worker's intake
consumes that topic together with the agency topics and forwards probes, unvalidated, onto the
re-keyed facts topic under a key no case can have (``PROBE_KEY_PREFIX``); the derive agent
takes them out of the batch before any fact is derived and writes them to the ``probes`` table
in the same ClickHouse write as the batch's rows. So a probe waits in the same batches, flushes
and writes as real events, yet it never reaches ``events``, ``cases`` or any analyst table.

``visible_at`` is ClickHouse's clock at insert and ``sent_at`` the sender's clock: on one machine
(the local stack) they agree; in production run NTP everywhere.

The worker sends one probe every ``CASESTREAM_PROBE_INTERVAL_SECONDS`` (a faust timer), so the
latency is measured continuously; ``casestream ops probe`` sends one and waits for it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from services.ops.topics import PROBE_TOPIC
from services.settings import Settings

# Case ids are visible ASCII (contract), so a key starting with NUL can only be a probe.
PROBE_KEY_PREFIX = b"\x00probe\x00"
PROBE_COLUMNS = ["probe_id", "source", "sent_at"]
PROBE_RETENTION_MS = 3_600_000  # old probes are worthless, and a rebuild replays fewer of them


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration of the ops tools: the platform's (with SASL/SSL when the
    settings have them) plus `extra`."""
    build = getattr(settings, "kafka_client_config", None)
    if build is not None:
        return build(**extra)
    return {"bootstrap.servers": settings.kafka_bootstrap, **extra}


def new_probe(source: str, now_ms: int | None = None) -> tuple[bytes, bytes]:
    """(key, value) of a fresh probe message."""
    probe_id = uuid.uuid4().hex
    sent_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    value = json.dumps({"probe_id": probe_id, "source": source, "sent_at_ms": sent_ms})
    return probe_id.encode(), value.encode()


def probe_row(raw: bytes | None) -> list[Any] | None:
    """A probe message's value → its `probes` row, or None when it is not a probe (ignored)."""
    try:
        data = json.loads(raw or b"")
        probe_id = str(data["probe_id"])
        sent = datetime.fromtimestamp(int(data["sent_at_ms"]) / 1000, tz=UTC)
        source = str(data.get("source") or "unknown")[:64]
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return None
    return [probe_id[:64], source, sent]


def facts_key(key: bytes | None) -> bytes:
    """Key under which the intake forwards a probe to the facts topic."""
    return PROBE_KEY_PREFIX + (key or b"")


def is_probe_key(key: bytes | None) -> bool:
    return bool(key) and key.startswith(PROBE_KEY_PREFIX)


def split_probes(events: Iterable[Any]) -> tuple[list[Any], list[list[Any]]]:
    """Split a batch of faust events of the facts topic into (fact events, probe rows)."""
    facts, probes = [], []
    for event in events:
        if is_probe_key(event.message.key):
            row = probe_row(event.message.value)
            if row is not None:
                probes.append(row)
        else:
            facts.append(event)
    return facts, probes


def ensure_probe_topic(settings: Settings, timeout: float = 30.0) -> bool:
    """Create ``casestream.probe`` (1 partition, one-hour retention) if missing."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_config(settings))
    if PROBE_TOPIC in admin.list_topics(timeout=timeout).topics:
        return False
    topic = NewTopic(
        PROBE_TOPIC,
        num_partitions=1,
        replication_factor=-1,
        config={"retention.ms": str(PROBE_RETENTION_MS), "segment.ms": "600000"},
    )
    try:
        admin.create_topics([topic], request_timeout=timeout)[PROBE_TOPIC].result()
    except Exception as exc:  # noqa: BLE001
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
        return False
    return True


def send_probe(settings: Settings, source: str = "cli", timeout: float = 10.0) -> tuple[str, int]:
    """Produce one probe and wait for Kafka's acknowledgement; returns (probe_id, sent_at_ms)."""
    from confluent_kafka import Producer

    ensure_probe_topic(settings)
    key, value = new_probe(source)
    producer = Producer(
        kafka_config(
            settings,
            **{
                "acks": "all",
                "message.timeout.ms": int(timeout * 1000),
            },
        )
    )
    errors: list[Any] = []
    producer.produce(
        PROBE_TOPIC,
        key=key,
        value=value,
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    if producer.flush(timeout) or errors:
        raise RuntimeError(f"probe not acknowledged by Kafka: {errors or 'timeout'}")
    return key.decode(), json.loads(value)["sent_at_ms"]


def wait_visible(
    settings: Settings, probe_id: str, timeout: float = 60.0, client: Any = None
) -> float | None:
    """Wait until the probe's row is in ClickHouse; returns its latency in seconds or None."""
    client = client or settings.clickhouse_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = client.query(
            "SELECT latency_seconds FROM probe_latency WHERE probe_id = {p:String}",
            parameters={"p": probe_id},
        ).result_rows
        if rows:
            return float(rows[0][0])
        time.sleep(0.25)
    return None


def measure(settings: Settings, timeout: float = 60.0) -> dict[str, Any]:
    """Send a probe and wait for it: {"probe_id", "latency_seconds" (None on timeout)}."""
    probe_id, _sent = send_probe(settings, "cli")
    return {"probe_id": probe_id, "latency_seconds": wait_visible(settings, probe_id, timeout)}
