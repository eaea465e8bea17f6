"""`casestream health` against the real stack: lag grows and recovers, silent agencies, metrics.

The tests run their own worker (own consumer group and ClickHouse database) so stopping it never
disturbs the session's worker; `health` runs as the real CLI with that worker's settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from services.agency.publisher import Publisher
from services.settings import Settings
from services.stack.process import free_ports
from tests.helpers import REPO, WorkerProcess, make_event, new_tag, start_at_the_end, wait_for

pytestmark = pytest.mark.integration

# Everything but the check under test is relaxed, so other tests' data cannot make it fail.
RELAXED = {
    "CASESTREAM_HEALTH_MAX_LAG": "10",
    "CASESTREAM_HEALTH_MAX_SILENCE_SECONDS": "1e9",
    "CASESTREAM_HEALTH_MAX_DLQ_PER_MINUTE": "1e9",
    "CASESTREAM_HEALTH_MAX_SEQUENCE_GAPS": "1000000000",
    "CASESTREAM_HEALTH_MAX_P99_LATENCY_SECONDS": "1e9",
    "CASESTREAM_HEALTH_MAX_PROBE_AGE_SECONDS": "1e9",
    "CASESTREAM_HEALTH_MAX_ROLLUP_AGE_SECONDS": "1e9",
}


class Isolated:
    """A worker of our own, restartable, and the environment `health` needs to watch it."""

    def __init__(self, stack: Settings) -> None:
        tag = new_tag()
        self.stack = stack
        self.app_id = f"health-{tag}"
        self.database = f"health_{tag}"
        self.metrics_port = free_ports(1)[0]
        self.env = {
            "CASESTREAM_WORKER_APP_ID": self.app_id,
            "CASESTREAM_CLICKHOUSE_DATABASE": self.database,
            "CASESTREAM_WORKER_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "CASESTREAM_PROBE_INTERVAL_SECONDS": "1",
        }
        self.worker: WorkerProcess | None = None
        start_at_the_end(stack, self.app_id)  # not the whole session's history

    def start(self) -> None:
        self.worker = WorkerProcess(self.stack, env=self.env).start()

    def stop(self) -> None:
        if self.worker:
            self.worker.stop()
            self.worker = None

    def health(self, *args: str, **env: str) -> tuple[int, dict]:
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", "health", "--json", *args],
            cwd=REPO,
            env={**os.environ, **self.env, **RELAXED, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def client(self):
        return self.stack.clickhouse_client(database=self.database)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()


@pytest.fixture(scope="module")
def iso(stack: Settings) -> Iterator[Isolated]:
    iso = Isolated(stack)
    iso.start()
    yield iso
    iso.stop()


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def opened(agency: str, case: str, sequence: int | None = None) -> dict:
    return make_event(
        "case_opened",
        agency,
        case,
        "2024-05-02T08:00:00+07:00",
        {"origin": "inspection", "field": "land", "subject_kind": "official", "prominent": False},
        sequence=sequence,
    )


def publish(stack: Settings, events: list[dict]) -> None:
    with Publisher(None, stack) as operator:
        assert operator.publish_many(events)


def ingested(iso: Isolated, tag: str) -> int:
    client = iso.stack.clickhouse_client(database="default")  # the worker creates the database
    if not client.command(f"EXISTS TABLE {iso.database}.events"):
        return 0
    return client.command(
        f"SELECT uniqExact(event_id) FROM {iso.database}.events WHERE case_id LIKE {{p:String}}",
        parameters={"p": f"{tag}:%"},
    )


def test_lag_is_reported_while_the_worker_is_down_and_recovers(stack, iso):
    tag = new_tag()
    publish(stack, [opened("20-INSP", f"{tag}:warmup/{i}") for i in range(5)])
    wait_for(lambda: ingested(iso, tag) == 5, timeout=180, what="the worker to ingest")
    wait_for(lambda: iso.health("--check", "lag")[0] == 0, timeout=120, what="lag ok")

    iso.stop()
    publish(stack, [opened("20-INSP", f"{tag}:backlog/{i}") for i in range(60)])
    code, report = iso.health("--check", "lag", "--check", "broker")
    assert code == 1, report
    assert report["status"] == "fail" and check(report, "broker")["status"] == "ok"
    lag = check(report, "lag")
    assert lag["status"] == "fail" and "behind (max 10)" in lag["summary"]
    group = next(g for g in report["figures"]["lag"]["groups"] if g["group"] == iso.app_id)
    behind = [p for p in group["partitions"] if p["topic"] == "agency.20-INSP.events"]
    assert sum(p["lag"] for p in behind) >= 60
    assert all(p["high_watermark"] - max(p["committed"], 0) == p["lag"] for p in behind)

    # Human form: the same verdict, and the exit status tells the on-call engineer.
    text = subprocess.run(
        [sys.executable, "-m", "services.cli", "health", "--check", "lag", "-v"],
        cwd=REPO,
        env={**os.environ, **iso.env, **RELAXED},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert text.returncode == 1 and "FAIL  lag" in text.stdout, text.stdout + text.stderr
    assert "agency.20-INSP.events" in text.stdout

    iso.start()
    wait_for(lambda: ingested(iso, tag) == 65, timeout=240, what="the backlog after restart")
    code, report = wait_for(
        lambda: (r := iso.health("--check", "lag"))[0] == 0 and r,
        timeout=180,
        what="the lag check to recover",
    )
    assert check(report, "lag")["status"] == "ok"
    # With nothing else out of bounds, the whole report is healthy again (exit 0).
    code, report = wait_for(
        lambda: (r := iso.health())[0] == 0 and r, timeout=120, what="a healthy report"
    )
    assert {c["name"]: c["status"] for c in report["checks"]}["latency"] == "ok"
    figures = report["figures"]
    assert figures["latency"]["probes"] > 0 and figures["latency"]["p99_seconds"] is not None
    assert figures["throughput"]["processed"] >= 65
    assert iso.worker and iso.worker.alive(), iso.worker.log_tail() if iso.worker else ""


def test_a_silent_agency_is_flagged(stack, iso):
    # Agencies no other test publishes for: this test's isolated worker replays every topic,
    # so a busy agency's "last ingested" moves while the history is caught up.
    tag = new_tag()
    publish(stack, [opened("12-FOREST", f"{tag}:old/1")])
    wait_for(lambda: ingested(iso, tag) == 1, timeout=180, what="12-FOREST's event")
    time.sleep(15)
    publish(stack, [opened("11-FOREST", f"{tag}:new/1")])
    wait_for(lambda: ingested(iso, tag) == 2, timeout=180, what="11-FOREST's event")
    ages = dict(
        iso.client()
        .query(
            "SELECT agency_id, dateDiff('millisecond', last_ingested_at, now64(3)) / 1000.0 "
            "FROM agency_freshness WHERE agency_id IN ('12-FOREST', '11-FOREST')"
        )
        .result_rows
    )
    assert ages["12-FOREST"] - ages["11-FOREST"] >= 12, ages
    threshold = (ages["12-FOREST"] + ages["11-FOREST"]) / 2

    code, report = iso.health(
        "--check",
        "freshness",
        CASESTREAM_HEALTH_MAX_SILENCE_SECONDS=str(threshold),
        CASESTREAM_HEALTH_EXPECTED_AGENCIES="11-FOREST,96-INSP",
    )
    freshness = check(report, "freshness")
    assert code == 1 and freshness["status"] == "fail", report
    # The summary names only the five longest-silent agencies; under a shared test stack many
    # older agencies outrank 12-FOREST, so its silence is asserted on the figures below.
    assert "11-FOREST" not in freshness["summary"].replace("96-INSP", "")
    assert "96-INSP never seen" in freshness["summary"]
    silence = {a["agency_id"]: a for a in report["figures"]["freshness"]["agencies"]}
    assert (
        silence["12-FOREST"]["silence_seconds"]
        > threshold
        > silence["11-FOREST"]["silence_seconds"]
    )

    code, report = iso.health("--check", "freshness", CASESTREAM_HEALTH_MAX_SILENCE_SECONDS="3600")
    assert code == 0 and check(report, "freshness")["status"] == "ok"


def test_the_worker_exposes_prometheus_metrics(stack, iso):
    tag = new_tag()
    publish(stack, [opened("20-INSP", f"{tag}:m/{i}") for i in range(3)])
    wait_for(lambda: ingested(iso, tag) == 3, timeout=180, what="the events")

    def scraped() -> str | None:
        try:
            text = iso.metrics()
        except OSError:
            return None
        # The histogram's `_count` line is there (at 0) before any probe came back: wait for
        # at least one probe's round trip, which also wrote its row to `probes`.
        for line in text.splitlines():
            if line.startswith("casestream_worker_probe_latency_seconds_count "):
                return text if float(line.split()[1]) > 0 else None
        return None

    text = wait_for(scraped, timeout=60, what="a probe's round trip on the metrics endpoint")
    assert 'casestream_worker_events_ingested_total{agency="20-INSP"}' in text
    assert 'casestream_worker_batch_duration_seconds_count{agent="derive"}' in text
    assert "casestream_worker_clickhouse_rows_written_total" in text
    assert 'casestream_worker_last_event_time_seconds{agency="20-INSP"}' in text
    # Probes reach only the probes table: no analyst table ever sees them.
    client = iso.client()
    assert client.command("SELECT count() FROM probes") > 0
    assert client.command("SELECT count() FROM events WHERE startsWith(case_id, '\\0')") == 0
    assert client.command("SELECT count() FROM cases WHERE startsWith(case_id, '\\0')") == 0
