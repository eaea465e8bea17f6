"""Data survives a restart, and the process behaves on signals and without a users file."""

from __future__ import annotations

import datetime as dt

import pytest

from .conftest import start_endpoint

pytestmark = pytest.mark.integration


def test_data_survives_restart(tmp_path) -> None:
    endpoint = start_endpoint(tmp_path / "restart")
    try:
        client = endpoint.client()
        client.command("CREATE DATABASE durable")
        client.command(
            "CREATE TABLE durable.events (id UInt64, at DateTime, body String) ENGINE = MergeTree ORDER BY id"
        )
        rows = [
            [i, dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i), f"event {i}"]
            for i in range(1000)
        ]
        client.insert("events", rows, column_names=["id", "at", "body"], database="durable")
        client.close()
        assert endpoint.stop() == 0

        endpoint.start()
        client = endpoint.client()
        assert client.query("SELECT * FROM durable.events ORDER BY id").result_rows == [
            tuple(r) for r in rows
        ]
        client.insert(
            "events",
            [[5000, dt.datetime(2025, 1, 1), "after restart"]],
            ["id", "at", "body"],
            database="durable",
        )
        client.close()
        assert endpoint.stop() == 0

        endpoint.start()
        assert endpoint.client().command("SELECT count() FROM durable.events") == 1001
    finally:
        endpoint.stop()
    assert "received SIGTERM" in endpoint.log_text()


def test_anonymous_default_is_writable_when_asked_for(tmp_path) -> None:
    endpoint = start_endpoint(tmp_path / "nousers", with_users=False)
    try:
        client = endpoint.client(username="default", password="")
        client.command("CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a")
        client.insert("t", [[1], [2]], column_names=["a"])
        assert client.command("SELECT sum(a) FROM t") == 3
        from clickhouse_connect.driver.exceptions import DatabaseError

        with pytest.raises(DatabaseError) as excinfo:
            endpoint.client(username="casestream", password="s3cret pass")
        assert excinfo.value.code == 516
    finally:
        assert endpoint.stop() == 0


def test_second_process_on_the_same_data_dir_exits_with_a_message(endpoint) -> None:
    import subprocess
    import sys

    from .conftest import REPO, free_port

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.clickhouse_endpoint",
            "--port",
            str(free_port()),
            "--data-dir",
            str(endpoint.data_dir),
            "--anonymous-default",
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert b"clickhouse_endpoint: cannot open" in result.stderr
    assert endpoint.client().command("SELECT 1") == 1
