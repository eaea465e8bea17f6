"""Test helpers shared by the integration tests (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.processor import restarts
from services.settings import Settings

REPO = Path(__file__).resolve().parents[1]

#: (test id, what, seconds taken, timeout) of waits that took over half their timeout.
NEAR_TIMEOUTS: list[tuple[str, str, float, float]] = []


class WorkerProcess:
    """`casestream worker` as a subprocess: started, stopped, killed like in production.

    The worker's watchdogs restart it in place (same pid), so being alive says nothing about
    restarts: :meth:`restarts` reads what the worker recorded (services/processor/restarts.py).
    Unless ``may_restart``, :meth:`stop` fails the test when the worker restarted itself; every
    worker and its restarts are listed in the session's summary (conftest.py).
    """

    started: list[WorkerProcess] = []  # every worker of the session, for the summary

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str] | None = None,
        *,
        may_restart: bool = False,
        name: str = "",
    ) -> None:
        self.settings = settings
        self.env = {**os.environ, **(env or {})}
        self.env.pop(restarts.COUNT_ENV, None)
        self.app_id = self.env.get("CASESTREAM_WORKER_APP_ID", settings.worker_app_id)
        self.may_restart = may_restart
        self.name = name or self.app_id
        self.test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        self.proc: subprocess.Popen | None = None
        self.log = settings.home / "logs" / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._restarts_before = 0

    @property
    def restart_log(self) -> Path:
        return restarts.restart_log(self.settings.home, self.app_id)

    def start(self) -> WorkerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._restarts_before = len(restarts.read(self.restart_log))
        self._log_handle = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "run", "--loglevel", "info"],
            cwd=REPO,
            env=self.env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        WorkerProcess.started.append(self)
        return self

    def restarts(self) -> list[dict]:
        """The self-restarts this process recorded since :meth:`start` (oldest first).

        Several processes of one app id share the record (a killed worker and its successor):
        only this process's pid counts (an in-place restart keeps it).
        """
        pid = self.proc.pid if self.proc else None
        mine = restarts.read(self.restart_log)[self._restarts_before :]
        return [r for r in mine if r.get("pid") == pid]

    def assert_no_restarts(self, since: int = 0) -> None:
        """Fail unless the worker ran uninterrupted (no self-restart after the first ``since``)."""
        late = self.restarts()[since:]
        assert not late, (
            f"worker {self.name} restarted itself {len(late)} time(s): "
            f"{[r['reason'] for r in late]}\n{self.log_tail(60)}"
        )

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:  # never started (a test that failed before it)
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_handle.close()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_handle.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def restart_counts(workers: list) -> dict[int, int]:
    """How many self-restarts each worker has recorded so far (by object id)."""
    return {id(w): len(w.restarts()) for w in workers}


def restarts_since(before: dict[int, int], workers: list) -> tuple[list, list[str]]:
    """Restarts recorded after ``before``: every one (name, reason), and the unexpected ones."""
    seen, unexpected = [], []
    for w in workers:
        for restart in w.restarts()[before.get(id(w), 0) :]:
            seen.append((w.name, restart["reason"]))
            if not w.may_restart:
                unexpected.append(f"{w.name}: {restart['reason']} (log {w.log})")
    return seen, unexpected


def wait_for(check, *, timeout: float = 60, interval: float = 0.5, what: str = "condition"):
    """Poll until `check()` returns a truthy value; returns it. Fails the test on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            took = time.monotonic() - started
            if took > timeout / 2:  # listed in the session summary: the next one may time out
                test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
                NEAR_TIMEOUTS.append((test, what, took, timeout))
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def make_event(
    event_type: str,
    agency: str,
    case_id: str,
    at: str,
    payload: dict,
    *,
    event_id: str | None = None,
    sequence: int | None = None,
) -> dict:
    """A JSON-form event (BRIEF's contract)."""
    event = {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "case_id": case_id,
        "agency_id": agency,
        "occurred_at": at,
        "payload": payload,
    }
    if sequence is not None:
        event["sequence"] = sequence
    return event


def case_sent_to_police(
    case_id: str,
    opened_at: str,
    transferred_at: str,
    received_at: str,
    *,
    transfer_id: str | None = None,
    prominent: bool = False,
) -> list[dict]:
    """The smallest case with a transfer lag: opened by 20-INSP, sent to 20-POLICE, received."""
    transfer_id = transfer_id or f"{case_id}/T1"
    opened = {"origin": "inspection", "field": "land", "subject_kind": "official"}
    return [
        make_event(
            "case_opened", "20-INSP", case_id, opened_at, {**opened, "prominent": prominent}
        ),
        make_event(
            "case_transferred",
            "20-INSP",
            case_id,
            transferred_at,
            {"transfer_id": transfer_id, "to_agency_id": "20-POLICE", "reason": "signs_of_crime"},
        ),
        make_event(
            "transfer_received", "20-POLICE", case_id, received_at, {"transfer_id": transfer_id}
        ),
    ]


def retag(event: dict, tag: str) -> dict:
    """Make a generated event unique to one test: ids get the tag, event_id a derived UUID.

    Tests share one Kafka and one ClickHouse; tagging lets each test read back only its rows.
    """
    out = {**event, "payload": dict(event["payload"])}
    out["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{event['event_id']}"))
    out["case_id"] = f"{tag}:{event['case_id']}"
    for key in ("transfer_id", "appraisal_id"):
        if key in out["payload"]:
            out["payload"][key] = f"{tag}:{out['payload'][key]}"
    out.pop("sequence", None)  # sequences are per agency: tagged copies would look like gaps
    return out


def new_tag() -> str:
    return "t" + uuid.uuid4().hex[:10]


def table_snapshot(client, tag: str) -> dict[str, list[tuple]]:
    """Every analyst-facing fact row of one test's cases, sorted: equal snapshots = equal tables."""
    like = {"p": f"{tag}:%"}
    queries = {
        "events": "SELECT * EXCEPT (ingested_at, home_province_code) FROM events FINAL "
        "WHERE case_id LIKE {p:String} "
        "ORDER BY event_id",
        "cases": "SELECT * FROM cases WHERE case_id LIKE {p:String} ORDER BY case_id",
        "transfers": "SELECT * FROM transfers WHERE case_id LIKE {p:String} ORDER BY transfer_id",
        "appraisals": "SELECT * FROM appraisals WHERE case_id LIKE {p:String} "
        "ORDER BY appraisal_id",
    }
    return {name: client.query(sql, parameters=like).result_rows for name, sql in queries.items()}


def start_at_the_end(settings: Settings, app_id: str) -> int:
    """Commit a new worker's intake offsets at the current end of every agency topic.

    A worker with a new app id reads every agency topic from the beginning, i.e. the whole
    session's history so far, which made an isolated worker's run time depend on the tests
    before it. This is what an operator does with ``kafka-consumer-groups --reset-offsets
    --to-latest``: the worker then reads only what is published after this call (topics created
    later are read from their beginning). Returns the number of partitions positioned.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from services.ops.consumer_lag import group_lag, matching_topics
    from services.ops.topics import AGENCY_TOPIC_PATTERN, PROBE_TOPIC
    from services.processor.intake import intake_group

    group = intake_group(app_id)
    topics = [*matching_topics(settings, AGENCY_TOPIC_PATTERN), PROBE_TOPIC]
    ends = [  # one ListOffsets request for all partitions (group_lag)
        TopicPartition(p.topic, p.partition, p.high_watermark)
        for p in group_lag(settings, group, topics, timeout=30)
    ]
    if ends:
        from confluent_kafka import ConsumerGroupTopicPartitions

        admin = AdminClient(settings.kafka_client_config())
        future = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, ends)])
        future[group].result(30)
    return len(ends)


def publish_and_derive(
    stack, agency: str, agency_settings, worker_env: dict[str, str], database: str, tmp_path: Path
) -> str:
    """Publish three openings of a new tag with ``agency_settings`` (a secured broker), run a
    worker with ``worker_env`` into ``database`` until their rows are there; its log text."""
    from services.agency.publisher import Publisher

    tag = new_tag()
    cases = [f"{tag}:{agency}/2024/{i}" for i in range(3)]
    opened = {"origin": "inspection", "field": "land", "subject_kind": "official"}
    with Publisher(agency, agency_settings, outbox_path=tmp_path / "outbox.sqlite") as publisher:
        publisher.publish_many(
            [
                make_event(
                    "case_opened",
                    agency,
                    case,
                    "2024-03-05T09:30:00+07:00",
                    {**opened, "prominent": False},
                )
                for case in cases
            ]
        )
    worker = WorkerProcess(
        stack,
        env={
            **worker_env,
            "CASESTREAM_CLICKHOUSE_DATABASE": database,
            "CASESTREAM_WORKER_METRICS_ADDR": "off",
        },
    ).start()
    try:
        client = stack.clickhouse_client(database="default")

        def rows() -> int:
            if not client.command(f"EXISTS TABLE {database}.cases"):  # the view, created last
                return 0
            return client.command(
                f"SELECT count() FROM {database}.cases WHERE case_id LIKE {{p:String}}",
                parameters={"p": f"{tag}:%"},
            )

        wait_for(
            lambda: rows() == len(cases) or not worker.alive(),
            timeout=180,
            what="the secured worker's rows",
        )
        assert worker.alive(), worker.log_tail()
        assert rows() == len(cases)
    finally:
        worker.stop()
    return worker.log.read_text(errors="replace")
