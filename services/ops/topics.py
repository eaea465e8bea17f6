"""Kafka topics the platform owns, created up front with the partition counts we want.

faust creates only its own internal topics, and a topic auto-created by a first produce gets the
broker default; so the worker, the SDK and the tests call `ensure_topics` first.
"""

from __future__ import annotations

import re

from confluent_kafka.admin import AdminClient, NewTopic

from services.contracts.events import topic_for_agency
from services.settings import Settings

AGENCY_TOPIC_PATTERN = re.compile(r"^agency\.[^.]+\.events$")
FACTS_TOPIC_SUFFIX = "-facts-by-case"
DLQ_TOPIC = "casestream.dlq"
PROBE_TOPIC = "casestream.probe"


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
    admin = AdminClient(settings.kafka_client_config())  # issue 7: incl. SASL/SSL settings
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=replicas)
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
