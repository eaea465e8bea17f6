"""Shared fixtures: one private local stack per test session, on its own ports and data dir.

The stack is the real one (Kafka KRaft, Apicurio, the chDB ClickHouse endpoint, Prefect) started
by the same code as `casestream stack up`, listening on 127.0.0.1 only, and stopped at the end of
the session. Its ports differ from the developer defaults so a running dev stack is untouched.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from services.settings import Settings
from services.stack.process import free_ports
from tests.helpers import NEAR_TIMEOUTS, WorkerProcess, restart_counts, restarts_since

REPO = Path(__file__).resolve().parents[1]

# `./run tests` (and so CI) runs hypothesis derandomised: the same examples every run, so a red
# run is a regression and not a new draw; `pytest` alone keeps exploring new examples.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
    w = WorkerProcess(stack, name="session worker").start()
    yield w
    w.stop()


@pytest.fixture
def ch(stack: Settings):
    return stack.clickhouse_client()


# ------------------------------------------------------------------------- unit means no server
#: Fixtures that start (or need) the private stack: Java, Kafka, the registry, the endpoint.
SERVER_FIXTURES = frozenset({"stack_settings", "stack", "worker", "ch", "own_stack"})


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """A `unit` test may not ask for a server: `./run tests -m unit` runs with Python alone
    (no Java, Maven or jars), so such a test would fail there, not here."""
    wrong = [
        f"{item.nodeid} uses {', '.join(sorted(SERVER_FIXTURES & set(item.fixturenames)))}"
        for item in items
        if item.get_closest_marker("unit")
        and SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError(
            "unit tests must not need the stack (mark them integration):\n  " + "\n  ".join(wrong)
        )


@pytest.fixture(autouse=True)
def _no_broker_wait_in_unit_tests(request: pytest.FixtureRequest, monkeypatch) -> None:  # noqa: ANN001
    """Unit tests have no broker: the publisher's topic check fails at once, as it does after
    its 5 s admin timeout when Kafka is down (the same outcome: a warning, events wait in the
    outbox). The waits were ~150 s of the unit suite's 3 minutes."""
    if request.node.get_closest_marker("unit") is None:
        return

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("no Kafka in unit tests")

    monkeypatch.setattr("services.ops.topics.ensure_agency_topics", unreachable)


# ----------------------------------------------------------------------------- worker restarts
#: (test id, worker name, reason) of every self-restart seen, for the session summary.
RESTARTS_SEEN: list[tuple[str, str, str]] = []


@pytest.fixture(autouse=True)
def _no_unexpected_worker_restarts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test during which a worker restarted itself, unless that worker may.

    The watchdogs restart a stalled worker in place (same pid, so ``alive()`` cannot tell); a
    stall must fail the run, not pass as a slow test. The session's worker is checked too: the
    test during which it restarted fails, whichever test caused the stall.
    """
    before = restart_counts(WorkerProcess.started)
    yield
    seen, unexpected = restarts_since(before, WorkerProcess.started)
    RESTARTS_SEEN.extend((request.node.nodeid, name, reason) for name, reason in seen)
    if unexpected:
        pytest.fail("the worker restarted itself during this test:\n" + "\n".join(unexpected))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    """What CI needs to see run after run: restarts, and waits that came close to timing out."""
    write = terminalreporter.write_line
    terminalreporter.section("casestream: worker restarts and near-timeouts")
    workers = WorkerProcess.started
    write(f"workers started: {len(workers)}; self-restarts: {len(RESTARTS_SEEN)}")
    for test, name, reason in RESTARTS_SEEN:
        write(f"  RESTART in {test}: {name}: {reason}")
    # Facts faust fetched but never delivered, read again by the worker (no restart, no loss):
    # not a failure, but a fault of the stream library the worker rewrite must not have.
    refetches = [
        line.strip()
        for worker in workers
        if worker.log.exists()
        for line in worker.log.read_text(errors="replace").splitlines()
        if "faust skipped facts" in line
    ]
    write(f"batches whose skipped facts were read again: {len(refetches)}")
    for line in refetches[:20]:
        write(f"  {line[:300]}")
    slow_waits = sorted(NEAR_TIMEOUTS, key=lambda w: -w[2] / w[3])
    write(f"waits that took over half their timeout: {len(slow_waits)}")
    for test, what, took, timeout in slow_waits[:20]:
        write(f"  {took:6.1f}s of {timeout:.0f}s  {what}  ({test})")
