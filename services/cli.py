"""The `casestream` command line: one entry point, one subcommand per job.

Heavy imports (faust, prefect, chdb) happen inside the commands so `casestream --help` is instant.
Every command reads the same settings object (services/settings.py); see `casestream settings`.
"""

from __future__ import annotations

import json
import sys

import click

from services.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """casestream: event-sourced case coordination data platform.

    Agencies publish Avro case events to Kafka; the worker derives transfers, lags and case
    states into ClickHouse; Prefect flows build provincial and national rollups and reports.
    Configuration comes from CASESTREAM_* environment variables (`casestream settings`).
    """


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
