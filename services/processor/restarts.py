"""The worker's self-restarts, written down so that they can be counted from outside.

The watchdogs restart a stalled worker by re-executing it in place (``os.execv``): the pid stays
the same, so a supervisor, ``health`` or a test watching the process saw nothing, and a stall
(about one full test run in four, docs/guarantees.md) passed as a slow run. Each restart now
appends one JSON line (when, pid, why) to ``<home>/worker/<app_id>/restarts.jsonl`` before the
exec, and the count since the process was first started travels in ``CASESTREAM_WORKER_RESTARTS``
across the exec, for the worker's ``/metrics`` (``casestream_worker_restarts``).

The file is a log, not state: nothing reads it to decide anything; deleting it loses only history.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

COUNT_ENV = "CASESTREAM_WORKER_RESTARTS"


def restart_log(home: Path, app_id: str) -> Path:
    """Where a worker of ``app_id`` under ``home`` records its self-restarts."""
    return Path(home) / "worker" / app_id / "restarts.jsonl"


def record(path: Path, reason: str) -> int:
    """Append one restart (flushed to disk before the exec) and return the count so far."""
    count = restarts_so_far() + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(
        {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
            "count": count,
            "reason": reason,
        },
        ensure_ascii=False,
    )
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.environ[COUNT_ENV] = str(count)
    return count


def restarts_so_far() -> int:
    """Self-restarts of this process since it was first started (0 for a fresh process)."""
    try:
        return int(os.environ.get(COUNT_ENV, "0"))
    except ValueError:
        return 0


def read(path: Path) -> list[dict[str, Any]]:
    """Every recorded restart, oldest first (an empty list when there was none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
