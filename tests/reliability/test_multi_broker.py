"""Multi-broker durability: 3 KRaft nodes, replication factor 3, min.insync.replicas 2.

A few thousand messages are produced with an idempotent acks=all producer while one broker
(the leader of partition 0, also a controller voter) is SIGKILLed in the middle of the load.
Every message the producer saw acknowledged must be readable afterwards from the two surviving
brokers, none twice; and the killed broker rejoins every partition's ISR after a restart.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from services.settings import Settings
from services.stack.kafka_cluster import KafkaCluster
from tests.helpers import new_tag, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

TOPIC = "reliability.load"
PARTITIONS = 6
MESSAGES = 4000
KILL_AT = 1500

_QUIET = logging.getLogger("tests.reliability.rdkafka.cluster")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@pytest.fixture
def cluster(tmp_path):
    with KafkaCluster(Settings.from_env(), tmp_path / "cluster", size=3) as running:
        yield running.start()


def _partitions(admin: AdminClient):
    return admin.list_topics(TOPIC, timeout=15).topics[TOPIC].partitions


def _consume_all(config: dict, tag: str) -> list[bytes]:
    """Every message of the topic, read from offset 0 up to each partition's high watermark."""
    consumer = Consumer({**config, "group.id": tag, "enable.auto.commit": False})
    try:
        highs = {
            p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)[1]
            for p in range(PARTITIONS)
        }
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS) if highs[p]])
        keys: list[bytes] = []
        done = {p for p, high in highs.items() if high == 0}
        deadline = time.monotonic() + 90
        while len(done) < PARTITIONS and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            keys.append(msg.key())
            if msg.offset() + 1 >= highs[msg.partition()]:
                done.add(msg.partition())
        assert len(done) == PARTITIONS, f"could not read to the end: {highs}"
        return keys
    finally:
        consumer.close()


def test_killing_one_broker_during_a_load_loses_no_acknowledged_message(cluster):
    config = cluster.client_config(logger=_QUIET)
    admin = AdminClient(config)
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config={"min.insync.replicas": "2"})])[
        TOPIC
    ].result()
    wait_for(
        lambda: (
            all(p.leader >= 0 and len(p.isrs) == 3 for p in _partitions(admin).values())
            if TOPIC in admin.list_topics(timeout=10).topics
            else False
        ),
        timeout=60,
        what="all partitions with 3 in-sync replicas",
    )

    def topic_config() -> dict | None:
        # The broker asked may not know the new topic yet (metadata spreads between brokers).
        (described,) = admin.describe_configs([ConfigResource("topic", TOPIC)]).values()
        try:
            return described.result()
        except KafkaException:
            return None

    config_entries = wait_for(topic_config, timeout=30, what="the topic's config on every broker")
    assert config_entries["min.insync.replicas"].value == "2"
    victim = _partitions(admin)[0].leader

    acked: set[bytes] = set()
    failed: list[tuple[bytes, str]] = []

    def on_delivery(err, msg) -> None:
        if err is None:
            acked.add(msg.key())
        else:
            failed.append((msg.key(), err.name()))

    producer = Producer(
        {
            **config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
        }
    )
    acked_at_kill = None
    for i in range(MESSAGES):
        producer.produce(TOPIC, key=f"m{i:05d}".encode(), value=b"x" * 200, on_delivery=on_delivery)
        producer.poll(0)
        if i == KILL_AT:
            producer.flush(30)  # a known part of the load is acknowledged before the crash
            acked_at_kill = len(acked)
            cluster.kill(victim)  # SIGKILL: no controlled shutdown, no flush of its page cache
        time.sleep(0.002)  # a load spread over seconds, so the failover happens under it
    assert producer.flush(150) == 0, "messages still in flight after the timeout"

    assert acked_at_kill and acked_at_kill < MESSAGES
    assert not failed, f"writes refused with one broker down: {failed[:5]}"
    assert len(acked) == MESSAGES
    assert not cluster.alive(victim)

    after = _partitions(admin)
    assert all(p.leader != victim and p.leader >= 0 for p in after.values())

    keys = _consume_all(config, new_tag())
    assert acked <= set(keys), f"{len(acked - set(keys))} acknowledged messages lost"
    assert len(keys) == len(set(keys)), "the idempotent producer wrote duplicates"

    # The killed broker comes back, catches up and rejoins every ISR.
    cluster.start_node(victim)
    wait_for(
        lambda: all(len(p.isrs) == 3 for p in _partitions(admin).values()),
        timeout=90,
        what="the restarted broker back in every ISR",
    )
    assert set(_consume_all(config, new_tag())) == set(keys)
