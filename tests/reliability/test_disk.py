"""Nothing on disk that holds events, tokens or passwords is readable by another local user.

An attacker with a shell on the host (another service's account) tries to read the outbox's
SQLite files (full events), the chain store, the endpoint's users file (passwords), chDB's data,
Kafka's log segments and Prefect's database. Every such file must be 0600 and every directory
0700: no group or other bit at all. The unit tests run under the usual umask 022, the one that
made everything 0644 before; the integration tests walk the real stack's home.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.agency.chain_store import ChainStore
from services.agency.outbox import Outbox, storable_form
from services.contracts.events import parse_event
from services.contracts.examples import example_event
from services.private_files import private_file, repair
from services.settings import Settings


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The default umask of most systems: what a library caller (an agency's SDK) runs under."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_paths(root: Path) -> list[str]:
    """Every file or directory under ``root`` (itself included) that group or others can use."""
    found = []
    paths = [root]
    for directory, dirs, files in os.walk(root):
        paths += [Path(directory) / name for name in dirs + files]
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:  # a server removed it meanwhile
            continue
        if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            found.append(f"{stat.S_IMODE(info.st_mode):04o} {path}")
    return found


def _events(agency: str, count: int) -> list[dict]:
    tag = uuid.uuid4().hex[:8]
    return [
        example_event(
            "stage_changed",
            event_id=str(uuid.uuid4()),
            agency_id=agency,
            case_id=f"{tag}:{agency}/2024/{n:04d}",
            sequence=None,
        )
        for n in range(count)
    ]


# =========================================================================== unit


@pytest.mark.unit
def test_outbox_and_its_wal_and_shm_are_private_under_a_lax_umask(tmp_path, lax_umask):
    outbox = Outbox(tmp_path / "outbox" / "20-INSP.sqlite")
    try:
        outbox.add_many(
            [(e["event_id"], storable_form(parse_event(e))) for e in _events("20-INSP", 3)]
        )
        files = sorted((tmp_path / "outbox").iterdir())
        names = {p.name for p in files}
        assert {"20-INSP.sqlite", "20-INSP.sqlite-wal", "20-INSP.sqlite-shm"} <= names
        assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
        assert _mode(tmp_path / "outbox") == 0o700
    finally:
        outbox.close()


@pytest.mark.unit
def test_chain_store_is_private_under_a_lax_umask(tmp_path, lax_umask):
    store = ChainStore(tmp_path / "chain" / "chain.sqlite")
    with store.assigning([parse_event(e) for e in _events("20-INSP", 2)]):
        pass
    store.close()
    files = sorted((tmp_path / "chain").iterdir())
    assert files, "the chain store wrote nothing"
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
    assert _mode(tmp_path / "chain") == 0o700


@pytest.mark.unit
def test_an_outbox_left_world_readable_by_an_older_version_is_made_private(tmp_path, lax_umask):
    path = tmp_path / "20-INSP.sqlite"
    Outbox(path).close()
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    Outbox(path).close()
    assert loose_paths(path) == []


@pytest.mark.unit
def test_repair_takes_group_and_other_access_away_and_is_idempotent(tmp_path, lax_umask):
    home = tmp_path / "home"
    (home / "kafka" / "data" / "topic-0").mkdir(parents=True)
    (home / "kafka" / "data" / "topic-0" / "00.log").write_text("events")
    (home / "bin").mkdir()
    tool = home / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (home / "link").symlink_to(outside)
    assert loose_paths(home)  # the lax umask made it readable by everyone

    changed = repair(home)

    assert changed and loose_paths(home) == []
    assert _mode(tool) == 0o700  # the owner keeps its executable bit
    assert _mode(outside) == 0o644  # a link out of the home is not followed
    assert repair(home) == []  # idempotent


@pytest.mark.unit
def test_stack_up_repairs_only_what_the_platform_keeps_in_a_shared_home(tmp_path, lax_umask):
    """``CASESTREAM_HOME=~``: the operator's own files there are not the platform's to change."""
    from services.stack.manager import HOME_ENTRIES

    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "00.log").write_text("events")
    (tmp_path / "public_html").mkdir()
    (tmp_path / "public_html" / "index.html").write_text("hello")

    repair(tmp_path, HOME_ENTRIES)

    assert loose_paths(tmp_path / "kafka") == [] and _mode(tmp_path) == 0o700
    assert _mode(tmp_path / "public_html") == 0o755
    assert _mode(tmp_path / "public_html" / "index.html") == 0o644


@pytest.mark.unit
def test_private_file_refuses_to_follow_a_planted_symlink(tmp_path):
    """A user who can write the directory plants a link to make us chmod or write elsewhere."""
    target = tmp_path / "victim"
    target.write_text("x")
    target.chmod(0o644)
    (tmp_path / "users.json").symlink_to(target)
    with pytest.raises(OSError):
        private_file(tmp_path / "users.json")
    assert _mode(target) == 0o644


# =========================================================================== integration


@pytest.mark.integration
def test_nothing_under_the_stack_home_is_readable_by_others(stack: Settings, lax_umask):
    """The whole home of a real stack after publishing through real Kafka and writing chDB."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from services.agency.publisher import Publisher
    from services.stack import manager

    manager.up(stack, log=lambda m: None)  # idempotent: everything already runs
    # Files the servers create from now on: a new topic's log dir (Kafka), a table's parts (chDB).
    topic = f"hardening-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(stack.kafka_client_config())
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    client = stack.clickhouse_client(database="default")
    table = f"hardening_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE TABLE default.{table} (s String) ENGINE = MergeTree ORDER BY s")
    client.command(f"INSERT INTO default.{table} VALUES ('suspect name')")
    # An agency's publisher on the same host: its outbox and the host's chain store.
    with Publisher("20-INSP", stack) as publisher:
        publisher.publish_many(_events("20-INSP", 3))
        assert publisher.flush(timeout=60) == 0
    try:
        partition_dir = stack.home / "kafka" / "data" / f"{topic}-0"
        assert partition_dir.is_dir() and _mode(partition_dir) == 0o700
        assert (stack.home / "outbox" / "20-INSP.sqlite").exists()
        assert (stack.home / "chain" / "chain.sqlite").exists()
        assert loose_paths(stack.home) == []
        assert _mode(stack.home) == 0o700
    finally:
        client.command(f"DROP TABLE IF EXISTS default.{table}")
        admin.delete_topics([topic])


@pytest.mark.integration
def test_stack_up_repairs_a_home_left_world_readable(stack: Settings):
    """A home made before these rules (or by hand) is fixed by the next `stack up`."""
    from services.stack import manager

    users = stack.home / "clickhouse" / "users.json"
    users.chmod(0o644)
    (stack.home / "kafka").chmod(0o755)
    stack.home.chmod(0o755)
    try:
        manager.up(stack, log=lambda m: None)
        assert _mode(users) == 0o600
        assert _mode(stack.home / "kafka") == 0o700
        assert _mode(stack.home) == 0o700
    finally:
        stack.home.chmod(0o700)
        (stack.home / "kafka").chmod(0o700)
        users.chmod(0o600)


@pytest.mark.unit
def test_a_command_run_from_a_lax_shell_writes_private_files(tmp_path, lax_umask):
    """A history (events) written by `casestream generate` from a shell with umask 022."""
    import subprocess
    import sys

    out = tmp_path / "history.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "generate", "--cases", "2", "-q", "-o", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "CASESTREAM_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(out) == 0o600


@pytest.mark.unit
def test_making_an_open_database_private_keeps_its_connections_locks(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it. Opening
    an existing database to fix its mode dropped a live connection's shared lock; another
    process (a `casestream publish`, the gateway) then believed it was the last user, deleted
    the WAL on close, and the suite's shared chain store became "database disk image is
    malformed"."""
    import sqlite3
    import subprocess
    import sys

    from services.private_files import private_sqlite

    path = tmp_path / "chain.sqlite"
    live = sqlite3.connect(path, isolation_level=None)
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("CREATE TABLE t (x)")
    live.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    private_sqlite(path)  # as a second publisher's store does when it opens the same file
    other = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('INSERT INTO t VALUES (-1)'); c.close()"
    )
    subprocess.run([sys.executable, "-c", other, str(path)], check=True, timeout=60)
    assert path.with_name("chain.sqlite-wal").exists()  # the live connection still uses it
    live.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (201,)
    assert _mode(path) == 0o600
