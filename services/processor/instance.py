"""A worker instance's identity: its state directory, and the lock that keeps it to one process.

Why the lock: a state directory holds one process (RocksDB allows one per database). A second
`casestream worker run` on a directory in use (the same `CASESTREAM_WORKER_INSTANCE`, app id and
home) is refused before it connects to anything, with a message naming the process that holds
it, rather than meeting a locked RocksDB store once it is already in both groups.

Tried and reverted: static membership (Kafka's `group.instance.id`) keyed on this identity, so
that a restarted worker takes its partitions back without waiting for its old session to time
out (the restart benchmark went from ~10 s to ~2 s). In an integration test, a worker killed
right after joining and started again then derived the events published afterwards one facts
partition every 10-20 s, with the intake alone static as well (docs/benchmarks.md). The killed
worker had joined before any agency topic existed (its intake logged "Subscribed topic not
available"): likely the static rejoin kept that empty assignment, and the agency topic created
afterwards reached the intake only through later rejoins (untested). A new agency's topic is
the normal case, so static membership waits for a test of exactly that. What it was for is
done another way: the next process on a state directory removes the members its dead
predecessor noted there (predecessor.py), and a stop leaves both groups (worker.py).
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import IO

from services.settings import Settings, SettingsError

LOCK_FILE = "instance.lock"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def state_dir(settings: Settings, app_id: str) -> Path:
    """A worker instance's own state directory: RocksDB allows one process per database."""
    name = settings.worker_instance
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise SettingsError(
            f"CASESTREAM_WORKER_INSTANCE={name!r} is not a plain name (letters, digits, "
            "'.', '_', '-'; it names the worker's state directory)"
        )
    return settings.home / "worker" / app_id / name


def holder(directory: Path) -> int | None:
    """The pid of the process that holds (or last held) a state directory, as `hold` wrote it;
    None when unknown. Whether it still runs is the caller's question."""
    try:
        return int((directory / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def hold(settings: Settings, app_id: str) -> IO[str]:
    """Lock the instance's state directory for this process's lifetime, or refuse to start.

    The lock goes with the open file: the worker keeps the returned file, and it is released
    when the process exits or re-executes itself (files are not inherited across ``exec``), so
    the restarted image takes it again.
    """
    where = state_dir(settings, app_id)
    where.mkdir(parents=True, exist_ok=True)
    handle = open(where / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SettingsError(
            f"CASESTREAM_WORKER_INSTANCE={settings.worker_instance!r} of app id {app_id!r} is "
            f"already running (pid {holder}, state directory {where}): give each worker "
            "process of an app id its own instance name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
