"""Run clickhouse-connect's own integration suite against a private chDB endpoint.

The endpoint claims to speak ClickHouse's HTTP interface well enough for unmodified
clickhouse-connect; the client's own integration tests are the independent check of that
claim. This script is run by hand, never by CI (``.ci/run`` does not call it): the suite
is not vendored and needs network access to fetch.

Getting the suite (once, outside this repository)::

    git clone https://github.com/ClickHouse/clickhouse-connect /work/wt/cc-suite
    # or, in an agent session: the search tool's fetch of github:ClickHouse/clickhouse-connect,
    # then  git --git-dir=<mirror> archive HEAD | tar -x -C /work/wt/cc-suite
    # Check out the tag of the installed clickhouse-connect version when there is one.

The suite needs ``pytest-asyncio`` and ``pytest-mock``, which the project's environment does
not have; install them into a side directory and pass it with ``--extra-path``::

    uv pip install --python .venv/bin/python --target /work/wt/cc-deps --no-deps \\
        pytest-asyncio pytest-mock

Then, from the repository root::

    python scripts/clickhouse_connect_suite.py --suite /work/wt/cc-suite \\
        --extra-path /work/wt/cc-deps [-k EXPR] [-- extra pytest args]

It starts the endpoint on a free 127.0.0.1 port with a temporary data directory and a
read-write user, runs ``tests/integration_tests`` without ``test_sqlalchemy`` (the
SQLAlchemy dialect is not the HTTP interface), prints the failing tests and a closing
``N passed, N failed, N skipped`` line, and stops the endpoint.

The client under test is the installed ``clickhouse_connect`` (the one casestream uses, with
its compiled extensions, which the suite's helpers import): pytest runs in a scratch directory
holding only a ``tests`` link to the checkout's tests, so neither the checkout's uncompiled copy
of the package nor this repository's own ``tests`` package shadows what the suite imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE_USER = "suite_rw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_users_file(path: Path, password: str) -> None:
    document = {
        "users": {
            SUITE_USER: {
                "password_sha256_hex": hashlib.sha256(password.encode()).hexdigest(),
                "readonly": False,
            }
        }
    }
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)


def start_endpoint(
    python: str, port: int, data_dir: Path, users_file: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        python,
        "-m",
        "services.clickhouse_endpoint",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--users-file",
        str(users_file),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"endpoint exited early:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
                if response.read() == b"Ok.\n":
                    return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    stop_endpoint(proc)
    raise RuntimeError("endpoint did not answer /ping within 60 s")


def stop_endpoint(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def summarize(junit_path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts (passed/failed/skipped) and the ids of failed or errored tests from JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failing: list[str] = []
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcomes = {child.tag for child in case}
        if outcomes & {"failure", "error"}:
            counts["failed"] += 1
            failing.append(name)
        elif "skipped" in outcomes:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failing


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite",
        default=os.environ.get("CC_SUITE_DIR", "/work/wt/cc-suite"),
        help="checkout of ClickHouse/clickhouse-connect (default $CC_SUITE_DIR or %(default)s)",
    )
    parser.add_argument(
        "--extra-path",
        action="append",
        default=[],
        help="directory with the suite's extra test packages (pytest-asyncio, pytest-mock)",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for both sides")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--timeout", type=int, default=120, help="per-test timeout (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (endpoint log)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    suite = Path(args.suite).resolve()
    if not (suite / "tests" / "integration_tests" / "conftest.py").is_file():
        print(f"no clickhouse-connect checkout at {suite} (see --help)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cc-suite-"))
    password = secrets.token_hex(12)
    users_file = workdir / "users.json"
    write_users_file(users_file, password)
    port = free_port()
    log_path = workdir / "endpoint.log"
    proc = start_endpoint(args.python, port, workdir / "data", users_file, log_path)
    junit = workdir / "junit.xml"
    root = workdir / "suite"
    root.mkdir()
    (root / "tests").symlink_to(suite / "tests", target_is_directory=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), *args.extra_path]),
        "CLICKHOUSE_CONNECT_TEST_HOST": "127.0.0.1",
        "CLICKHOUSE_CONNECT_TEST_PORT": str(port),
        "CLICKHOUSE_CONNECT_TEST_USER": SUITE_USER,
        "CLICKHOUSE_CONNECT_TEST_PASSWORD": password,
        "CLICKHOUSE_CONNECT_TEST_DOCKER": "False",
        "CLICKHOUSE_CONNECT_TEST_CLOUD": "False",
    }
    command = [
        args.python,
        "-m",
        "pytest",
        "tests/integration_tests",
        "--ignore=tests/integration_tests/test_sqlalchemy",
        "-o",
        "addopts=",  # the suite's pyproject asks for xdist (-n 4): run serially on 2 cores
        "-o",
        "log_cli=false",
        "-o",
        "asyncio_default_fixture_loop_scope=session",  # from the suite's pyproject
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-q",
        "-rfE",
        # pytest's own traceback rendering ast-parses the failing test's source, which trips
        # a CPython 3.11.7 bug ("AST constructor recursion depth mismatch") and stops the run.
        "--tb=native",
        f"--timeout={args.timeout}",
        f"--junitxml={junit}",
    ]
    if args.keyword:
        command += ["-k", args.keyword]
    command += extra
    try:
        subprocess.run(command, cwd=root, env=env, check=False)
    finally:
        code = stop_endpoint(proc)
    if code != 0:
        print(f"endpoint exited with {code}; log: {log_path}", file=sys.stderr)
    if not junit.is_file():
        print(f"the suite produced no report; endpoint log: {log_path}", file=sys.stderr)
        return 1
    counts, failing = summarize(junit)
    if failing:
        print("\nfailing:")
        for name in failing:
            print(f"  {name}")
    if args.keep:
        print(f"\nendpoint log and junit report kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nsuite: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
