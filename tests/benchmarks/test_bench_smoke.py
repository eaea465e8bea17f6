"""`casestream bench --quick` runs end to end and prints the results table (no timing asserts).

Only the endpoint scenario runs here: it writes to databases of its own and touches no topic,
so the session's shared stack (and the tests reading its agency topics) are not disturbed. The
command runs in a subprocess because chDB hosts one in-process engine per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BENCH = "from services.ops.bench_command import bench; bench()"


def test_quick_endpoint_bench_prints_the_table(stack, tmp_path):
    out_json = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BENCH,
            "--stack",
            "settings",
            "--scenario",
            "endpoint",
            "--quick",
            "--events",
            "2000",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out_json),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    assert "| scenario | result | baseline (same run) | ratio |" in table
    for row in (
        "endpoint: insert",
        "endpoint: scan SELECT *",
        "endpoint: aggregate",
        "endpoint: point queries",
    ):
        assert f"| {row} |" in table
    results = json.loads(out_json.read_text())["results"]
    assert {r["scenario"] for r in results} >= {"endpoint: insert", "endpoint: point queries"}
    assert all(r["result"] != "error" and r["ratio"] > 0 for r in results)


def test_unknown_scenario_is_refused():
    proc = subprocess.run(
        [sys.executable, "-c", BENCH, "--scenario", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr  # click's usage error, before anything runs
    assert "Invalid value for '--scenario': 'nope' is not one of" in proc.stderr
