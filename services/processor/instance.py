"""A worker instance's identity: its state directory, its static membership in its consumer
groups, and the lock that keeps the directory to one process.

Why static membership (Kafka's ``group.instance.id``): a restarted worker used to join its
groups as a new member, and the group then waited for the old member's session to time out
(10 s) before it handed out the partitions again: 8-9 s of a ~10 s restart, whatever the size
of the state (docs/benchmarks.md, the restart scenario). A member that comes back under the
same instance id takes its place, and its partitions, at once. The cost is the other side of
the same rule: a member gone for good keeps its partitions until its session times out, as
before, since the worker never leaves its groups politely (it exits like a crash).

The member id names the host and the state directory, not only the instance name: instance
names are unique per host (systemd's `casestream-worker@1` may run on every host), and two live
processes with one member id would fence each other out of the group in turn (the broker keeps
the newest). A state directory holds one process: RocksDB allows one per database, and `hold`
refuses a second process before it joins anything, naming the one that holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
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


def member_id(settings: Settings, app_id: str) -> str:
    """The static member id of this process in the app id's groups (the intake's and derive's):
    the same after a restart on this host with this state directory, different anywhere else."""
    where = hashlib.sha256(str(state_dir(settings, app_id).resolve()).encode()).hexdigest()[:12]
    return f"{app_id}.{socket.gethostname()}.{settings.worker_instance}.{where}"


def hold(state_dir: Path, settings: Settings, app_id: str) -> IO[str]:
    """Lock the instance's state directory for this process's lifetime, or refuse to start.

    The lock goes with the open file: the worker keeps the returned file, and it is released
    when the process exits or re-executes itself (files are not inherited across ``exec``), so
    the restarted image takes it again.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SettingsError(
            f"CASESTREAM_WORKER_INSTANCE={settings.worker_instance!r} of app id {app_id!r} is "
            f"already running (pid {holder}, state directory {state_dir}): give each worker "
            "process of an app id its own instance name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
