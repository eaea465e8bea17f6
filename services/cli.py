"""The `casestream` command line: one entry point, one subcommand per job.

Heavy imports (faust, prefect, chdb) happen inside the commands so `casestream --help` is instant.
Every command reads the same settings object (services/settings.py); see `casestream settings`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from services.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


class _Main(click.Group):
    """The root group: a part of the stack that is down ends a command in one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's own exits are not Exceptions of this kind
            if isinstance(exc, click.exceptions.ClickException | click.exceptions.Exit):
                raise
            from services.settings import SettingsError

            if isinstance(exc, SettingsError):  # e.g. production with a default password
                _fail(str(exc))
            if ctx.meta.get("casestream.debug"):
                raise
            from services.stack.unreachable import explain

            try:
                line = explain(exc, _settings())
            except Exception:  # noqa: BLE001 - bad settings: the original error says more
                line = None
            if line is None:
                raise
            _fail(line)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar="CASESTREAM_DEBUG",
    help="show the full traceback when a part of the stack is not answering",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """casestream: event-sourced case coordination data platform.

    Agencies publish Avro case events to Kafka; the worker derives transfers, lags and case
    states into ClickHouse; Prefect flows build provincial and national rollups and reports.
    Configuration comes from CASESTREAM_* environment variables (`casestream settings`).
    """
    import logging
    import os
    from pathlib import Path

    from services.private_files import private_dir

    # Files a command writes hold events, tokens or audit records (the gateway's token lock, the
    # import audit, demo histories were 0644 under a shell's umask 022): private to the user.
    os.umask(0o077)
    from services.stack.prefect import prefect_env

    ctx.meta["casestream.debug"] = debug
    if not debug:
        # clickhouse-connect logs "Unexpected Http Driver Exception" before raising; the raised
        # error is reported (in one line when ClickHouse is down), so the log line only repeats it.
        logging.getLogger("clickhouse_connect.driver._backend.http_sync").setLevel(logging.CRITICAL)
    env = prefect_env(_settings())
    # Prefect warns on every command when its home does not exist yet (a fresh CASESTREAM_HOME).
    # Private (0700): it holds Prefect's database, flow parameters and results.
    private_dir(Path(env["PREFECT_HOME"]))
    _apply_env(env)


@main.command("settings")
def show_settings() -> None:
    """Print the effective settings (passwords hidden)."""
    click.echo(repr(_settings()).replace(", ", ",\n  "))


# --------------------------------------------------------------------------- stack
@main.group()
def stack() -> None:
    """Start, check and stop the local stack (Kafka, Apicurio, ClickHouse endpoint, Prefect)."""


PARTS = click.Choice(["kafka", "registry", "clickhouse", "prefect"])


@stack.command("up")
@click.argument("parts", nargs=-1, type=PARTS)
def stack_up(parts: tuple[str, ...]) -> None:
    """Start the local stack (or only PARTS) and wait until each part answers. Idempotent."""
    from services.stack import manager

    try:
        manager.up(_settings(), parts=list(parts) or None)
    except (RuntimeError, TimeoutError) as exc:
        _fail(str(exc))


@stack.command("down")
@click.argument("parts", nargs=-1, type=PARTS)
def stack_down(parts: tuple[str, ...]) -> None:
    """Stop the local stack (or only PARTS); data stays under CASESTREAM_HOME."""
    from services.stack import manager

    manager.down(_settings(), parts=list(parts) or None)


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def stack_status(as_json: bool) -> None:
    """Show each part's state, pid, address and log file. Exit 1 unless all are running."""
    from services.stack import manager

    parts = manager.status(_settings())
    if as_json:
        click.echo(json.dumps([{**p.__dict__, "state": p.state} for p in parts], indent=2))
    else:
        for p in parts:
            colour = "green" if p.state.startswith("running") else "yellow"
            click.echo(
                f"{p.name:<11}{click.style(p.state, fg=colour):<20} pid={p.pid or '-':<8} "
                f"{p.address:<45} log={p.log}"
            )
    sys.exit(0 if all(p.ready for p in parts) else 1)


@stack.command("fetch")
def stack_fetch() -> None:
    """Download the Kafka classpath and Apicurio Registry into the cache (done by `up` too)."""
    from services.stack.fetch import fetch_all

    fetch_all(_settings())


# --------------------------------------------------------------------------- ClickHouse
@main.command("migrate")
@click.option("--database", default=None, help="target database (default: the configured one)")
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="print every statement as the configured deployment would run it (single server, "
    "cluster or Cloud: CASESTREAM_CLICKHOUSE_CLUSTER / _DEPLOYMENT) and run nothing",
)
def migrate_cmd(database: str | None, print_only: bool) -> None:
    """Apply the versioned ClickHouse migrations under infra/clickhouse/migrations.

    Idempotent: applied versions are recorded in `schema_migrations`. On a cluster each
    statement runs ON CLUSTER with Replicated engines (docs/clickhouse-cluster.md).
    """
    from services.serving.migrations import migrate, rendered

    if print_only:
        for statement in rendered(_settings(), database=database):
            click.echo(statement.rstrip() + ";\n")
        return
    migrate(_settings(), database=database)


# --------------------------------------------------------------------------- worker
@main.group()
def worker() -> None:
    """The stream worker: agency topics → validated facts → case state → ClickHouse."""


@worker.command("run")
@click.option("--loglevel", default="info", show_default=True)
def worker_run(loglevel: str) -> None:
    """Run the worker in the foreground until Ctrl-C / SIGTERM."""
    from services.processor.worker import run

    run(_settings(), loglevel=loglevel)


@worker.command("start")
def worker_start() -> None:
    """Start the worker in the background (log under CASESTREAM_HOME/logs/worker.log)."""
    from services.stack import worker as worker_proc

    pid = worker_proc.start(_settings())
    click.echo(f"worker running, pid {pid}")


@worker.command("stop")
def worker_stop() -> None:
    """Stop the background worker (it finishes its batch and commits first)."""
    from services.stack import worker as worker_proc

    click.echo(
        "worker stopped" if worker_proc.process(_settings()).stop() else "worker was not running"
    )


@main.command("rebuild")
@click.option(
    "--switch/--no-switch",
    default=True,
    show_default=True,
    help="exchange the rebuilt tables with the live ones when they are complete",
)
@click.option(
    "--timeout",
    default=3600,
    show_default=True,
    help="seconds to wait for the live worker to catch up before each comparison",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="replay processes (reading, then deriving)  [default: cores, at most 2]",
)
@click.option(
    "--spill-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the replayed facts are spilled by case, ~0.3 kB per event, removed "
    "afterwards  [default: <home>/rebuild/<stamp>]",
)
def rebuild_cmd(switch: bool, timeout: int, processes: int | None, spill_dir: Path | None) -> None:
    """Replay every topic from the beginning into fresh tables, compare, and switch.

    Every agency topic is read from its first offset to its end at the start, validated as
    the intake does, spilled by case to disk and derived case by case into a new database
    <db>_rebuild_<stamp> (progress is printed). What was published meanwhile is replayed
    before the comparison. The live tables and the live worker keep running meanwhile. Exit 1
    when the rebuilt tables differ from the live ones (they are then not switched).
    """
    from services.ops.rebuild import rebuild

    result = rebuild(
        _settings(), switch=switch, timeout=timeout, processes=processes, spill_dir=spill_dir
    )
    if not result.equal:
        _fail("the rebuilt tables differ from the live ones (see above)")


# --------------------------------------------------------------------------- rollups
@main.group()
def rollups() -> None:
    """Build the provincial and national rollups (Prefect flows)."""


@rollups.command("build")
@click.option(
    "--from",
    "first",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="first day of the range (its period is included)",
)
@click.option(
    "--to",
    "last",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="last day of the range (its period is included)",
)
@click.option(
    "--period",
    "periods",
    multiple=True,
    type=click.Choice(["month", "quarter", "year"]),
    help="default: all three",
)
def rollups_build(first, last, periods) -> None:
    """Rebuild rollups for every period in a range (idempotent)."""
    from flows.rollups import build_rollups

    written = build_rollups(first.date(), last.date(), list(periods) or None)
    for key, count in written.items():
        click.echo(f"  {key:<32} {count} rows")


def _apply_env(env: dict[str, str]) -> None:
    """Prefect reads its settings from the environment when first imported/used."""
    import os

    for key, value in env.items():
        if key in ("PREFECT_API_URL", "PREFECT_HOME") or key not in os.environ:
            os.environ[key] = value


# --------------------------------------------------------------------------- agencies
@main.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--agency",
    default=None,
    help="publish as this agency only (rows of other agencies are rejected); "
    "default: operator import, each row to its own agency's topic",
)
@click.option("--max-errors", default=50, show_default=True, help="rejected lines to print")
def publish_cmd(file: str, agency: str | None, max_errors: int) -> None:
    """Bulk-import digitised records from a JSONL or CSV FILE.

    Bad rows are reported with their line number, field and value; good rows are published.
    Importing the same file again publishes nothing new (idempotent by event_id).
    Exit status 1 when any row was rejected or is still waiting in the outbox.
    """
    from services.agency.bulk_import import format_summary, import_file, print_progress

    summary = import_file(file, _settings(), only_agency=agency, progress=print_progress)
    click.echo(format_summary(summary, max_errors), nl=False)
    sys.exit(1 if summary.rejected or summary.pending else 0)


def _register_area_commands() -> None:
    """Commands that live next to the code they drive (each module imports only click)."""
    from services.agency.gateway_command import gateway, tokens
    from services.agency.generate_command import generate
    from services.contracts.schemas_command import schemas
    from services.demo import demo
    from services.ops.bench_command import bench
    from services.ops.health_command import dlq, health, ops
    from services.ops.topics_command import topics
    from services.ops.verify_command import verify
    from services.serving.analysts_command import analysts
    from services.serving.report_command import flows, report

    for command in (
        gateway,
        tokens,
        generate,
        demo,
        report,
        flows,
        health,
        dlq,
        ops,
        schemas,
        bench,
        topics,
        verify,
        analysts,
    ):
        main.add_command(command)


_register_area_commands()

if __name__ == "__main__":
    main()
