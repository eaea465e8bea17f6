"""The local ClickHouse endpoint: one process owning the chDB data dir, speaking ClickHouse HTTP.

Users come from a JSON file written here from the settings: the platform's read-write user and
the read-only analyst user, each with the SHA-256 of its password (``password_sha256_hex``, as
ClickHouse stores it), so the file gives no password away. A passwordless read-only ``default``
(for `curl ?query=SELECT 1` without credentials) exists only with
``CASESTREAM_CLICKHOUSE_ANONYMOUS_DEFAULT=1``: it would let anyone on the host read the
platform's tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import httpx

from services.private_files import private_dir
from services.settings import Settings
from services.stack.process import PYTHON_ENV, ManagedProcess, child_env

NAME = "clickhouse"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def sha256_hex(password: str) -> str:
    """The digest the users file keeps (ClickHouse's ``password_sha256_hex``), never the
    password. (The endpoint has the same function; importing it here would load chDB.)"""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def users_document(settings: Settings) -> dict[str, dict[str, dict[str, object]]]:
    """The endpoint's users file: password digests, never the passwords."""
    users: dict[str, dict[str, object]] = {
        settings.clickhouse_user: {
            "password_sha256_hex": sha256_hex(settings.clickhouse_password),
            "readonly": False,
        },
        # Read-only users reach only the platform's database (and the system tables clients
        # need); the endpoint's query policy reads "databases".
        settings.analyst_user: {
            "password_sha256_hex": sha256_hex(settings.analyst_password),
            "readonly": True,
            "databases": [settings.clickhouse_database],
        },
    }
    # Analysts added with `casestream analysts add`: each reaches only its scope's database.
    for name, entry in read_analysts(settings).items():
        if name not in users:
            users[name] = {
                "password_sha256_hex": entry["password_sha256_hex"],
                "readonly": True,
                "databases": [entry["database"]],
            }
    if settings.clickhouse_anonymous_default and "default" not in users:
        users["default"] = {
            "no_password": True,
            "readonly": True,
            "databases": [settings.clickhouse_database],
        }
    return {"users": users}


def analysts_file(settings: Settings) -> Path:
    return settings.home / "clickhouse" / "analysts.json"


def read_analysts(settings: Settings) -> dict[str, dict[str, str]]:
    """The analysts `casestream analysts add` registered: name -> scope, database, digest."""
    path = analysts_file(settings)
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        analysts = document["analysts"]
        for name, entry in analysts.items():
            for key in ("scope", "database", "password_sha256_hex"):
                if not isinstance(entry.get(key), str):
                    raise ValueError(f"analyst {name!r} has no {key}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"cannot read the analysts file {path}: {exc}") from None
    return analysts


def write_analysts(settings: Settings, analysts: dict[str, dict[str, str]]) -> Path:
    return _write_private_json(analysts_file(settings), {"analysts": analysts})


def reload_users(settings: Settings) -> bool:
    """Rewrite the users file and have a running endpoint reload it (SIGHUP); False when no
    local endpoint runs (it reads the file when it starts)."""
    write_users_file(settings)
    pid = process(settings).pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


def write_users_file(settings: Settings) -> Path:
    """Write the users file with mode 0600 from its creation (never briefly world-readable).

    Rewritten on every start, which also converts an older clear-text file.
    """
    return _write_private_json(
        settings.home / "clickhouse" / "users.json", users_document(settings)
    )


def _write_private_json(path: Path, document: object) -> Path:
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # a leftover of a crash (or a planted symlink)
    # O_EXCL | O_NOFOLLOW: a fresh file of ours, never one a symlink points at.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but make it explicit
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    return path


def start(settings: Settings, log=print) -> None:
    host, port = settings.clickhouse_host_port
    data_dir = settings.home / "clickhouse" / "data"
    private_dir(data_dir)
    process(settings).start(
        [
            sys.executable,
            "-m",
            "services.clickhouse_endpoint",
            "--host",
            host,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--users-file",
            str(write_users_file(settings)),
        ],
        env=child_env(PYTHON_ENV),  # its passwords come from the users file, not the environment
        marker=str(data_dir),
    )


def is_ready(settings: Settings) -> bool:
    response = httpx.get(f"{settings.clickhouse_url.rstrip('/')}/ping", timeout=2)
    return response.status_code == 200
