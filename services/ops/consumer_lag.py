"""Consumer lag: committed offset vs high watermark, per group and partition.

Used by `casestream health` and by the demo and tests to know when the worker has caught up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from services.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int  # -1 when the group never committed
    high_watermark: int

    @property
    def lag(self) -> int:
        return self.high_watermark - max(self.committed, 0)


def group_lag(
    settings: Settings, group: str, topics: list[str], timeout: float = 10.0
) -> list[PartitionLag]:
    admin = AdminClient(settings.kafka_client_config())  # incl. SASL/SSL settings
    metadata = admin.list_topics(timeout=timeout)
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics
        for p in sorted(metadata.topics[topic].partitions)
    ]
    if not partitions:
        return []
    future = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, partitions)], request_timeout=timeout
    )[group]
    committed = {
        (tp.topic, tp.partition): tp.offset for tp in future.result(timeout).topic_partitions
    }
    return [
        PartitionLag(tp.topic, tp.partition, committed.get((tp.topic, tp.partition), -1), end)
        for tp, end in _high_watermarks(admin, partitions, timeout).items()
    ]


#: A partition's offsets asked while its leader is being elected (a topic created a moment ago,
#: a broker restarting); librdkafka does not mark every one of them retriable.
_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def _high_watermarks(
    admin: AdminClient, partitions: list[TopicPartition], timeout: float
) -> dict[TopicPartition, int]:
    """The end offset of each partition, asking again for those whose leader is not known yet.

    One ListOffsets request for every partition: a watermark request per partition took
    seconds with ~830 agency topics, and the worker's watchdogs ask every 15 s. A topic the
    worker created a moment ago answers NOT_LEADER_FOR_PARTITION (or LEADER_NOT_AVAILABLE)
    until its leader is elected — the process benchmark failed on it right after a fresh
    worker started; such retriable errors are asked again until ``timeout``, others raise.
    """
    deadline = time.monotonic() + timeout
    ends: dict[TopicPartition, int] = {}
    asking = list(partitions)
    while True:
        futures = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in asking}, request_timeout=timeout
        )
        again: list[TopicPartition] = []
        for tp, future in futures.items():
            try:
                ends[tp] = future.result(timeout).offset
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                leaderless = isinstance(error, KafkaError) and (
                    error.code() in _NO_LEADER_YET or error.retriable()
                )
                if not leaderless or time.monotonic() >= deadline:
                    raise
                again.append(tp)
        if not again:
            return {tp: ends[tp] for tp in partitions}
        asking = again
        time.sleep(0.2)


def matching_topics(settings: Settings, pattern) -> list[str]:
    admin = AdminClient(settings.kafka_client_config())  # incl. SASL/SSL settings
    return sorted(t for t in admin.list_topics(timeout=10).topics if pattern.match(t))


def worker_lag(
    settings: Settings, group: str | None = None, *, probes: bool = False
) -> list[PartitionLag]:
    """Lag of one stream worker (by app id): its intake over every agency topic (and the probe
    topic with `probes`), and its faust group over its re-keyed facts topic (two groups:
    services/processor/intake.py)."""
    group = group or settings.worker_app_id
    from services.ops.topics import AGENCY_TOPIC_PATTERN, PROBE_TOPIC, facts_topic
    from services.processor.intake import intake_group

    intake_topics = matching_topics(settings, AGENCY_TOPIC_PATTERN) + (
        [PROBE_TOPIC] if probes else []
    )
    agency = group_lag(settings, intake_group(group), intake_topics)
    return agency + group_lag(settings, group, [facts_topic(group)])


def wait_caught_up(
    settings: Settings, *, timeout: float = 600.0, progress=None, group: str | None = None
) -> int:
    """Block until the worker has committed everything published so far; returns seconds.

    Lag must be zero twice in a row: faust commits every few seconds, and the re-keyed topic
    only fills up after the agency topics were read.
    """
    started = time.monotonic()
    zero_streak = 0
    while time.monotonic() - started < timeout:
        lags = worker_lag(settings, group)
        total = sum(p.lag for p in lags)
        if progress:
            progress(total)
        zero_streak = zero_streak + 1 if total == 0 and lags else 0
        if zero_streak >= 2:
            return int(time.monotonic() - started)
        time.sleep(1.0)
    raise TimeoutError(f"worker still behind after {timeout:.0f}s")
