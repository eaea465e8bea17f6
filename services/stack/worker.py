"""The stream worker as a background process of the local stack (`casestream worker start`)."""

from __future__ import annotations

import sys

from services.settings import Settings
from services.stack.process import PYTHON_ENV, ManagedProcess, child_env

NAME = "worker"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: its settings (every ``CASESTREAM_*``, its own secrets included,
    since it connects to Kafka and ClickHouse) and what Python needs; nothing else of ours."""
    return child_env(PYTHON_ENV, prefixes=("CASESTREAM_",), extra=extra)


def start(settings: Settings, log=print) -> int:
    return process(settings).start(
        [sys.executable, "-m", "services.cli", "worker", "run", "--loglevel", "warning"],
        env=worker_env(),
        marker="worker run",
    )


def is_ready(settings: Settings) -> bool:
    return process(settings).pid() is not None
