"""Password guessing and anonymous access, tried on endpoints of their own.

Own endpoints because a guessing attack locks the address it comes from, and the package's
shared endpoint is reached from 127.0.0.1 by every other test. Guesses come from several
loopback addresses (127.0.0.2, 127.0.0.3 ...) to tell the per-address and per-user locks apart.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from .conftest import Endpoint, start_endpoint

pytestmark = pytest.mark.integration


class FromAddress(http.client.HTTPConnection):
    def __init__(self, endpoint: Endpoint, source: str) -> None:
        super().__init__(endpoint.host, endpoint.port, timeout=30, source_address=(source, 0))


def attempt(
    endpoint: Endpoint, user: str, password: str, source: str = "127.0.0.1", path: str = "/"
) -> tuple[int, dict[str, str], str]:
    conn = FromAddress(endpoint, source)
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("POST", path, body=b"SELECT 7", headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def own_endpoint(tmp_path) -> Iterator[Endpoint]:
    endpoint = start_endpoint(tmp_path / "throttled")
    try:
        yield endpoint
    finally:
        assert endpoint.stop() == 0
        assert "Traceback" not in endpoint.log_text()


def test_password_guessing_is_throttled_and_a_right_guess_does_not_get_through(
    own_endpoint,
) -> None:
    statuses = [
        attempt(own_endpoint, "casestream", f"guess-{i}", "127.0.0.2")[0] for i in range(40)
    ]
    assert statuses[:10] == [403] * 10  # a few typos are free
    assert set(statuses[11:]) == {429}, statuses
    # Locked: even the right password is not looked at, so guessing learns nothing.
    status, headers, body = attempt(own_endpoint, "casestream", "s3cret pass", "127.0.0.2")
    assert status == 429
    assert headers["X-ClickHouse-Exception-Code"] == "201"
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert "Too many failed authentication attempts" in body and "QUOTA_EXCEEDED" in body
    # The user name is locked from other addresses too ...
    assert attempt(own_endpoint, "casestream", "s3cret pass", "127.0.0.3")[0] == 429
    # ... but another user from another address is not slowed at all.
    ok = attempt(own_endpoint, "analyst", "look-only", "127.0.0.4")
    assert (ok[0], ok[2]) == (200, "7\n")
    # The guessing address is locked for every user name.
    assert attempt(own_endpoint, "analyst", "look-only", "127.0.0.2")[0] == 429


def test_the_lock_runs_out_and_the_right_password_works_again(own_endpoint) -> None:
    for i in range(11):
        attempt(own_endpoint, "analyst", f"guess-{i}", "127.0.0.5")
    status, headers, _ = attempt(own_endpoint, "analyst", "look-only", "127.0.0.5")
    assert status == 429
    time.sleep(int(headers["Retry-After"]) + 0.5)
    ok = attempt(own_endpoint, "analyst", "look-only", "127.0.0.5")
    assert (ok[0], ok[2]) == (200, "7\n")


def test_legitimate_logins_are_never_counted(own_endpoint) -> None:
    for _ in range(50):
        assert attempt(own_endpoint, "analyst", "look-only", "127.0.0.6")[0] == 200
    for i in range(5):  # and a handful of typos in between do not lock anyone
        assert attempt(own_endpoint, "analyst", f"typo-{i}", "127.0.0.6")[0] == 403
    assert attempt(own_endpoint, "analyst", "look-only", "127.0.0.6")[0] == 200


def test_stack_users_file_has_no_anonymous_user(tmp_path) -> None:
    from services.settings import Settings
    from services.stack import clickhouse as stack_clickhouse

    settings = dataclasses.replace(
        Settings.from_env(),
        home=tmp_path / "home",
        clickhouse_password="rw-" + "x" * 12,
        analyst_password="ro-" + "y" * 12,
        clickhouse_anonymous_default=False,
    )
    users_file = stack_clickhouse.write_users_file(settings)
    assert "rw-xxxxxxxxxxxx" not in users_file.read_text()
    endpoint = Endpoint(tmp_path / "data", users_file, tmp_path / "endpoint.log").start()
    try:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
        conn.request("GET", "/?query=SELECT%201")  # curl without -u
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
        assert response.status == 403 and "default: Authentication failed" in body, body
        writer = endpoint.client(settings.clickhouse_user, settings.clickhouse_password)
        writer.command(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse_database}")
        writer.close()
        # (The analyst may be granted the platform's database only.)
        database = f"/?database={settings.clickhouse_database}"
        ok = attempt(endpoint, settings.analyst_user, settings.analyst_password, path=database)
        assert (ok[0], ok[2]) == (200, "7\n")
    finally:
        assert endpoint.stop() == 0


def test_endpoint_without_users_file_refuses_to_start_unless_asked(tmp_path) -> None:
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
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"no users file given: pass --users-file FILE, or --anonymous-default" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_half_sent_body_does_not_hold_the_connection(tmp_path) -> None:
    """Slowloris: headers promise 1 MB, a few bytes arrive, then silence."""
    endpoint = start_endpoint(tmp_path / "slow", True, "--socket-timeout", "2")
    try:
        token = base64.b64encode(b"casestream:s3cret pass").decode()
        head = (
            f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
            f"Content-Length: {1 << 20}\r\n\r\nSELECT '"
        ).encode()
        with socket.create_connection((endpoint.host, endpoint.port), timeout=60) as sock:
            sock.sendall(head)
            response = b""
            while chunk := sock.recv(65536):  # returns when the server hangs up
                response += chunk
        assert response.startswith(b"HTTP/1.1 503"), response
        assert b"SOCKET_TIMEOUT" in response
        # An idle keep-alive connection is closed too, without a response.
        with socket.create_connection((endpoint.host, endpoint.port), timeout=60) as sock:
            assert sock.recv(1) == b""
        ok = attempt(endpoint, "casestream", "s3cret pass")
        assert (ok[0], ok[2]) == (200, "7\n")
    finally:
        assert endpoint.stop() == 0
    log = endpoint.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log
