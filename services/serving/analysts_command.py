"""`casestream analysts`: give a steering committee access to its own province's figures.

    casestream analysts add hanoi --province 01       # sees province 01's rows only
    casestream analysts add ministry --national       # sees every row
    casestream analysts add hanoi --province 01 --print-sql   # ClickHouse's own statements
    casestream analysts list
    casestream analysts remove hanoi

On the local endpoint an analyst is a read-only user granted one database: the province's
database of filtered views (services/serving/access.py), or the platform database for a national
analyst. The running endpoint reloads its users on SIGHUP, so sessions are not dropped. On a
production ClickHouse, `--print-sql` prints (and `--apply-sql` runs, as the platform user, who
needs the ACCESS MANAGEMENT right) CREATE ROLE / ROW POLICY / GRANT / CREATE USER statements.

Passwords: generated (shown once) unless `--password-file` gives one; only the SHA-256 is kept.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from services.serving import access


def _settings():  # noqa: ANN202 - lazy import keeps `casestream --help` instant
    from services.settings import Settings

    return Settings.from_env()


def _scope(province: str | None, national: bool) -> access.Scope:
    if national == (province is not None):
        raise click.UsageError("give exactly one of --province CODE or --national")
    try:
        return access.national() if national else access.province_scope(province or "")
    except access.ScopeError as exc:
        raise click.UsageError(str(exc)) from None


def _password(password_file: Path | None) -> tuple[str, bool]:
    """(password, generated): read from the file, or generated when none is given."""
    if password_file is None:
        return secrets.token_urlsafe(18), True
    text = password_file.read_text(encoding="utf-8").strip()
    if len(text) < 12:
        raise click.UsageError(
            f"--password-file {password_file}: the password must have at least 12 characters"
        )
    return text, False


@click.group()
def analysts() -> None:
    """Analysts and what they see: one province, or the nation."""


@analysts.command("add")
@click.argument("name")
@click.option("--province", metavar="CODE", help="today's province code (e.g. 01, 79)")
@click.option("--national", is_flag=True, help="sees every province and the national rollups")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="read the password from this file (default: generate one and show it once)",
)
@click.option(
    "--print-sql",
    is_flag=True,
    help="print ClickHouse's CREATE ROLE / ROW POLICY / GRANT / CREATE USER statements for "
    "a production ClickHouse and change nothing",
)
@click.option(
    "--apply-sql",
    is_flag=True,
    help="run those statements on the configured ClickHouse (as the platform user)",
)
def add(
    name: str,
    province: str | None,
    national: bool,
    password_file: Path | None,
    print_sql: bool,
    apply_sql: bool,
) -> None:
    """Add analyst NAME who sees only --province CODE's rows (or --national: every row).

    Safe to run twice: an analyst who exists keeps its password unless --password-file is
    given; its scope cannot be changed here (remove it first).
    """
    from services.stack import clickhouse as endpoint

    settings = _settings()
    scope = _scope(province, national)
    try:
        access.check_name(name)
    except access.ScopeError as exc:
        raise click.UsageError(str(exc)) from None
    if name in (settings.clickhouse_user, settings.analyst_user, "default"):
        raise click.UsageError(f"analyst name {name!r} is taken by the platform's own users")
    database = scope.database(settings.clickhouse_database)
    scope_key = "national" if scope.national else str(scope.province)

    if print_sql or apply_sql:
        password, generated = _password(password_file)
        digest = endpoint.sha256_hex(password)
        topology = settings.clickhouse_topology
        statements = access.clickhouse_statements(
            name,
            scope,
            settings.clickhouse_database,
            digest,
            settings.clickhouse_user,
            on_cluster=topology.cluster if topology.on_cluster else "",
        )
        if print_sql:
            for statement in statements:
                click.echo(statement + ";")
        if apply_sql:
            client = settings.clickhouse_client(database="default")
            for statement in statements:
                client.command(statement)
            click.echo(f"applied {len(statements)} statements for {name} ({scope.label})", err=True)
        if generated:
            click.echo(f"-- password of {name} (shown once): {password}", err=True)
        return

    registered = endpoint.read_analysts(settings)
    existing = registered.get(name)
    if existing is not None and existing["scope"] != scope_key:
        raise click.UsageError(
            f"analyst {name!r} already sees {existing['scope']}; "
            f"`casestream analysts remove {name}` first to change it"
        )
    client = settings.clickhouse_client(database="default")
    for statement in access.scope_views(scope, settings.clickhouse_database):
        client.command(statement)
    shown = None
    if existing is None or password_file is not None:
        password, generated = _password(password_file)
        shown = password if generated else None
        digest = endpoint.sha256_hex(password)
    else:
        digest = existing["password_sha256_hex"]
    registered[name] = {"scope": scope_key, "database": database, "password_sha256_hex": digest}
    endpoint.write_analysts(settings, registered)
    reloaded = endpoint.reload_users(settings)
    verb = "updated" if existing is not None else "added"
    click.echo(f"analyst {name} {verb}: sees {scope.label} (database {database})")
    if shown is not None:
        click.echo(f"password (shown once, only its SHA-256 is kept): {shown}")
    if not reloaded:
        click.echo("the local endpoint is not running: it reads the analyst when it starts")


@analysts.command("list")
def list_() -> None:
    """List the analysts and what each sees."""
    from services.stack import clickhouse as endpoint

    registered = endpoint.read_analysts(_settings())
    if not registered:
        click.echo("no analysts (add one with `casestream analysts add NAME --province CODE`)")
        return
    for name, entry in sorted(registered.items()):
        sees = "national" if entry["scope"] == "national" else f"province {entry['scope']}"
        click.echo(f"{name:<24} {sees:<14} database {entry['database']}")


@analysts.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove analyst NAME (it cannot log in any more; the views stay for the others)."""
    from services.stack import clickhouse as endpoint

    settings = _settings()
    registered = endpoint.read_analysts(settings)
    if registered.pop(name, None) is None:
        click.echo(f"no analyst {name!r}; nothing to do")
        return
    endpoint.write_analysts(settings, registered)
    endpoint.reload_users(settings)
    click.echo(f"analyst {name} removed")
