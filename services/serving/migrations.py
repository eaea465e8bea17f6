"""Versioned ClickHouse schema: infra/clickhouse/migrations/NNNN_name.sql applied in order.

Applied versions are recorded in ``schema_migrations`` so `casestream migrate` is idempotent and
a rebuild can apply the same files to a fresh database. A statement ends with ``;`` at the end of
a line (so semicolons inside strings and comments are safe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.clickhouse_topology import Topology
from services.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "clickhouse" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
    "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        text = "\n".join(
            line
            for line in self.path.read_text().splitlines()
            if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", text) if s.strip()]


def available() -> list[Migration]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name {path.name!r} must look like 0001_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {MIGRATIONS_DIR}: {versions}")
    return found


def migrate(settings: Settings, database: str | None = None, log=print) -> list[Migration]:
    """Create the database if needed and apply every migration not yet applied; returns those.

    Each statement is placed by the configured topology (services/clickhouse_topology.py): as
    written on one server or ClickHouse Cloud, ``ON CLUSTER`` with replicated (and sharded)
    engines on a cluster.
    """
    database = database or settings.clickhouse_database
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ValueError(f"database name {database!r} is not a plain identifier")
    topology = settings.clickhouse_topology
    create_database, create_table = _bootstrap(topology, database)
    admin = settings.clickhouse_client(database="default")
    for statement in create_database:
        admin.command(statement)
    client = settings.clickhouse_client(database=database)
    for statement in create_table:
        client.command(statement)
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for migration in available():
        if migration.version in done:
            continue
        for statement in migration.statements():
            for placed in topology.render(statement, database):
                client.command(placed)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        log(f"  applied {migration.path.name} to {database}")
        applied.append(migration)
    if not applied:
        log(f"  {database} is up to date ({len(done)} migrations)")
    return applied


def rendered(settings: Settings, database: str | None = None) -> list[str]:
    """Every statement `migrate` would run on an empty database, as the topology places it
    (`casestream migrate --print`: what a DBA reviews before a cluster deployment)."""
    database = database or settings.clickhouse_database
    topology = settings.clickhouse_topology
    create_database, create_table = _bootstrap(topology, database)
    statements = [*create_database, *create_table]
    for migration in available():
        for statement in migration.statements():
            statements.extend(topology.render(statement, database))
    return statements


def _bootstrap(topology: Topology, database: str) -> tuple[list[str], list[str]]:
    """The database and the applied-versions table, placed by the topology."""
    return (
        topology.render(f"CREATE DATABASE IF NOT EXISTS {database}", database),
        topology.render(MIGRATIONS_TABLE, database),
    )
