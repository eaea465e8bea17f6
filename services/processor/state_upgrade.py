"""Carry a worker's case state from the old changelog layout to the co-partitioned one, once.

Workers before envelopes kept the case state in faust's ``case-facts`` table, whose changelog
was keyed by the JSON-encoded case id and partitioned by faust (so not with the facts). The
worker now keeps it in ``case-state`` (keyed by the raw case id, in the partition of the case's
facts). A worker started on an app id that has the old changelog and not the new one would
otherwise begin with no state, and derive the next fact of every old case from that fact alone:
wrong figures. So before faust starts, the old changelog is read to its end (last record per
case wins, as compaction would keep), and each case's facts are written to the new changelog's
partition for the case; faust's recovery then restores them like any other state.

Idempotent: when Kafka has acknowledged every record, an empty topic
``<app_id>-state-upgraded`` records that it is done; until then every start does it again
(an interrupted upgrade writes its records again; the last one per case wins).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from services.processor import envelope
from services.processor.batch import decode_state, encode_state
from services.settings import Settings

OLD_TABLE = "case-facts"


def changelog_name(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def upgrade_state(
    settings: Settings, app_id: str, new_table: str, partitions: int, log: Callable[[str], None]
) -> int:
    """Copy the old changelog's case states into the new one if needed; the number copied."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    old, new = changelog_name(app_id, OLD_TABLE), changelog_name(app_id, new_table)
    admin = AdminClient(settings.kafka_client_config())
    topics = admin.list_topics(timeout=30).topics
    if old not in topics:
        return 0
    done = f"{app_id}-state-upgraded"
    if done in topics:
        return 0
    if new not in topics:
        replicas = (
            settings.topic_replication_factor if settings.topic_replication_factor > 1 else -1
        )
        future = admin.create_topics(
            [NewTopic(new, partitions, replicas, config={"cleanup.policy": "compact"})]
        )[new]
        future.result()
    log(f"carrying the case state of {old} over to {new} (a one-time upgrade)")
    consumer = Consumer(
        settings.kafka_client_config(
            **{"group.id": f"{app_id}-state-upgrade", "enable.auto.commit": False}
        )
    )
    states: dict[str, bytes] = {}
    try:
        parts = topics[old].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(old, p), timeout=30)[1] for p in parts
        }
        consumer.assign([TopicPartition(old, p, 0) for p in parts])
        left = {p for p, end in ends.items() if end > 0}
        while left:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error():
                    continue
                key, value = json.loads(msg.key()), msg.value()
                if value is None:
                    states.pop(key, None)
                else:
                    states[key] = value
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
    finally:
        consumer.close()
    producer = Producer(settings.kafka_client_config(**{"enable.idempotence": True}))
    for case_id, value in states.items():
        state = encode_state(decode_state(value))
        partition = envelope.partition_for(case_id, partitions)
        while True:
            try:
                producer.produce(new, state, case_id.encode(), partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120) > 0:
        raise RuntimeError(f"the upgraded case state was not acknowledged by Kafka ({new})")
    admin.create_topics([NewTopic(done, 1, -1)])[done].result()
    log(f"carried {len(states):,} case states over to {new}")
    return len(states)
