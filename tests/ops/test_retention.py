"""The record lasts: on a broker whose default retention deletes, the platform's topics keep
every event, and a record topic that would delete is failed by `health` and fixed by a command.

Runs on a Kafka of its own (it changes the broker's default retention to one second).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from services.ops.health import report
from services.ops.topics import DLQ_TOPIC, ensure_agency_topic, ensure_topics, finite_retention
from services.settings import Settings
from services.stack import manager
from tests.conftest import stack_env
from tests.helpers import REPO, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTROL = "plain.control"  # a topic created without the platform's configs
AGENCY_TOPIC = "agency.20-INSP.events"
ROGUE = "agency.99-ROGUE.events"  # a record topic created by someone else with the default


@pytest.fixture(scope="module")
def deleting_broker(tmp_path_factory) -> Iterator[tuple[Settings, dict[str, str]]]:
    home = tmp_path_factory.mktemp("retention-kafka")
    env = {**stack_env(), "CASESTREAM_HOME": str(home)}
    with mock.patch.dict(os.environ, env):
        settings = Settings.from_env()
    manager.up(settings, log=lambda m: None, parts=["kafka"])
    try:
        admin = AdminClient(settings.kafka_client_config())
        broker_default = ConfigResource(  # the default of broker 1, the only one
            ConfigResource.Type.BROKER,
            "1",
            incremental_configs=[
                ConfigEntry("log.retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for future in admin.incremental_alter_configs([broker_default]).values():
            future.result(30)
        yield settings, env
    finally:
        manager.down(settings, log=lambda m: None, parts=["kafka"])


def _watermarks(settings: Settings, topic: str) -> tuple[int, int]:
    consumer = Consumer(settings.kafka_client_config(**{"group.id": "retention-test"}))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        consumer.close()


def test_the_platforms_topics_keep_their_events_where_the_default_deletes(deleting_broker):
    settings, _ = deleting_broker
    admin = AdminClient(settings.kafka_client_config())
    admin.create_topics([NewTopic(CONTROL, num_partitions=1, replication_factor=1)])[
        CONTROL
    ].result(30)
    ensure_agency_topic(settings, "20-INSP")
    ensure_topics(settings)  # the dead-letter topic
    producer = Producer(settings.kafka_client_config())
    for topic in (CONTROL, AGENCY_TOPIC, DLQ_TOPIC):
        for i in range(20):
            producer.produce(topic, key=b"k", value=f"{topic} {i}".encode(), partition=0)
    assert producer.flush(30) == 0

    # The broker's default really deletes: the control topic loses its events...
    wait_for(
        lambda: _watermarks(settings, CONTROL)[0] == 20,
        timeout=120,
        what="retention to delete the control topic's events",
    )
    # ...while the topics holding the record, written at the same time, keep every one.
    for topic in (AGENCY_TOPIC, DLQ_TOPIC):
        assert _watermarks(settings, topic) == (0, 20), topic
    assert finite_retention(settings) == []


def test_a_record_topic_that_would_delete_fails_health_and_is_fixed(deleting_broker):
    settings, env = deleting_broker
    admin = AdminClient(settings.kafka_client_config())
    admin.create_topics([NewTopic(ROGUE, num_partitions=1, replication_factor=1)])[ROGUE].result(30)
    wait_for(lambda: ROGUE in {r.topic for r in finite_retention(settings)}, timeout=30)

    check = report(settings, only=["retention"])["checks"][0]
    assert check["status"] == "fail", check
    assert f"{ROGUE}: retention.ms=1000" in check["summary"]
    assert "casestream topics keep-forever" in check["summary"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "topics", *args],
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("retention")
    assert listed.returncode == 1 and f"DELETES  {ROGUE}" in listed.stdout, listed
    dry = cli("keep-forever", "--dry-run")
    assert dry.returncode == 0 and f"would change {ROGUE}" in dry.stdout, dry
    assert ROGUE in {r.topic for r in finite_retention(settings)}, "a dry run changes nothing"
    fixed = cli("keep-forever")
    assert fixed.returncode == 0 and "1 topics now kept forever" in fixed.stdout, fixed
    again = cli("keep-forever")
    assert again.returncode == 0 and "nothing to change" in again.stdout, again
    assert cli("retention").returncode == 0
    assert report(settings, only=["retention"])["checks"][0]["status"] == "ok"


def test_the_sdk_creates_its_agency_topic_with_the_records_retention(deleting_broker, tmp_path):
    from services.agency.publisher import Publisher
    from tests.helpers import make_event

    settings, _ = deleting_broker
    topic = "agency.20-POLICE.events"
    opened = {
        "origin": "inspection",
        "field": "land",
        "subject_kind": "official",
        "prominent": False,
    }
    # There is no registry here: the event waits in the outbox, but the topic is made first
    # (without the publisher, the first produce would auto-create it with the deleting default).
    publisher = Publisher("20-POLICE", settings, outbox_path=tmp_path / "outbox.sqlite")
    try:
        publisher.publish(
            make_event(
                "case_opened", "20-POLICE", "20-POLICE/2024/1", "2024-01-02T09:00:00+07:00", opened
            )
        )
    finally:
        publisher.close(0)
    assert topic in AdminClient(settings.kafka_client_config()).list_topics(timeout=30).topics
    assert topic not in {r.topic for r in finite_retention(settings)}
