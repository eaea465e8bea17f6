"""Faults survived: Kafka SIGKILLed, ClickHouse endpoint down, registry down. Nothing lost.

Every test runs on this module's own small stack (Kafka, registry, ClickHouse endpoint on free
ports, see `private`), because it stops or kills servers that the session's stack shares with
other tests. Each test publishes its own tagged events, injects its fault while a *faulty*
worker (own consumer group and database) publishes or processes, and then checks:

* no event lost, none counted twice: the analyst tables hold every event once and each case
  counts exactly its events;
* the tables equal a clean run: a second worker with its own group and database, started
  after the faulty one stopped, consumes the same topics without any fault, and its
  `table_snapshot` must be identical.

Killing the worker mid-batch is tested in tests/integration/test_worker.py
(`test_killing_the_worker_mid_stream_gives_the_same_tables_as_an_uninterrupted_run`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from services.agency.publisher import Publisher
from services.ops.consumer_lag import wait_caught_up
from services.ops.topics import ensure_agency_topic, ensure_topics
from services.serving.migrations import migrate
from services.settings import Settings
from services.stack import clickhouse, kafka, manager, registry
from services.stack.process import wait_until
from tests.conftest import stack_env
from tests.helpers import (
    WorkerProcess,
    case_sent_to_police,
    make_event,
    new_tag,
    table_snapshot,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTS = ["kafka", "registry", "clickhouse"]
EVENTS_PER_CASE = 4


@dataclass
class Private:
    settings: Settings
    env: dict[str, str]

    def worker(self, name: str, tag: str, *, may_restart: bool = False) -> WorkerProcess:
        return WorkerProcess(
            self.settings,
            env={
                **self.env,
                "CASESTREAM_WORKER_APP_ID": f"{name}-{tag}",
                "CASESTREAM_CLICKHOUSE_DATABASE": f"{name}_{tag}",
                "CASESTREAM_WORKER_METRICS_ADDR": "off",
            },
            may_restart=may_restart,
            name=name,
        )

    def ensure_up(self) -> None:
        """Every part running and ready (a test that failed half-way may have left one down)."""
        manager.up(self.settings, log=lambda m: None, parts=PARTS)


class Supervised:
    """A worker restarted whenever it exits, as systemd's ``Restart=always`` (3 s) would.

    The worker leaves like a crash whenever it cannot go on (that is its design: the input is
    replayed), so production runs it under a supervisor; `restarts` counts how often it was
    needed: exits seen here plus the worker's own in-place restarts (same pid, recorded by the
    worker). Tests whose fault must not stop the worker assert it stayed 0.
    """

    def __init__(self, private: Private, name: str, tag: str, *, may_restart: bool = False) -> None:
        self._start = lambda: private.worker(name, tag, may_restart=may_restart).start()
        self.current = self._start()
        self.processes = [self.current]
        self.logs = [self.current.log]
        self.exits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(3.0):
            if not self.current.alive():
                self.current.stop()  # closes its log
                self.current = self._start()
                self.processes.append(self.current)
                self.logs.append(self.current.log)
                self.exits += 1

    @property
    def restarts(self) -> int:
        """Exits restarted here plus in-place self-restarts (invisible to ``alive()``)."""
        return self.exits + sum(len(p.restarts()) for p in self.processes)

    def alive(self) -> bool:
        return self.current.alive()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs)

    def log_tail(self) -> str:
        return self.current.log_tail()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.current.stop()


@pytest.fixture(scope="module")
def private(tmp_path_factory) -> Iterator[Private]:
    home = tmp_path_factory.mktemp("faults-stack")
    env = {**stack_env(), "CASESTREAM_HOME": str(home)}
    with mock.patch.dict(os.environ, env):
        settings = Settings.from_env()
    try:
        manager.up(settings, log=lambda m: print(m, file=sys.stderr), parts=PARTS)
        migrate(settings, log=lambda m: None)
        ensure_topics(settings)
        for agency in ("20-INSP", "20-POLICE"):
            ensure_agency_topic(settings, agency)
        yield Private(settings, env)
    finally:
        manager.down(settings, log=lambda m: None, parts=PARTS)


def _cases(tag: str, n: int, month: int, first: int = 0) -> list[dict]:
    """n cases: opened, transferred to police, received, resolved (4 events each)."""
    events = []
    for i in range(first, first + n):
        case = f"{tag}:20-INSP/2015/{i:05d}"
        day = 1 + i % 25
        at = f"2015-{month:02d}-{day:02d}"
        events += [
            *case_sent_to_police(
                case,
                f"{at}T08:00:00+07:00",
                f"{at}T10:00:00+07:00",
                f"{at}T{10 + i % 12:02d}:30:00+07:00",
                prominent=i % 7 == 0,
            ),
            make_event(
                "case_resolved", "20-POLICE", case, f"{at}T23:00:00+07:00", {"outcome": "convicted"}
            ),
        ]
    return events


def _answers(settings: Settings) -> bool:
    try:
        return clickhouse.is_ready(settings)
    except Exception:  # noqa: BLE001 - refused connection = down
        return False


def _rows(settings: Settings, database: str, tag: str) -> int:
    client = settings.clickhouse_client(database="default")
    if not client.command(f"EXISTS TABLE {database}.events"):
        return 0
    return client.command(
        f"SELECT count() FROM {database}.events FINAL WHERE case_id LIKE {{p:String}}",
        parameters={"p": f"{tag}:%"},
    )


def _assert_exactly_once(
    settings: Settings, database: str, tag: str, events: list[dict]
) -> dict[str, list[tuple]]:
    """Every event once, every case counting exactly its events; returns the snapshot."""
    client = settings.clickhouse_client(database=database)
    snapshot = table_snapshot(client, tag)
    assert len(snapshot["events"]) == len(events), "events lost"
    stored = client.query(
        "SELECT toString(event_id) FROM events FINAL WHERE case_id LIKE {p:String}",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    assert {r[0] for r in stored} == {e["event_id"] for e in events}
    per_case = client.query(
        "SELECT event_count, count() FROM cases WHERE case_id LIKE {p:String} GROUP BY event_count",
        parameters={"p": f"{tag}:%"},
    ).result_rows
    assert per_case == [(EVENTS_PER_CASE, len(events) // EVENTS_PER_CASE)], "counted twice?"
    assert len(snapshot["transfers"]) == len(events) // EVENTS_PER_CASE
    return snapshot


def _compare_with_clean_run(
    private: Private, tag: str, events: list[dict], faulty: dict[str, list[tuple]]
) -> None:
    clean = private.worker("clean", tag).start()
    try:
        wait_for(
            lambda: (
                _rows(private.settings, f"clean_{tag}", tag) == len(events) or not clean.alive()
            ),
            timeout=240,
            what="the clean run",
        )
        assert clean.alive(), clean.log_tail()
        wait_caught_up(private.settings, group=f"clean-{tag}", timeout=120)
    finally:
        clean.stop()
    uninterrupted = _assert_exactly_once(private.settings, f"clean_{tag}", tag, events)
    assert faulty == uninterrupted


def _finish_faulty(
    private: Private, worker: Supervised, tag: str, events: list[dict], *, may_restart: bool
) -> dict[str, list[tuple]]:
    """Wait until the faulty worker processed everything; snapshot; stop it."""
    try:
        wait_for(
            lambda: (
                _rows(private.settings, f"faulty_{tag}", tag) == len(events)
                or (not may_restart and worker.restarts > 0)
            ),
            timeout=240,
            what="the faulty worker's rows",
        )
        if not may_restart:
            assert worker.restarts == 0, f"the worker stopped: {worker.log_tail()}"
        wait_caught_up(private.settings, group=f"faulty-{tag}", timeout=120)
        return _assert_exactly_once(private.settings, f"faulty_{tag}", tag, events)
    finally:
        worker.stop()


def _warm_up(private: Private, worker: Supervised, tag: str, events: list[dict]) -> None:
    """Publish the first events and wait until the worker has written them."""
    with Publisher(
        None, private.settings, outbox_path=private.settings.home / "outbox" / f"{tag}-warm.sqlite"
    ) as pub:
        pub.publish_many(events)
    wait_for(
        lambda: _rows(private.settings, f"faulty_{tag}", tag) == len(events) or not worker.alive(),
        timeout=240,
        what="the warm-up events",
    )
    assert worker.alive(), worker.log_tail()


@pytest.mark.timeout(600)
def test_registry_down_while_publishing_the_outbox_holds_and_delivers_later(private, tmp_path):
    private.ensure_up()
    tag = new_tag()
    warm, held = _cases(tag, 20, month=1), _cases(tag, 100, month=2, first=20)
    events = warm + held
    worker = Supervised(private, "faulty", tag)
    _warm_up(private, worker, tag, warm)

    reg = registry.process(private.settings)
    reg.stop()
    outbox = tmp_path / "agency-outbox.sqlite"
    # A fresh publisher (an agency process started during the outage) knows no schema id yet.
    publisher = Publisher(None, private.settings, outbox_path=outbox)
    accepted = publisher.publish_many(held)
    assert all(a.new for a in accepted)
    assert publisher.flush(5) == len(held), "sent although the registry is down?"
    assert publisher.close(1) == len(held)  # the agency process ends; the outbox keeps them

    registry.start(private.settings, log=lambda m: None)
    wait_until(lambda: registry.is_ready(private.settings), timeout=240, what="registry", proc=reg)
    with Publisher(None, private.settings, outbox_path=outbox) as resumed:
        assert resumed.flush(120) == 0  # the outbox sent everything after the outage
        assert resumed.outbox.counts() == {"pending": 0, "delivered": len(held)}

    faulty = _finish_faulty(private, worker, tag, events, may_restart=False)
    _compare_with_clean_run(private, tag, events, faulty)


@pytest.mark.timeout(600)
def test_clickhouse_endpoint_down_for_a_minute_loses_nothing(private):
    private.ensure_up()
    tag = new_tag()
    warm, during = _cases(tag, 10, month=3), _cases(tag, 150, month=4, first=10)
    events = warm + during
    worker = Supervised(private, "faulty", tag)
    _warm_up(private, worker, tag, warm)

    endpoint = clickhouse.process(private.settings)
    endpoint.stop()
    down_since = time.monotonic()
    assert not _answers(private.settings)
    with Publisher(
        None, private.settings, outbox_path=private.settings.home / "outbox" / f"{tag}.sqlite"
    ) as pub:
        pub.publish_many(during)
        assert pub.flush(60) == 0
    while time.monotonic() - down_since < 60:
        assert worker.alive() and worker.restarts == 0, worker.log_tail()
        time.sleep(2)
    clickhouse.start(private.settings, log=lambda m: None)
    wait_until(
        lambda: clickhouse.is_ready(private.settings),
        timeout=90,
        what="ClickHouse endpoint",
        proc=endpoint,
    )

    faulty = _finish_faulty(private, worker, tag, events, may_restart=False)
    assert "ClickHouse write failed" in worker.log_text()  # it did retry, with backoff
    _compare_with_clean_run(private, tag, events, faulty)


@pytest.mark.timeout(600)
def test_kafka_sigkilled_during_publishing_and_processing_loses_nothing(private, tmp_path):
    private.ensure_up()
    tag = new_tag()
    warm = _cases(tag, 10, month=5)
    during = _cases(tag, 240, month=6, first=10)
    events = warm + during
    worker = Supervised(private, "faulty", tag, may_restart=True)
    _warm_up(private, worker, tag, warm)

    outbox = tmp_path / "outbox.sqlite"
    publisher = Publisher(
        None, private.settings, outbox_path=outbox, producer_config={"message.timeout.ms": 20_000}
    )
    published = threading.Event()
    failures: list[BaseException] = []

    def publish_in_chunks() -> None:
        try:
            for start in range(0, len(during), 40):
                publisher.publish_many(during[start : start + 40])
                time.sleep(0.25)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            published.set()

    thread = threading.Thread(target=publish_in_chunks, daemon=True)
    thread.start()
    broker = kafka.process(private.settings)
    wait_for(
        lambda: publisher.outbox.counts()["delivered"] > 0 or published.is_set(),
        timeout=60,
        what="the first deliveries",
    )
    wait_for(
        lambda: _rows(private.settings, f"faulty_{tag}", tag) > len(warm),
        timeout=120,
        what="processing under way",
    )
    assert _rows(private.settings, f"faulty_{tag}", tag) < len(events), "too late to kill"
    broker.kill()  # SIGKILL while the agency publishes and the worker processes
    killed_at = publisher.outbox.counts()
    time.sleep(10)
    kafka.start(private.settings, log=lambda m: None)
    wait_until(lambda: kafka.is_ready(private.settings), timeout=120, what="kafka", proc=broker)
    thread.join(120)
    assert not failures, failures
    assert killed_at["pending"] + killed_at["delivered"] < len(during), "killed too late"
    assert publisher.close(180) == 0, "the outbox did not deliver everything after the restart"
    private.ensure_up()  # the registry keeps its schemas in Kafka: it must be serving again

    # The worker may have left while Kafka was gone (it leaves like a crash and is restarted);
    # either way the replay must give exactly the clean run's tables.
    faulty = _finish_faulty(private, worker, tag, events, may_restart=True)
    print(f"worker restarts during the Kafka outage: {worker.restarts}", file=sys.stderr)
    _compare_with_clean_run(private, tag, events, faulty)


def test_private_stack_is_not_the_session_stack(private):
    """Guard: the faults above must never touch the stack other tests share."""
    shared = os.environ.get("CASESTREAM_HOME")
    assert shared is None or Path(shared) != private.settings.home
