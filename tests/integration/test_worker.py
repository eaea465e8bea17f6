"""The stream worker through the real stack: ordering, duplicates, dead letters, crashes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from services.agency.publisher import Publisher
from services.contracts.codec import encode
from services.contracts.events import parse_event, topic_for_agency
from services.contracts.reference import agencies_at
from services.contracts.registry import make_client, register_agency_subject
from services.ops.consumer_lag import matching_topics, wait_caught_up, worker_lag
from services.ops.topics import AGENCY_TOPIC_PATTERN, DLQ_TOPIC
from services.processor.priority import DERIVE_NICENESS
from tests.helpers import (
    WorkerProcess,
    case_sent_to_police,
    make_event,
    new_tag,
    start_at_the_end,
    table_snapshot,
    wait_for,
)
from tests.oracle import assert_tables_match, expected_tables

pytestmark = pytest.mark.integration


def _case_events(tag: str, n: int, start_day: int = 1) -> list[dict]:
    """n small cases: opened, transferred to police, received a varying number of hours later."""
    events = []
    for i in range(n):
        case = f"{tag}:20-INSP/2016/{i:05d}"
        day = start_day + i % 25
        events += case_sent_to_police(
            case,
            f"2016-04-{day:02d}T08:00:00+07:00",
            f"2016-04-{day:02d}T10:00:00+07:00",
            f"2016-05-{day:02d}T{i % 20:02d}:30:00+07:00",
        )
    return events


def _publish(settings, events: list[dict]) -> None:
    with Publisher(None, settings) as operator:
        operator.publish_many(events)


def _publish_in_waves(
    settings, events: list[dict], *, waves: int, pause: float
) -> threading.Thread:
    """Publish `events` in `waves` slices, `pause` seconds apart, on a thread (returned)."""
    size = -(-len(events) // waves)

    def publish() -> None:
        with Publisher(None, settings) as operator:
            for start in range(0, len(events), size):
                operator.publish_many(events[start : start + size])
                operator.flush()
                time.sleep(pause)

    thread = threading.Thread(target=publish, name="publish-in-waves", daemon=True)
    thread.start()
    return thread


def test_receipt_before_its_transfer_yields_one_correct_row(stack, worker, ch):
    tag = new_tag()
    case = f"{tag}:20-INSP/2016/R1"
    receipt = make_event(
        "transfer_received",
        "20-POLICE",
        case,
        "2016-02-03T09:00:00+07:00",
        {"transfer_id": f"{case}/T"},
    )
    transfer = make_event(
        "case_transferred",
        "20-INSP",
        case,
        "2016-02-01T09:00:00+07:00",
        {"transfer_id": f"{case}/T", "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
    )
    _publish(stack, [receipt])
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM events WHERE case_id = {c:String}", parameters={"c": case}
            )
            == 1
        ),
        timeout=120,
        what="the receipt",
    )
    _publish(stack, [transfer])
    rows = wait_for(
        lambda: (
            ch.query(
                "SELECT transfer_id, status, lag_hours, sent_at FROM transfers "
                "WHERE case_id = {c:String}",
                parameters={"c": case},
            ).result_rows
        ),
        timeout=60,
        what="the paired transfer",
    )
    assert len(rows) == 1
    assert rows[0][:3] == (f"{case}/T", "received", 48.0)


def test_the_same_events_sent_twice_give_the_same_tables(stack, worker, ch):
    tag = new_tag()
    events = _case_events(tag, 30)
    _publish(stack, events)
    wait_caught_up(stack, timeout=180)
    first = wait_for(
        lambda: (s := table_snapshot(ch, tag)) and len(s["events"]) == 90 and s,
        timeout=60,
        what="90 events",
    )

    # Send the identical Avro bytes again behind the SDK's back (a producer retry, a replay).
    registry = make_client(stack.registry_url)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for event in events:
        valid = parse_event(event)
        schema_id = register_agency_subject(registry, valid["agency_id"])
        producer.produce(
            topic_for_agency(valid["agency_id"]),
            key=valid["case_id"].encode(),
            value=encode(valid, schema_id),
        )
    assert producer.flush(30) == 0
    time.sleep(2)
    wait_caught_up(stack, timeout=180)
    assert table_snapshot(ch, tag) == first


def test_malformed_and_spoofed_messages_go_to_the_dlq_and_processing_continues(stack, worker, ch):
    tag = new_tag()
    registry = make_client(stack.registry_url)
    schema_id = register_agency_subject(registry, "20-INSP")
    spoofed = parse_event(
        make_event(
            "case_opened",
            "20-POLICE",
            f"{tag}:spoof",
            "2016-03-01T08:00:00+07:00",
            {"origin": "press", "field": "land", "subject_kind": "unknown", "prominent": False},
        )
    )
    garbage = b"\x00\x00\x00\x00" + tag.encode()  # truncated header + junk
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    topic = topic_for_agency("20-INSP")
    producer.produce(topic, key=b"junk", value=garbage)
    producer.produce(topic, key=b"spoof", value=encode(spoofed, schema_id))
    assert producer.flush(30) == 0
    good_case = f"{tag}:20-INSP/2016/G1"
    _publish(
        stack,
        [
            make_event(
                "case_opened",
                "20-INSP",
                good_case,
                "2016-03-02T08:00:00+07:00",
                {
                    "origin": "audit",
                    "field": "finance",
                    "subject_kind": "enterprise",
                    "prominent": False,
                },
            )
        ],
    )

    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM cases WHERE case_id = {c:String}", parameters={"c": good_case}
            )
            == 1
        ),
        timeout=120,
        what="the good event after the bad ones",
    )
    assert worker.alive(), worker.log_tail()

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": tag,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([DLQ_TOPIC])
    mine: dict[str, tuple[bytes, dict]] = {}
    deadline = time.monotonic() + 60
    while len(mine) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        headers = {k: v.decode() for k, v in msg.headers() or []}
        value = msg.value() or b""  # other tests dead-letter empty messages too
        if value == garbage or tag.encode() in value:
            mine[headers["reason"]] = (value, headers)
    consumer.close()
    assert set(mine) == {"bad_wire_format", "spoofed_agency"}
    raw, headers = mine["bad_wire_format"]
    assert raw == garbage and headers["source_topic"] == topic
    assert int(headers["source_offset"]) >= 0 and headers["source_partition"].isdigit()
    assert "20-POLICE" in mine["spoofed_agency"][1]["detail"]


def test_a_new_agency_topic_is_read_without_restarting_the_worker(stack, worker, ch):
    existing = set(matching_topics(stack, AGENCY_TOPIC_PATTERN))
    agency = next(
        a
        for a in agencies_at(date(2016, 4, 1))
        if a.endswith("-INSP") and topic_for_agency(a) not in existing
    )
    case = f"{new_tag()}:{agency}/2016/N1"
    log_before = worker.log.stat().st_size
    _publish(
        stack,
        [
            make_event(
                "case_opened",
                agency,
                case,
                "2016-04-01T08:00:00+07:00",
                {
                    "origin": "inspection",
                    "field": "land",
                    "subject_kind": "official",
                    "prominent": False,
                },
            )
        ],
    )
    wait_for(
        lambda: (
            ch.command(
                "SELECT count() FROM cases WHERE case_id = {c:String}", parameters={"c": case}
            )
            == 1
        ),
        timeout=90,
        what=f"the first case of the new agency {agency}",
    )
    with worker.log.open("rb") as f:
        f.seek(log_before)
        since = f.read().decode(errors="replace")
    assert worker.alive() and "restarting" not in since, since[-3000:]


def _caught_up(stack, worker: WorkerProcess, app_id: str, timeout: float = 300) -> None:
    """wait_caught_up, and on failure say which partitions are behind and what the worker did."""
    try:
        wait_caught_up(stack, group=app_id, timeout=timeout)
    except TimeoutError:
        behind = [
            (p.topic, p.partition, p.committed, p.lag) for p in worker_lag(stack, app_id) if p.lag
        ]
        pytest.fail(f"{app_id} behind after {timeout:.0f}s: {behind}\n{worker.log_tail(60)}")


@pytest.mark.slow
def test_killing_the_worker_mid_stream_gives_the_same_tables_as_an_uninterrupted_run(stack):
    tag = new_tag()
    events = _case_events(tag, 1500)

    def isolated_worker(name: str) -> WorkerProcess:
        return WorkerProcess(
            stack,
            env={
                "CASESTREAM_WORKER_APP_ID": f"{name}-{tag}",
                "CASESTREAM_CLICKHOUSE_DATABASE": f"{name}_{tag}",
            },
        )

    workers: list[WorkerProcess] = []  # stopped even when a wait below fails
    admin = stack.clickhouse_client(database="default")

    def crashy_rows() -> int:
        if not admin.command(f"EXISTS TABLE crashy_{tag}.events"):
            return 0
        return admin.command(
            f"SELECT count() FROM crashy_{tag}.events WHERE case_id LIKE {{p:String}}",
            parameters={"p": f"{tag}:%"},
        )

    # Both runs read only what this test publishes, not the whole session's history before it.
    start_at_the_end(stack, f"crashy-{tag}")
    start_at_the_end(stack, f"clean-{tag}")
    try:
        crashy = isolated_worker("crashy").start()
        workers.append(crashy)
        # A batch of envelopes derives thousands of facts at once: published in one go, the
        # whole history could be written before the kill. Published in waves, the kill lands
        # while facts are still arriving.
        publishing = _publish_in_waves(stack, events, waves=10, pause=2.0)
        wait_for(lambda: crashy_rows() > 0, timeout=180, what="the first rows")
        assert crashy_rows() < len(events), "too late to crash mid-stream"
        crashy.kill()  # SIGKILL mid-stream
        publishing.join(timeout=300)
        assert not publishing.is_alive(), "publishing the waves did not finish"
        crashy = isolated_worker("crashy").start()
        workers.append(crashy)
        _caught_up(stack, crashy, f"crashy-{tag}")

        clean = isolated_worker("clean").start()
        workers.append(clean)
        time.sleep(5)
        _caught_up(stack, clean, f"clean-{tag}")
    finally:
        for worker in workers:
            worker.stop()

    after_crash = table_snapshot(stack.clickhouse_client(database=f"crashy_{tag}"), tag)
    uninterrupted = table_snapshot(stack.clickhouse_client(database=f"clean_{tag}"), tag)
    assert len(uninterrupted["events"]) == len(events)
    assert len(uninterrupted["transfers"]) == 1500
    # Equal is not enough (both runs could be wrong alike): the crashed run's tables must also be
    # what the contract implies for the published events, every column.
    assert_tables_match(after_crash, expected_tables(events))
    assert after_crash == uninterrupted


def _intake_pid(worker_pid: int) -> int | None:
    """The worker's intake process: its child started by multiprocessing (not the tracker)."""
    try:
        children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"spawn_main" in arg for arg in argv):
            return int(child)
    return None


def _niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # exited, not yet reaped by whoever adopted it


def test_the_intake_process_ends_with_the_worker_and_its_end_restarts_the_worker(stack):
    tag = new_tag()
    app_id = f"intake-{tag}"
    start_at_the_end(stack, app_id)
    worker = WorkerProcess(
        stack,
        env={
            "CASESTREAM_WORKER_APP_ID": app_id,
            "CASESTREAM_CLICKHOUSE_DATABASE": f"intake_{tag}",
        },
        may_restart=True,
    ).start()
    second = None
    try:
        first = wait_for(lambda: _intake_pid(worker.proc.pid), timeout=60, what="the intake")
        time.sleep(2)  # the intake process is up (its signal handling set)
        # Derive yields the CPU to its intake (priority.py).
        started = _niceness(first)
        assert _niceness(worker.proc.pid) == started + DERIVE_NICENESS
        # A stop signalled to the process group reaches the intake too: it leaves the stop to
        # the worker, whose end ends it (an intake ending first looked like a crash).
        os.kill(first, signal.SIGTERM)
        time.sleep(3)
        assert not _gone(first) and not worker.restarts(), worker.restarts()
        os.kill(first, signal.SIGKILL)  # a crash of the intake alone
        restarted = wait_for(worker.restarts, timeout=60, what="the worker's restart")
        assert "the intake process exited" in restarted[0]["reason"], restarted
        assert worker.alive()

        events = _case_events(tag, 20)  # read by the new intake, derived, written
        _publish(stack, events)
        rows = stack.clickhouse_client(database=f"intake_{tag}")
        wait_for(
            lambda: len(table_snapshot(rows, tag)["events"]) == len(events),
            timeout=180,
            what="every event written after the intake's restart",
        )
        second = _intake_pid(worker.proc.pid)
        assert second is not None and second != first
        # After the in-place restart (an exec, which keeps derive's lowered priority) the new
        # intake returns to the worker's first niceness where allowed (as root; unprivileged, a
        # process cannot lower its niceness, and both stay at derive's).
        assert _niceness(worker.proc.pid) == started + DERIVE_NICENESS
        expected = started if os.geteuid() == 0 else started + DERIVE_NICENESS
        assert _niceness(second) == expected
        assert len(worker.restarts()) == 1, worker.restarts()
    finally:
        worker.kill()  # SIGKILL: no chance to end its intake itself
    assert second is not None
    wait_for(lambda: _gone(second), timeout=10, what="the intake's end with the worker")


def _member_ids(stack, group: str) -> set[str]:
    """The member ids the broker lists in the consumer group now."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(stack.kafka_client_config())
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return {member.member_id for member in described.members}


def _written(stack, rows, tag: str, events: list[dict], total: int, what: str) -> None:
    """Publish ``events`` and wait until ``total`` events of the test are in `events`."""
    _publish(stack, events)
    wait_for(lambda: len(table_snapshot(rows, tag)["events"]) == total, timeout=180, what=what)


def _counted_once(rows, tag: str) -> int:
    """The events the test's cases' states counted (each distinct event once)."""
    return rows.query(
        "SELECT sum(event_count) FROM cases WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows[0][0]


@dataclass
class _Run:
    """A test's own app id: its tag, the env naming it, its two groups, its workers."""

    stack: Any
    tag: str
    env: dict[str, str]
    groups: tuple[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.stack, env=self.env).start()
        self.workers.append(worker)
        return worker


@contextmanager
def _one_worker_wrote_ten(stack, prefix: str) -> Iterator[tuple[_Run, Any, list[dict]]]:
    """A new worker of its own app id, a member of both groups, which wrote the first 10 of
    ``events``; yields (run, rows client, events) and stops every worker of the run after."""
    from services.processor.intake import intake_group

    tag = new_tag()
    app_id = f"{prefix}-{tag}"
    env = {"CASESTREAM_WORKER_APP_ID": app_id, "CASESTREAM_CLICKHOUSE_DATABASE": f"{prefix}_{tag}"}
    start_at_the_end(stack, app_id)
    run = _Run(stack, tag, env, (app_id, intake_group(app_id)))
    try:
        run.start()
        for group in run.groups:
            wait_for(lambda g=group: len(_member_ids(stack, g)) == 1, timeout=120, what=group)
        rows = stack.clickhouse_client(database=f"{prefix}_{tag}")  # migrated before joining
        events = _case_events(tag, 20)
        _written(stack, rows, tag, events[:10], 10, "the first events")
        yield run, rows, events
    finally:
        for worker in run.workers:
            worker.stop()


def test_a_stopped_worker_leaves_both_groups_so_the_next_one_reads_at_once(stack):
    """A stop (SIGTERM) tells both consumer groups the worker is leaving: the broker drops it
    at once instead of after its 10-s session, which a restarted worker used to wait out before
    it read anything. Nothing is lost or doubled across the stop."""
    with _one_worker_wrote_ten(stack, "leave") as (run, rows, events):
        first = run.workers[0]
        stopped = time.monotonic()
        first.stop()  # SIGTERM
        for group in run.groups:
            # The session is 10 s: a member that only vanished is still listed until then.
            wait_for(lambda g=group: not _member_ids(stack, g), timeout=6, what=group)
        assert time.monotonic() - stopped < 9
        assert "did not leave" not in first.log.read_text(errors="replace"), first.log_tail()

        second = run.start()
        _written(stack, rows, run.tag, events[10:], len(events), "the events after the stop")
        assert _counted_once(rows, run.tag) == len(events)
        first.assert_no_restarts()
        second.assert_no_restarts()


def test_a_killed_worker_started_again_removes_the_dead_members_before_it_joins(stack):
    """SIGKILL: no goodbye. The process started on the same state directory removes the dead
    one's members (noted there) before it joins, so no group lists a dead member beside a new
    one, which lasted until the dead member's 10-s session ran out. Nothing lost or doubled."""
    with _one_worker_wrote_ten(stack, "ghost") as (run, rows, events):
        dead = {group: _member_ids(stack, group) for group in run.groups}
        run.workers[0].kill()  # SIGKILL
        second = run.start()
        side_by_side: list[tuple[str, set[str]]] = []

        def settled() -> bool:
            done = True
            for group in run.groups:
                ids = _member_ids(stack, group)
                if ids & dead[group] and ids - dead[group]:
                    side_by_side.append((group, ids))
                done = done and bool(ids) and not ids & dead[group]
            return done

        wait_for(settled, timeout=120, interval=0.2, what="the new worker alone in both groups")
        assert not side_by_side, side_by_side
        log = second.log.read_text(errors="replace")
        assert "the previous process's derive member: removed" in log, second.log_tail()
        assert "the previous process's intake member: removed" in log, second.log_tail()

        _written(stack, rows, run.tag, events[10:], len(events), "the events after the crash")
        assert _counted_once(rows, run.tag) == len(events)
        second.assert_no_restarts()
