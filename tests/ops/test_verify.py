"""`casestream verify` on the real stack: an attacker with broker access rewrites, deletes and
inserts events of a chained history, and verify names each one with topic, partition, offset."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from services.contracts.chain import ChainHead, chain_event, link_hash
from services.contracts.codec import AvroCodec
from services.contracts.events import kafka_key, parse_event, topic_for_agency
from services.contracts.registry import SchemaCache, make_client
from services.settings import Settings
from tests.helpers import REPO, new_tag

pytestmark = pytest.mark.integration

PROVINCES = ("04", "11", "12", "14", "22", "38", "40", "42", "01", "20")
TYPES = ("MARKET", "TAX", "CUSTOMS", "IAC", "FOREST")


def fresh_agencies(settings: Settings, count: int) -> list[str]:
    """Agencies whose topic does not exist yet: no other test's events are on them."""
    from confluent_kafka.admin import AdminClient

    existing = AdminClient(settings.kafka_client_config()).list_topics(timeout=10).topics
    candidates = [f"{p}-{t}" for p in PROVINCES for t in TYPES]
    random.shuffle(candidates)
    found = [a for a in candidates if topic_for_agency(a) not in existing][:count]
    assert len(found) == count, "no fresh agency left"
    return found


def history(agency: str, tag: str, count: int) -> list[dict]:
    """One case per event, so that the events spread over the topic's partitions."""
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "assets_recovered",
            "case_id": f"{tag}:{agency}/2024/{n:04d}",
            "agency_id": agency,
            "occurred_at": f"2024-06-{1 + n:02d}T10:00:00+07:00",
            "sequence": n + 1,
            "payload": {"identified_vnd": 1_000_000 * (n + 1), "recovered_vnd": 1000 * n},
        }
        for n in range(count)
    ]


def publish(settings: Settings, agency: str, events: list[dict]) -> None:
    from services.agency.publisher import Publisher

    with Publisher(agency, settings) as pub:
        pub.publish_many(events)
        assert pub.flush(60) == 0


def read_back(settings: Settings, agency: str) -> dict[int, tuple[int, int, dict]]:
    """chain_seq -> (partition, offset, decoded event), as an attacker reading the topic sees it."""
    from services.ops.verify import read_topic

    codec = AvroCodec()
    cache = SchemaCache(make_client(settings.registry_url, timeout=10))
    records, _ = read_topic(
        settings, topic_for_agency(agency), lambda raw: codec.decode(raw, cache)
    )
    return {r.event["chain_seq"]: (r.partition, r.offset, r.event) for r in records}


def produce(settings: Settings, topic: str, events: list[dict]) -> list[tuple[int, int]]:
    """The attacker's producer: well-formed messages with the registered schema id."""
    from confluent_kafka import Producer

    from services.contracts.registry import register_agency_subject

    schema_id = register_agency_subject(make_client(settings.registry_url), topic.split(".")[1])
    codec = AvroCodec()
    producer = Producer(settings.kafka_client_config())
    placed: list[tuple[int, int]] = []

    def delivered(err, msg) -> None:
        assert err is None, err
        placed.append((msg.partition(), msg.offset()))

    for event in events:
        producer.produce(
            topic, key=kafka_key(event), value=codec.encode(event, schema_id), on_delivery=delivered
        )
        producer.flush(30)
    assert len(placed) == len(events)
    return placed


def delete_first_record(settings: Settings, topic: str, partition: int) -> None:
    """What retention or `kafka-delete-records` does: the partition's log starts at offset 1."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    futures = admin.delete_records([TopicPartition(topic, partition, 1)])
    for future in futures.values():
        future.result(30)


def run_cli(settings: Settings, *args: str) -> tuple[int, dict]:
    env = {
        **os.environ,
        "CASESTREAM_HOME": str(settings.home),
        "CASESTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CASESTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "verify", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def own_database(stack: Settings, tmp_path_factory) -> Iterator[Settings]:
    """The session's registry and ClickHouse, with a Kafka broker and a database of its own.

    The attack rewrites, inserts and deletes records: on the session's broker it would change
    what every later test reads from the record (a rebuild replaying the topics no longer
    reproduced the live tables), and a tampered run stored in the session's database would
    fail its health.
    """
    from unittest import mock

    from services.serving.migrations import migrate
    from services.stack import manager
    from tests.conftest import stack_env

    home = tmp_path_factory.mktemp("verify-kafka")
    with mock.patch.dict(os.environ, {**stack_env(), "CASESTREAM_HOME": str(home)}):
        broker = Settings.from_env()
    manager.up(broker, log=lambda m: None, parts=["kafka"])
    try:
        settings = dataclasses.replace(
            stack,
            home=home,
            kafka_bootstrap=broker.kafka_bootstrap,
            clickhouse_database=f"verify_{new_tag()}",
        )
        migrate(settings, log=lambda m: None)
        yield settings
    finally:
        manager.down(broker, log=lambda m: None, parts=["kafka"])


def test_verify_finds_a_rewritten_a_deleted_and_an_inserted_event(own_database: Settings):
    from services.ops.health import report

    settings = own_database
    tag = new_tag()
    victim, clean = fresh_agencies(settings, 2)
    topic = topic_for_agency(victim)
    publish(settings, victim, history(victim, tag, 16))
    publish(settings, clean, history(clean, tag, 5))

    code, before = run_cli(settings, "--agency", victim)
    assert code == 0 and before["intact"], before
    assert before["agencies"][0]["head_seq"] == 16 and before["agencies"][0]["messages"] == 16

    chain = read_back(settings, victim)
    assert sorted(chain) == list(range(1, 17))
    # Deleted: the first event of a partition that is not the chain's first nor last (Kafka
    # can only delete a partition's beginning: delete-records, or retention).
    deleted = min(
        seq
        for seq, (p, offset, _) in chain.items()
        if offset == 0 and 1 < seq < 15 and p != chain[1][0]
    )
    deleted_partition = chain[deleted][0]
    rewritten = next(s for s in range(2, 16) if abs(s - deleted) > 1)
    forged_at = next(s for s in range(2, 16) if abs(s - deleted) > 1 and abs(s - rewritten) > 1)

    # Rewritten: a copy of an event with the amount changed, its hash recomputed.
    copy_of = copy.deepcopy(chain[rewritten][2])
    copy_of["payload"]["recovered_vnd"] += 1
    copy_of["chain_hash"] = link_hash(copy_of["chain_prev"], copy_of, rewritten)
    # Inserted: a forged event claiming a position of the chain, correctly linked to its
    # predecessor.
    forged = parse_event(history(victim, tag + "x", 1)[0])
    link, _ = chain_event(forged, ChainHead(forged_at - 1, chain[forged_at - 1][2]["chain_hash"]))
    forged.update(link)
    (copy_place, forged_place) = produce(settings, topic, [copy_of, forged])
    delete_first_record(settings, topic, deleted_partition)

    code, after = run_cli(settings, "--agency", victim)
    assert code == 1 and not after["intact"]
    found = {(f["kind"], f["partition"], f["offset"]) for f in after["agencies"][0]["findings"]}
    successor = chain[deleted + 1]
    assert found == {
        ("altered", *copy_place),
        ("inserted", *forged_place),
        ("missing", successor[0], successor[1]),
        ("deleted_history", deleted_partition, 1),
    }, after
    by_kind = {f["kind"]: f for f in after["agencies"][0]["findings"]}
    assert by_kind["altered"]["event_id"] == copy_of["event_id"]
    assert by_kind["inserted"]["event_id"] == forged["event_id"]
    assert by_kind["missing"]["chain_seq"] == deleted
    assert all(f["topic"] == topic for f in after["agencies"][0]["findings"])

    code, untouched = run_cli(settings, "--agency", clean)
    assert code == 0 and untouched["intact"] and untouched["agencies"][0]["head_seq"] == 5

    # health shows the last verification: the full run is what counts, and it found tampering.
    from services.ops.verify import store, verify

    full = verify(settings, agency=victim)
    full.scope = "all"  # stands for a full run (the session's other topics are not ours)
    store(settings, full)
    check = next(c for c in report(settings, only=["verification"])["checks"])
    assert check["status"] == "fail" and victim in check["summary"], check


def test_verify_reports_an_unknown_agency_in_one_line(stack: Settings):
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "verify", "--agency", "99-NOPE", "--no-store"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --agency 99-NOPE: no topic agency.99-NOPE.events (nothing was ever published)"
    ]
