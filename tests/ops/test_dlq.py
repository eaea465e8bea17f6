"""`casestream dlq list | show | replay` against the real stack.

An event naming an agency that the shipped reference data does not know is dead-lettered; once
the agency is added (a fixed copy of schemas/ given to the worker and to the replay through
CASESTREAM_SCHEMAS_DIR) the replay re-publishes it exactly once, however often it is run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from services.contracts.codec import encode
from services.contracts.events import parse_event, topic_for_agency
from services.contracts.reference import load_reference
from services.contracts.registry import make_client, register_agency_subject
from services.ops import dlq
from services.ops.consumer_lag import group_lag
from services.ops.topics import ensure_agency_topic
from services.processor.intake import intake_group
from services.settings import Settings
from tests.helpers import REPO, WorkerProcess, make_event, new_tag, start_at_the_end, wait_for

pytestmark = pytest.mark.integration

NEW_AGENCY = "20-ANTICORR"  # not in the shipped reference data


@pytest.fixture
def fixed_schemas(tmp_path: Path) -> Path:
    """A copy of schemas/ whose reference data knows NEW_AGENCY (the operator's fix)."""
    target = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", target)
    with (target / "reference" / "agencies_extra.csv").open("a", encoding="utf-8") as f:
        f.write(f"{NEW_AGENCY},Lạng Sơn anti-corruption unit (test),,,\n")
    return target


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def cli_json(env: dict[str, str], *args: str) -> dict:
    proc = cli(env, *args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def copies_in_topic(settings: Settings, topic: str, partition: int, raw: bytes) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": new_tag(),
            "enable.auto.commit": False,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        found, position = 0, low
        while position < high:
            for msg in consumer.consume(500, timeout=2):
                if msg.error():
                    continue
                position = msg.offset() + 1
                found += msg.value() == raw
        return found
    finally:
        consumer.close()


def caught_up(settings: Settings, app_id: str, topic: str) -> bool:
    """The worker's intake (which reads agency topics) committed everything on `topic`."""
    lags = group_lag(settings, intake_group(app_id), [topic])
    return bool(lags) and all(p.lag == 0 for p in lags)


def test_a_dead_letter_is_replayed_exactly_once_after_the_reference_data_is_fixed(
    stack, fixed_schemas
):
    tag = new_tag()
    env = {
        "CASESTREAM_WORKER_APP_ID": f"dlq-{tag}",
        "CASESTREAM_CLICKHOUSE_DATABASE": f"dlq_{tag}",
        "CASESTREAM_WORKER_METRICS_ADDR": "off",
        "CASESTREAM_PROBE_INTERVAL_SECONDS": "0",
    }
    fixed_env = {**env, "CASESTREAM_SCHEMAS_DIR": str(fixed_schemas)}
    topic = topic_for_agency("20-INSP")

    # An agency's event that transfers a case to an agency the platform does not know yet.
    case = f"{tag}:20-INSP/2024/0001"
    event = parse_event(
        make_event(
            "case_transferred",
            "20-INSP",
            case,
            "2024-06-03T10:00:00+07:00",
            {"transfer_id": f"{case}/T1", "to_agency_id": NEW_AGENCY, "reason": "signs_of_crime"},
        ),
        ref=load_reference(fixed_schemas / "reference"),
    )
    raw = encode(event, register_agency_subject(make_client(stack.registry_url), "20-INSP"))
    ensure_agency_topic(stack, "20-INSP")
    start_at_the_end(stack, env["CASESTREAM_WORKER_APP_ID"])  # not the session's history
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topic, key=case.encode(), value=raw)
    assert producer.flush(30) == 0

    old = WorkerProcess(stack, env=env).start()
    try:

        def my_entries() -> list[dlq.DlqEntry]:
            return [e for e in dlq.read_entries(stack, limit=None) if e.value == raw]

        entry = wait_for(lambda: (m := my_entries()) and m[0], timeout=180, what="the dead letter")
        wait_for(
            lambda: caught_up(stack, env["CASESTREAM_WORKER_APP_ID"], topic),
            timeout=120,
            what="the old worker to commit past the bad event",
        )
    finally:
        old.stop()
    assert entry.reason == "invalid_event" and entry.field == "payload.to_agency_id"
    assert entry.source_topic == topic and entry.agency == "20-INSP"

    # list and show
    listed = cli_json(
        env, "dlq", "list", "--agency", "20-INSP", "--reason", "invalid_event", "--limit", "0"
    )
    row = next(r for r in listed["entries"] if r["id"] == entry.id)
    assert row["source_offset"] == entry.source_offset and NEW_AGENCY in row["detail"]
    assert row["replayed"] is None and listed["counts"]["by_reason"]["invalid_event"] >= 1
    shown = cli_json(env, "dlq", "show", entry.id)
    assert shown["event"]["payload"]["to_agency_id"] == NEW_AGENCY
    assert shown["now"]["valid"] is False
    text = cli(env, "dlq", "list", "--agency", "20-INSP")
    assert text.returncode == 0 and entry.id in text.stdout and "invalid_event" in text.stdout

    # Before the fix nothing is replayed.
    before = cli_json(env, "dlq", "replay", "--id", entry.id)
    assert before["tally"] == {"still_invalid": 1} and before["replayed"] == []

    # The fix: the worker and the replay get the amended reference data.
    new = WorkerProcess(stack, env=fixed_env).start()
    try:
        assert cli_json(fixed_env, "dlq", "show", entry.id)["now"]["valid"] is True
        dry = cli_json(fixed_env, "dlq", "replay", "--agency", "20-INSP", "--dry-run")
        assert entry.id in [d["id"] for d in dry["decisions"] if d["action"] == "replay"]
        assert copies_in_topic(stack, topic, entry.source_partition, raw) == 1

        first = cli_json(fixed_env, "dlq", "replay", "--agency", "20-INSP")
        mine = [r for r in first["replayed"] if r["id"] == entry.id]
        assert len(mine) == 1 and mine[0]["event_id"] == event["event_id"]
        assert mine[0]["replayed_partition"] == entry.source_partition

        client = stack.clickhouse_client(database=env["CASESTREAM_CLICKHOUSE_DATABASE"])
        wait_for(
            lambda: (
                client.command(
                    "SELECT count() FROM transfers WHERE case_id = {c:String} AND to_agency_id = "
                    "{a:String}",
                    parameters={"c": case, "a": NEW_AGENCY},
                )
                == 1
            ),
            timeout=180,
            what="the replayed transfer in ClickHouse",
        )

        second = cli_json(fixed_env, "dlq", "replay", "--agency", "20-INSP")
        assert second["replayed"] == []
        again = next(d for d in second["decisions"] if d["id"] == entry.id)
        assert again["action"] == "already_replayed"
        assert copies_in_topic(stack, topic, entry.source_partition, raw) == 2  # original + 1

        listed = cli_json(fixed_env, "dlq", "list", "--agency", "20-INSP", "--limit", "0")
        assert next(r for r in listed["entries"] if r["id"] == entry.id)["replayed"] == (
            "already_replayed"
        )
        assert (
            client.command(
                "SELECT count() FROM dlq_replays WHERE event_id = {e:String}",
                parameters={"e": event["event_id"]},
            )
            == 1
        )
        assert (
            client.command(
                "SELECT count() FROM events FINAL WHERE event_id = {e:UUID}",
                parameters={"e": event["event_id"]},
            )
            == 1
        )
        assert new.alive(), new.log_tail()
    finally:
        new.stop()
