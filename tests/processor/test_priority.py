"""Derive's lowered priority: set once, kept relative to the worker's first niceness across an
in-place restart (an exec keeps the environment and the lowered niceness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.processor.priority import _STARTED_AT, DERIVE_NICENESS

pytestmark = pytest.mark.unit

# Run in a child process: niceness cannot be taken back without privileges, and the test
# runner must not be left slower.
_WORKER = """
import json, os, sys
from services.processor import priority
started = priority.started_niceness()
priority.yield_to_intake(started)
priority.yield_to_intake(started)  # twice, as after a restart: not lowered again
print(json.dumps({"started": started, "derive": os.getpriority(os.PRIO_PROCESS, 0),
                  "kept": os.environ.get(priority._STARTED_AT)}))
"""


def _run_worker(env: dict[str, str], niceness: int = 0) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.nice(niceness),
    )
    return json.loads(done.stdout)


def test_derive_runs_below_the_niceness_the_worker_started_with_and_not_lower_on_restart():
    env = {k: v for k, v in os.environ.items() if k != _STARTED_AT}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    first = _run_worker(env)
    assert first == {"started": own, "derive": own + DERIVE_NICENESS, "kept": str(own)}

    # The in-place restart: the same environment, already at derive's niceness.
    restarted = _run_worker({**env, _STARTED_AT: first["kept"]}, niceness=DERIVE_NICENESS)
    assert restarted["started"] == own  # not the lowered niceness it runs at
    assert restarted["derive"] == own + DERIVE_NICENESS


def test_an_unreadable_kept_niceness_is_replaced_by_the_current_one():
    env = {k: v for k, v in os.environ.items() if k != _STARTED_AT}
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run_worker({**env, _STARTED_AT: "five"})["started"] == own
