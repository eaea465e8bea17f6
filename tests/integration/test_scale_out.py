"""Several worker processes on one app id: they share the facts partitions, the case state moves
with them, and the tables are exactly those of one uninterrupted worker.

Each group of workers below has its own app id and database and reads only what the test
publishes (`start_at_the_end`); every group reads the same published history, so their tables
can be compared row for row, and each is also compared to the oracle (tests/oracle.py, an
independent reading of the contract), so "equal" cannot mean "equally wrong".
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from services.agency.generator import GeneratorOptions, write_jsonl
from services.agency.publisher import Publisher
from tests.helpers import (
    WorkerProcess,
    new_tag,
    retag,
    start_at_the_end,
    table_snapshot,
    wait_for,
)
from tests.integration.test_worker import _caught_up
from tests.oracle import assert_tables_match, expected_tables

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: What a worker writes to its log when a watchdog restarts it (worker.py `_restart`).
RESTART_LINE = re.compile(r"; restarting\b")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[dict]:
    """A generated multi-province history with duplicates and shuffled delivery (each test
    tags its own copy)."""
    path = tmp_path_factory.mktemp("scale") / "history.jsonl"
    write_jsonl(
        GeneratorOptions(
            seed=23,
            start=date(2021, 1, 1),
            end=date(2024, 12, 31),
            events=6000,
            provinces=("01", "20", "34", "79"),
            duplicates=0.02,
            out_of_order=0.05,
        ),
        path,
    )
    return [json.loads(line) for line in path.read_text().splitlines()]


def _group(stack, name: str, tag: str, instances: int) -> list[WorkerProcess]:
    """`instances` worker processes of one app id (one database), not started yet."""
    return [_instance(stack, name, tag, i) for i in range(instances)]


#: Facts partitions of the groups here: a multiple of 2 and 3. With standby replicas faust's
#: assignor caps each member at ceil(partitions / members) and keeps what members had, so 4
#: partitions over 3 members was seen to give {2, 3} / {0, 1} / {} (docs/guarantees.md).
PARTITIONS = 6


def _instance(stack, name: str, tag: str, index: int) -> WorkerProcess:
    return WorkerProcess(
        stack,
        env={
            "CASESTREAM_TOPIC_PARTITIONS": str(PARTITIONS),
            "CASESTREAM_WORKER_APP_ID": f"{name}-{tag}",
            "CASESTREAM_CLICKHOUSE_DATABASE": f"{name}_{tag}",
            "CASESTREAM_WORKER_INSTANCE": f"i{index}",
            "CASESTREAM_WORKER_METRICS_ADDR": "off",
            "CASESTREAM_PROBE_INTERVAL_SECONDS": "0",
        },
        name=f"{name}-i{index}",
    )


def _publish_in_waves(stack, events: list[dict], waves: int, pause: float) -> threading.Thread:
    size = -(-len(events) // waves)

    def publish() -> None:
        with Publisher(None, stack) as operator:
            for start in range(0, len(events), size):
                operator.publish_many(events[start : start + size])
                operator.flush()
                time.sleep(pause)

    thread = threading.Thread(target=publish, name="publish-in-waves", daemon=True)
    thread.start()
    return thread


def _members(stack, group: str) -> int:
    """How many consumers the broker counts in the derive group (faust's assignor's members)."""
    admin = AdminClient(stack.kafka_client_config())
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return len(described.members)


def _rows(stack, database: str, tag: str) -> int:
    admin = stack.clickhouse_client(database="default")
    if not admin.command(f"EXISTS TABLE {database}.events"):
        return 0
    return admin.command(
        f"SELECT count() FROM {database}.events FINAL WHERE case_id LIKE {{p:String}}",
        parameters={"p": f"{tag}:%"},
    )


def _derived_partitions(worker: WorkerProcess) -> set[int]:
    """The facts partitions the worker logged deriving ("deriving <topic>[p]", worker.py)."""
    text = worker.log.read_text(errors="replace")
    return {int(p) for p in re.findall(r"deriving \S+-facts-by-case\[(\d+)\]", text)}


def _keep_logs(workers: list[WorkerProcess], tag: str) -> None:
    """Copy the workers' logs out of the session's home (removed at the end) for diagnosis."""
    kept = Path(tempfile.gettempdir()) / "casestream-scale-logs" / tag
    kept.mkdir(parents=True, exist_ok=True)
    for worker in workers:
        if worker.log.exists():
            shutil.copy(worker.log, kept / f"{worker.name}.log")


def _no_watchdog_restarts(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        text = worker.log.read_text(errors="replace")
        assert not RESTART_LINE.search(text), f"{worker.name} restarted:\n{worker.log_tail(30)}"
        assert not worker.restarts(), f"{worker.name} recorded restarts: {worker.restarts()}"


def test_two_and_three_workers_on_one_app_id_give_the_tables_of_one_worker(stack, generated):
    tag = new_tag()
    events = [retag(e, tag) for e in generated]
    groups = {
        "solo": _group(stack, "solo", tag, 1),
        "duo": _group(stack, "duo", tag, 2),
        "trio": _group(stack, "trio", tag, 3),
    }
    everyone = [w for workers in groups.values() for w in workers]
    unique = len({e["event_id"] for e in events})
    for name in groups:
        start_at_the_end(stack, f"{name}-{tag}")
    try:
        for worker in everyone:
            worker.start()
        for name, workers in groups.items():
            wait_for(
                lambda name=name, workers=workers: _members(stack, f"{name}-{tag}") == len(workers),
                timeout=180,
                what=f"{len(workers)} members in the {name} group",
            )
        _publish_in_waves(stack, events, waves=4, pause=1.0).join(timeout=600)
        for name, workers in groups.items():
            _caught_up(stack, workers[0], f"{name}-{tag}")
            wait_for(
                lambda name=name: _rows(stack, f"{name}_{tag}", tag) == unique,
                timeout=180,
                what=f"every event in the {name} group's tables",
            )
        # The work was shared: every instance derived some of the facts partitions.
        deriving = {w.name: _derived_partitions(w) for w in everyone}
        assert all(deriving[w.name] for w in groups["duo"] + groups["trio"]), deriving
        _no_watchdog_restarts(everyone)
    finally:
        for worker in everyone:
            worker.stop()
        _keep_logs(everyone, tag)

    snapshots = {
        name: table_snapshot(stack.clickhouse_client(database=f"{name}_{tag}"), tag)
        for name in groups
    }
    assert_tables_match(snapshots["solo"], expected_tables(events))
    assert snapshots["duo"] == snapshots["solo"]
    assert snapshots["trio"] == snapshots["solo"]


def test_killing_one_of_two_workers_mid_stream_then_adding_another_loses_and_doubles_nothing(
    stack, generated
):
    tag = new_tag()
    events = [retag(e, tag) for e in generated]
    unique = len({e["event_id"] for e in events})
    first, second = _instance(stack, "pair", tag, 0), _instance(stack, "pair", tag, 1)
    later = _instance(stack, "pair", tag, 2)
    solo = _instance(stack, "single", tag, 0)
    everyone = [first, second, later, solo]
    start_at_the_end(stack, f"pair-{tag}")
    start_at_the_end(stack, f"single-{tag}")
    try:
        for worker in (first, second, solo):
            worker.start()
        wait_for(lambda: _members(stack, f"pair-{tag}") == 2, timeout=180, what="two members")
        publishing = _publish_in_waves(stack, events, waves=12, pause=2.0)
        wait_for(lambda: _rows(stack, f"pair_{tag}", tag) > 0, timeout=180, what="first rows")
        for worker in (first, second):  # both deriving: the group's first rebalance is over
            wait_for(
                lambda worker=worker: "deriving " in worker.log.read_text(errors="replace"),
                timeout=180,
                what=f"{worker.name} deriving",
            )
        assert _rows(stack, f"pair_{tag}", tag) < unique, "too late to kill mid-stream"
        second.kill()  # SIGKILL: its partitions and their state move to the survivor
        # ... at once: the survivor sees its sibling on this host gone and removes its members
        # from both groups (predecessor.py) instead of waiting out their 10-s sessions.
        for half in ("derive", "intake"):
            wait_for(
                lambda half=half: (
                    f"instance i1 is gone: its {half} member removed"
                    in first.log.read_text(errors="replace")
                ),
                timeout=30,
                what=f"the dead sibling's {half} member removed by the survivor\n"
                + first.log_tail(30),
            )
        time.sleep(10)
        later.start()  # a new member takes partitions (and their state) back
        publishing.join(timeout=600)
        assert not publishing.is_alive(), "publishing did not finish"
        _caught_up(stack, first, f"pair-{tag}")
        _caught_up(stack, solo, f"single-{tag}")
        for database in (f"pair_{tag}", f"single_{tag}"):
            wait_for(
                lambda database=database: _rows(stack, database, tag) == unique,
                timeout=180,
                what=f"every event in {database}",
            )
        _no_watchdog_restarts([first, later, solo])
    finally:
        for worker in everyone:
            worker.stop()
        _keep_logs(everyone, tag)

    pair = table_snapshot(stack.clickhouse_client(database=f"pair_{tag}"), tag)
    single = table_snapshot(stack.clickhouse_client(database=f"single_{tag}"), tag)
    assert_tables_match(pair, expected_tables(events))
    assert pair == single
