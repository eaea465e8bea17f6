"""Shared fixtures: one private local stack per test session, on its own ports and data dir.

The stack is the real one (Kafka KRaft, Apicurio, the chDB ClickHouse endpoint, Prefect) started
by the same code as `casestream stack up`, listening on 127.0.0.1 only, and stopped at the end of
the session. Its ports differ from the developer defaults so a running dev stack is untouched.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.settings import Settings
from tests.helpers import WorkerProcess

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1, so parallel test sessions never collide."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stack_env() -> dict[str, str]:
    kafka, controller, registry, management, clickhouse, prefect = free_ports(6)
    return {
        "CASESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "CASESTREAM_KAFKA_CONTROLLER_PORT": str(controller),
        "CASESTREAM_REGISTRY_URL": f"http://127.0.0.1:{registry}/apis/ccompat/v7",
        "CASESTREAM_REGISTRY_MANAGEMENT_PORT": str(management),
        "CASESTREAM_CLICKHOUSE_URL": f"http://127.0.0.1:{clickhouse}",
        "CASESTREAM_PREFECT_API_URL": f"http://127.0.0.1:{prefect}/api",
        "CASESTREAM_TOPIC_PARTITIONS": "4",
    }


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings of the session's private stack (not started: see `stack`)."""
    home = Path(tempfile.mkdtemp(prefix="casestream-test-"))
    env = stack_env()
    saved = {k: os.environ.get(k) for k in [*env, "CASESTREAM_HOME"]}
    os.environ.update(env)
    os.environ["CASESTREAM_HOME"] = str(home)
    from services.stack.prefect import prefect_env

    settings = Settings.from_env()
    for key, value in prefect_env(settings).items():
        os.environ[key] = value
    try:
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if os.environ.get("CASESTREAM_KEEP_TEST_HOME"):
            print(f"kept the test stack's home: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Settings]:
    """The running private stack with migrations applied."""
    from services.serving.migrations import migrate
    from services.stack import manager

    try:
        manager.up(stack_settings, log=lambda m: print(m, file=sys.stderr))
        migrate(stack_settings, log=lambda m: None)
        yield stack_settings
    finally:
        manager.down(stack_settings, log=lambda m: None)


@pytest.fixture(scope="session")
def worker(stack: Settings) -> Iterator[WorkerProcess]:
    """One worker for the session, consuming every agency topic into the stack's ClickHouse."""
    w = WorkerProcess(stack).start()
    yield w
    w.stop()


@pytest.fixture
def ch(stack: Settings):
    return stack.clickhouse_client()
