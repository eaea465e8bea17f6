"""The local Prefect 3 server (SQLite under $CASESTREAM_HOME/prefect), for flows and the UI."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from services.private_files import private_dir
from services.settings import Settings
from services.stack.process import PYTHON_ENV, ManagedProcess, child_env

NAME = "prefect"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for the server and for every client process (flows, workers, tests)."""
    home = settings.home / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_API_HOST": settings.prefect_host_port[0],
        "PREFECT_SERVER_API_PORT": str(settings.prefect_host_port[1]),
        "PREFECT_SERVER_UI_API_URL": settings.prefect_api_url,
    }


def start(settings: Settings, log=print) -> None:
    host, port = settings.prefect_host_port
    private_dir(settings.home / "prefect")
    prefect_bin = Path(sys.executable).parent / "prefect"
    process(settings).start(
        [str(prefect_bin), "server", "start", "--host", host, "--port", str(port)],
        env=child_env(PYTHON_ENV, extra=prefect_env(settings)),
        marker=f"--port {port}",
    )


def is_ready(settings: Settings) -> bool:
    response = httpx.get(f"{settings.prefect_api_url.rstrip('/')}/health", timeout=2)
    return response.status_code == 200 and response.json() is True
