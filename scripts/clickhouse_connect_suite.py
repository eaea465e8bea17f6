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
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: the repository's packages

from services.settings import Settings  # noqa: E402
from services.stack import clickhouse  # noqa: E402
from services.stack.process import free_ports, wait_until  # noqa: E402

SUITE_USER = "suite_rw"


def endpoint_settings(workdir: Path, port: int, password: str) -> Settings:
    """A private stack home holding only the endpoint: its data, its users file (the platform's
    own, written by services/stack/clickhouse.py, with the suite's read-write user) and log."""
    return dataclasses.replace(
        Settings.from_env(),
        home=workdir,
        clickhouse_url=f"http://127.0.0.1:{port}",
        clickhouse_user=SUITE_USER,
        clickhouse_password=password,
    )


def start_endpoint(settings: Settings) -> None:
    """Start the endpoint the way `casestream stack up` does and wait for its /ping."""
    clickhouse.start(settings)
    wait_until(
        lambda: clickhouse.is_ready(settings),
        timeout=60,
        what="endpoint",
        proc=clickhouse.process(settings),
        interval=0.2,
    )


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
    parser.add_argument("--python", default=sys.executable, help="interpreter of the suite")
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
    (port,) = free_ports(1)
    settings = endpoint_settings(workdir, port, password)
    log_path = clickhouse.process(settings).log_file
    start_endpoint(settings)
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
        clickhouse.process(settings).stop()
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
