"""The local ClickHouse endpoint: one process owning the chDB data dir, speaking ClickHouse HTTP.

Users come from a JSON file written here from the settings: the platform's read-write user, the
read-only analyst user and a read-only passwordless ``default`` (so `curl ?query=SELECT 1` works
the way it does against a fresh ClickHouse server).
"""

from __future__ import annotations

import json
import sys

import httpx

from services.private_files import private_dir, private_file
from services.settings import Settings
from services.stack.process import PYTHON_ENV, ManagedProcess, child_env

NAME = "clickhouse"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def write_users_file(settings: Settings):
    path = settings.home / "clickhouse" / "users.json"
    private_dir(path.parent)
    private_file(path)  # 0600 before the passwords are written, not after
    users = {
        "users": {
            settings.clickhouse_user: {"password": settings.clickhouse_password, "readonly": False},
            # Read-only users reach only the platform's database (and the system tables
            # clients need); the endpoint's query policy enforces it.
            settings.analyst_user: {
                "password": settings.analyst_password,
                "readonly": True,
                "databases": [settings.clickhouse_database],
            },
            "default": {
                "password": "",
                "readonly": True,
                "databases": [settings.clickhouse_database],
            },
        }
    }
    path.write_text(json.dumps(users, indent=2))
    path.chmod(0o600)
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
