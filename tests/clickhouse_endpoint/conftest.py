"""Fixtures: the endpoint as a real subprocess, exactly as the stack manager starts it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The clear-text passwords the tests log in with; the file holds their SHA-256 (see below).
# "default" without password is configured explicitly here (the stack does not create it).
USERS = {
    "users": {
        "casestream": {"password": "s3cret pass", "readonly": False},
        "analyst": {"password": "look-only", "readonly": True},
        "default": {"password": "", "readonly": False},
    }
}


def users_document(users: dict) -> dict:
    """``users`` as the endpoint's users file stores them: ``password_sha256_hex``."""
    return {
        "users": {
            name: {
                **{key: value for key, value in spec.items() if key != "password"},
                "password_sha256_hex": hashlib.sha256(spec["password"].encode()).hexdigest(),
            }
            for name, spec in users["users"].items()
        }
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    """One endpoint subprocess on a free port; can be stopped and started again on its data."""

    def __init__(
        self, data_dir: Path, users_file: Path | None, log_path: Path, *extra_args: str
    ) -> None:
        self.extra_args = list(extra_args)
        self.data_dir = data_dir
        self.users_file = users_file
        self.log_path = log_path
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Endpoint:
        command = [
            sys.executable,
            "-m",
            "services.clickhouse_endpoint",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.users_file is not None:
            command += ["--users-file", str(self.users_file)]
        command += self.extra_args
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"endpoint exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                    if response.read() == b"Ok.\n":
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"endpoint did not answer within {timeout}s:\n{self.log_path.read_text()}"
        )

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def client(self, username: str = "casestream", password: str = "s3cret pass", **kwargs):
        import clickhouse_connect

        return clickhouse_connect.get_client(
            host=self.host, port=self.port, username=username, password=password, **kwargs
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_endpoint(tmp: Path, with_users: bool = True, *extra_args: str) -> Endpoint:
    """An endpoint with the USERS file, or (``with_users=False``) an explicit anonymous default."""
    tmp.mkdir(parents=True, exist_ok=True)
    users_file = None
    if with_users:
        users_file = tmp / "users.json"
        users_file.write_text(json.dumps(users_document(USERS)))
        os.chmod(users_file, 0o600)
    else:
        extra_args = ("--anonymous-default", *extra_args)
    return Endpoint(tmp / "data", users_file, tmp / "endpoint.log", *extra_args).start()


@pytest.fixture(scope="package")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """The endpoint shared by this package's tests (users: casestream, analyst, default)."""
    ep = start_endpoint(tmp_path_factory.mktemp("ch-endpoint"))
    try:
        yield ep
    finally:
        code = ep.stop()
        log = ep.log_text()
        assert code == 0, f"endpoint did not stop cleanly (exit {code}):\n{log}"
        assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture
def client(endpoint: Endpoint):
    c = endpoint.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A table name unique to the test, so tests sharing the endpoint do not collide."""
    readable = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"t_{readable}_{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}"
