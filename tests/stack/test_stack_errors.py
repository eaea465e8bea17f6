"""A part that cannot start, or is down, is named in one line: which part, where, what to run.

Run as a user runs them: the `casestream` command in a subprocess, against real servers (or the
real absence of one: a port nobody listens on, a port held by something that is not Kafka).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.cluster_id import problem
from tests.conftest import REPO, free_ports

pytestmark = pytest.mark.integration

BAD_STORED = "-n-xgl03QyCf1hlmdQsNDg"


def _casestream(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def nothing_running(tmp_path: Path) -> dict[str, str]:
    """Settings whose every part points at a port nobody listens on."""
    kafka, controller, registry, management, clickhouse, prefect = free_ports(6)
    return {
        "CASESTREAM_HOME": str(tmp_path / "home"),
        "CASESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "CASESTREAM_KAFKA_CONTROLLER_PORT": str(controller),
        "CASESTREAM_REGISTRY_URL": f"http://127.0.0.1:{registry}/apis/ccompat/v7",
        "CASESTREAM_REGISTRY_MANAGEMENT_PORT": str(management),
        "CASESTREAM_CLICKHOUSE_URL": f"http://127.0.0.1:{clickhouse}",
        "CASESTREAM_PREFECT_API_URL": f"http://127.0.0.1:{prefect}/api",
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect}/api",
        "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
    }


@pytest.mark.parametrize(
    ("args", "part", "setting"),
    [
        (["migrate"], "clickhouse", "CASESTREAM_CLICKHOUSE_URL"),
        (["dlq", "list"], "kafka", "CASESTREAM_KAFKA_BOOTSTRAP"),
        (
            ["rollups", "build", "--from", "2024-01-01", "--to", "2024-01-31"],
            "prefect",
            "CASESTREAM_PREFECT_API_URL",
        ),
    ],
)
def test_a_command_whose_part_is_down_says_so_in_one_line(nothing_running, args, part, setting):
    done = _casestream(nothing_running, *args)

    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    address = {
        "clickhouse": nothing_running["CASESTREAM_CLICKHOUSE_URL"],
        "kafka": nothing_running["CASESTREAM_KAFKA_BOOTSTRAP"],
        "prefect": nothing_running["CASESTREAM_PREFECT_API_URL"],
    }[part]
    assert lines[0].startswith("error: "), lines
    assert address in lines[0] and setting in lines[0], lines[0]
    assert f"casestream stack up {part}" in lines[0], lines[0]


def test_debug_shows_the_traceback(nothing_running):
    done = _casestream(nothing_running, "--debug", "migrate")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "Connection refused" in done.stderr, done.stderr


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port held by a listener that accepts and never speaks Kafka (Kafka cannot bind it)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_stack_up_that_fails_names_the_part_and_its_log(nothing_running, squatter):
    env = {**nothing_running, "CASESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{squatter}"}
    try:
        done = _casestream(env, "stack", "up", "kafka")
    finally:
        _casestream(env, "stack", "down", "kafka")

    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    log = Path(env["CASESTREAM_HOME"]) / "logs" / "kafka.log"
    assert "error: kafka failed to start:" in done.stderr, done.stderr
    assert f"log: {log}" in done.stderr, done.stderr
    assert "Address already in use" in done.stderr, "the cause, quoted from the log"
    assert log.exists()


@pytest.mark.slow
def test_a_home_with_a_bad_stored_cluster_id_starts_after_a_clear_message(nothing_running):
    home = Path(nothing_running["CASESTREAM_HOME"])
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "cluster.id").write_text(BAD_STORED + "\n")
    try:
        done = _casestream(nothing_running, "stack", "up", "kafka")
        assert done.returncode == 0, done
        said = done.stdout + done.stderr
        assert BAD_STORED in said and "begins with '-'" in said, said
        stored = (home / "kafka" / "cluster.id").read_text().strip()
        assert stored != BAD_STORED and problem(stored) is None
        meta = (home / "kafka" / "data" / "meta.properties").read_text()
        assert f"cluster.id={stored}" in meta, meta

        # A second `up` (after a stop) reuses the formatted data and says nothing about ids.
        _casestream(nothing_running, "stack", "down", "kafka")
        again = _casestream(nothing_running, "stack", "up", "kafka")
        assert again.returncode == 0, again
        assert "replacing the cluster id" not in again.stdout + again.stderr
        assert (home / "kafka" / "cluster.id").read_text().strip() == stored
    finally:
        _casestream(nothing_running, "stack", "down", "kafka")
