"""The stream worker as a background process of the local stack (`casestream worker start`)."""

from __future__ import annotations

import sys

from services.settings import Settings
from services.stack.process import ManagedProcess

NAME = "worker"


def process(settings: Settings) -> ManagedProcess:
    return ManagedProcess(NAME, settings.home)


def start(settings: Settings, log=print) -> int:
    return process(settings).start(
        [sys.executable, "-m", "services.cli", "worker", "run", "--loglevel", "warning"],
        marker="worker run",
    )


def is_ready(settings: Settings) -> bool:
    return process(settings).pid() is not None
