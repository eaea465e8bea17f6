"""Kafka topics the platform owns, created up front with the partition counts and configs we want.

faust creates only its own internal topics, and a topic auto-created by a first produce gets the
broker default; so the worker, the SDK, the gateway and the tests call `ensure_topics` first.

Topics that *hold the record* (every agency topic and the dead-letter topic) are created with
``retention.ms=-1`` and ``retention.bytes=-1``: Kafka is the source of truth, and with a
production broker's usual default of 7 days every event older than a week would be deleted and
``rebuild`` would silently produce wrong tables. With three or more replicas they also get
``min.insync.replicas=2``. :func:`finite_retention` finds record topics that would still delete
(created before this rule, or by a first produce) and :func:`keep_forever` fixes them
(``casestream topics keep-forever``); ``casestream health`` fails while any is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from services.contracts.events import topic_for_agency
from services.settings import Settings

AGENCY_TOPIC_PATTERN = re.compile(r"^agency\.[^.]+\.events$")
FACTS_TOPIC_SUFFIX = "-facts-by-case"
DLQ_TOPIC = "casestream.dlq"
PROBE_TOPIC = "casestream.probe"


RECORD_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1"}


def holds_the_record(topic: str) -> bool:
    """Agency topics and the dead-letter topic: what must never be deleted by retention."""
    return topic == DLQ_TOPIC or AGENCY_TOPIC_PATTERN.match(topic) is not None


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    """The configs a platform topic is created with (empty: the broker's defaults)."""
    if not holds_the_record(topic):
        return {}
    config = dict(RECORD_RETENTION)
    if settings.topic_replication_factor >= 3:
        config["min.insync.replicas"] = "2"  # an acknowledged write is on two brokers
    return config


def facts_topic(app_id: str) -> str:
    """The re-keyed facts of one worker app id (its intake writes, its derive reads).

    One topic per app id, never shared: a second group (a rebuild, a test's isolated worker)
    re-keys the agency topics into its own topic, so neither group derives the other's copy.
    The name starts with the app id, so the worker's prefixed ACLs cover it.
    """
    return f"{app_id}{FACTS_TOPIC_SUFFIX}"


def ensure_topics(
    settings: Settings, extra: dict[str, int] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create missing topics (name → partitions); returns the names created.

    Replicas: CASESTREAM_TOPIC_REPLICATION_FACTOR when above 1, else the broker's
    `default.replication.factor`, so a cluster whose operators forgot the variable still gets
    its own default rather than a single copy.
    """
    replicas = settings.topic_replication_factor if settings.topic_replication_factor > 1 else -1
    wanted = {DLQ_TOPIC: 1, **(extra or {})}
    admin = AdminClient(settings.kafka_client_config())  # incl. SASL/SSL settings
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replicas,
            config=topic_config(settings, name),
        )
        for name, partitions in wanted.items()
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def ensure_agency_topic(settings: Settings, agency_id: str) -> None:
    ensure_topics(settings, {topic_for_agency(agency_id): settings.topic_partitions})


def ensure_agency_topics(settings: Settings, agency_ids: list[str], timeout: float = 30.0) -> None:
    ensure_topics(
        settings,
        {topic_for_agency(a): settings.topic_partitions for a in agency_ids},
        timeout=timeout,
    )


def _span(ms: int) -> str:
    for unit, size in (("days", 86_400_000), ("hours", 3_600_000), ("minutes", 60_000)):
        if ms >= size:
            return f"{ms / size:g} {unit}"
    return f"{ms / 1000:g} seconds"


@dataclass(frozen=True)
class Retention:
    topic: str
    retention_ms: int
    retention_bytes: int

    @property
    def finite(self) -> bool:
        return self.retention_ms >= 0 or self.retention_bytes >= 0

    def describe(self) -> str:
        parts = []
        if self.retention_ms >= 0:
            parts.append(f"retention.ms={self.retention_ms} ({_span(self.retention_ms)})")
        if self.retention_bytes >= 0:
            parts.append(f"retention.bytes={self.retention_bytes}")
        return f"{self.topic}: {', '.join(parts) or 'kept forever'}"


def record_retention(settings: Settings, timeout: float = 30.0) -> list[Retention]:
    """The effective retention of every topic holding the record (one DescribeConfigs request)."""
    admin = AdminClient(settings.kafka_client_config())
    topics = sorted(t for t in admin.list_topics(timeout=timeout).topics if holds_the_record(t))
    if not topics:
        return []
    futures = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics], request_timeout=timeout
    )
    found = []
    for resource, future in futures.items():
        entries = future.result(timeout)
        found.append(
            Retention(
                resource.name,
                int(entries["retention.ms"].value),
                int(entries["retention.bytes"].value),
            )
        )
    return sorted(found, key=lambda r: r.topic)


def finite_retention(settings: Settings, timeout: float = 30.0) -> list[Retention]:
    """Topics holding the record whose retention would delete events."""
    return [r for r in record_retention(settings, timeout) if r.finite]


def keep_forever(settings: Settings, topics: list[str], timeout: float = 30.0) -> list[str]:
    """Set retention.ms and retention.bytes to -1 on these topics; returns the topics changed.

    Incremental (only these two configs change), so it is safe to run again at any time.
    """
    if not topics:
        return []
    admin = AdminClient(settings.kafka_client_config())
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in RECORD_RETENTION.items()
            ],
        )
        for topic in topics
    ]
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    for future in futures.values():
        future.result(timeout)
    return sorted(topics)
