"""A worker's in-place restart (same pid, os.execv) is recorded, counted and survives the exec."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.processor import restarts
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_restarts_through_execv_are_recorded_with_their_reasons_and_counted(tmp_path: Path):
    record = tmp_path / "worker" / "app" / "restarts.jsonl"
    # The same code runs again after each exec (sys.orig_argv): it restarts twice, then reports.
    program = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from services.processor import restarts, worker
        done = restarts.restarts_so_far()
        if done == 2:
            print(os.getpid(), done)
            sys.exit(0)
        print(os.getpid(), done, flush=True)
        worker._RESTART_LOG["path"] = Path({str(record)!r})
        worker._restart(f"stalled partition, attempt {{done + 1}}")
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pids = {line.split()[0] for line in done.stdout.splitlines()}
    counts = [int(line.split()[1]) for line in done.stdout.splitlines()]
    assert len(pids) == 1, "an in-place restart keeps the pid: alive() cannot see it"
    assert counts == [0, 1, 2]
    recorded = restarts.read(record)
    assert [r["count"] for r in recorded] == [1, 2]
    assert [r["reason"] for r in recorded] == [
        "stalled partition, attempt 1",
        "stalled partition, attempt 2",
    ]
    assert {str(r["pid"]) for r in recorded} == pids
    assert "restarting" in done.stderr, "the restart is logged with its reason"


def test_no_record_reads_as_no_restart(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(restarts.COUNT_ENV, raising=False)
    assert restarts.read(tmp_path / "none.jsonl") == []
    assert restarts.restarts_so_far() == 0


class _FakeWorker:
    def __init__(self, name: str, may_restart: bool) -> None:
        self.name, self.may_restart, self.log = name, may_restart, Path(f"/tmp/{name}.log")
        self.recorded: list[dict] = []

    def restarts(self) -> list[dict]:
        return self.recorded


def test_the_suites_check_fails_on_a_restart_only_where_none_is_expected():
    from tests.helpers import restart_counts, restarts_since

    strict, lenient = _FakeWorker("session", False), _FakeWorker("faulty", True)
    strict.recorded.append({"reason": "before this test"})
    before = restart_counts([strict, lenient])
    assert restarts_since(before, [strict, lenient]) == ([], [])

    strict.recorded.append({"reason": "facts partitions not consumed"})
    lenient.recorded.append({"reason": "the intake failed"})
    seen, unexpected = restarts_since(before, [strict, lenient])
    assert seen == [("session", "facts partitions not consumed"), ("faulty", "the intake failed")]
    assert unexpected == ["session: facts partitions not consumed (log /tmp/session.log)"]
