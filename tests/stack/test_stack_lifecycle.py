"""`casestream stack up | down | status`: idempotent, leaves nothing behind, keeps its data."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer

from services.contracts.registry import make_client, register_agency_subject
from services.settings import Settings
from services.stack import manager
from services.stack.process import port_open
from tests.conftest import stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _live_processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@pytest.fixture
def own_stack(monkeypatch):
    home = Path(tempfile.mkdtemp(prefix="casestream-lifecycle-"))
    for key, value in {**stack_env(), "CASESTREAM_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    from services.stack.prefect import prefect_env

    for key, value in prefect_env(settings).items():
        monkeypatch.setenv(key, value)
    yield settings
    manager.down(settings, log=lambda m: None)
    shutil.rmtree(home, ignore_errors=True)


def test_up_twice_down_clean_and_data_survives_restart(own_stack: Settings):
    s = own_stack
    manager.up(s, log=lambda m: None)
    first = {p.name: p.pid for p in manager.status(s)}
    assert all(p.state == "running" for p in manager.status(s)), manager.status(s)

    manager.up(s, log=lambda m: None)  # harmless: nothing restarted
    assert {p.name: p.pid for p in manager.status(s)} == first

    # Leave data in every part.
    ch = s.clickhouse_client(database="default")
    ch.command("CREATE TABLE IF NOT EXISTS keep (x UInt32) ENGINE = MergeTree ORDER BY x")
    ch.insert("keep", [[7], [11]], column_names=["x"])
    schema_id = register_agency_subject(make_client(s.registry_url), "20-INSP")
    topic, marker = "lifecycle.check", uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "acks": "all"})
    producer.produce(topic, value=marker)
    assert producer.flush(30) == 0
    variable = httpx.post(
        f"{s.prefect_api_url}/variables/",
        json={"name": "lifecycle_check", "value": "kept"},
        timeout=10,
    )
    assert variable.status_code in (200, 201), variable.text

    manager.down(s, log=lambda m: None)
    assert _live_processes_mentioning(str(s.home)) == []
    ports = [
        s.kafka_host_port,
        s.registry_host_port,
        s.clickhouse_host_port,
        s.prefect_host_port,
        ("127.0.0.1", s.kafka_controller_port),
        ("127.0.0.1", s.registry_management_port),
    ]
    assert [hp for hp in ports if port_open(*hp)] == []
    assert not any(p.pid for p in manager.status(s))
    assert not list((s.home / "run").glob("*.pid"))

    manager.up(s, log=lambda m: None)
    ch = s.clickhouse_client(database="default")
    assert ch.query("SELECT x FROM keep ORDER BY x").result_rows == [(7,), (11,)]
    assert register_agency_subject(make_client(s.registry_url), "20-INSP") == schema_id
    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    message = None
    for _ in range(30):
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            break
    consumer.close()
    assert message is not None and message.value() == marker
    kept = httpx.get(f"{s.prefect_api_url}/variables/name/lifecycle_check", timeout=10)
    assert kept.status_code == 200 and kept.json()["value"] == "kept"


def test_status_reports_stopped_parts_without_starting_them(own_stack: Settings):
    parts = manager.status(own_stack)
    assert [p.name for p in parts] == ["kafka", "registry", "clickhouse", "prefect"]
    assert all(p.state == "stopped" for p in parts)
    assert not (own_stack.home / "run").exists() or not list((own_stack.home / "run").iterdir())
    assert os.path.isdir(own_stack.home)
