"""The intake process's pipe: what the intake counts reaches the worker's /metrics and watchdog.

The process itself (started, ended with the worker, its end restarting the worker) is tested
through the real worker in tests/integration/test_worker.py.
"""

from __future__ import annotations

import multiprocessing

import pytest

from services.ops.metrics import WorkerMetrics
from services.processor.intake_process import _Relay, apply

pytestmark = pytest.mark.unit


def _value(metrics: WorkerMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_batch_counted_in_the_intake_process_reaches_the_workers_metrics() -> None:
    receive, send = multiprocessing.Pipe(duplex=False)
    relay = _Relay(send)
    for agency in ("20-INSP", "20-INSP", "01-POL"):
        relay.accepted(agency)
    relay.rejected("agency.20-INSP.events", "invalid_event")
    relay.batch("ingest", 4, 0.25)
    relay.accepted("01-POL")  # the next batch starts from zero
    relay.batch("ingest", 1, 0.1)

    metrics = WorkerMetrics()
    status = (set(), False)
    for _ in range(2):
        status = apply(receive.recv(), metrics, status)

    ingested = "casestream_worker_events_ingested_total"
    assert _value(metrics, ingested, {"agency": "20-INSP"}) == 2
    assert _value(metrics, ingested, {"agency": "01-POL"}) == 2
    dead = "casestream_worker_events_dead_lettered_total"
    assert _value(metrics, dead, {"agency": "20-INSP", "reason": "invalid_event"}) == 1
    batches = "casestream_worker_batch_size_count"
    assert _value(metrics, batches, {"agent": "ingest"}) == 2
    assert status == (set(), False)  # batches do not change what the watchdog reads


def test_the_status_tells_the_watchdog_what_the_intake_owns_and_whether_it_waits() -> None:
    receive, send = multiprocessing.Pipe(duplex=False)
    relay = _Relay(send)
    relay.send("status", ({("agency.20-INSP.events", 0)}, True))
    status = apply(receive.recv(), None, (set(), False))
    assert status == ({("agency.20-INSP.events", 0)}, True)


def test_the_intake_process_never_holds_up_the_workers_exit_and_its_end_is_no_crash(
    tmp_path, monkeypatch
) -> None:
    """A daemon child: at an ordinary interpreter exit multiprocessing would join a non-daemon
    one, i.e. wait forever for an intake that never stops. `end` (before a restart) kills it
    without reporting an exit to restart for."""
    from services.processor.intake_process import IntakeProcess
    from services.settings import Settings

    monkeypatch.setenv("CASESTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("CASESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing listens there
    exits: list[str] = []
    intake = IntakeProcess(Settings.from_env(), "unit-intake", None, on_exit=exits.append)
    try:
        assert intake._process.daemon
        assert intake.pid is not None
    finally:
        intake.end()
    assert not intake._process.is_alive()
    assert exits == []


def test_an_ordinary_exit_of_the_worker_ends_its_intake_without_a_restart(tmp_path) -> None:
    """At interpreter exit (faust stopping on its own) the intake is ended first: its exit must
    not be taken for a crash (a restart recorded, the process re-executed) on the way out."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "restarted"
    script = f"""
import sys
from services.processor.intake_process import IntakeProcess
from services.settings import Settings
intake = IntakeProcess(Settings.from_env(), "unit-intake", None,
                       on_exit=lambda reason: open({str(marker)!r}, "w").write(reason))
sys.exit(0)
"""
    env = {
        **os.environ,
        "CASESTREAM_HOME": str(tmp_path),
        "CASESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()
