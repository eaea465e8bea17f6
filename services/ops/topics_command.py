"""`casestream topics`: the retention of the topics that hold the record, shown and fixed."""

from __future__ import annotations

import sys

import click


@click.group("topics")
def topics() -> None:
    """Topics holding the record (agency topics, the dead-letter topic) and their retention."""


@topics.command("retention")
def retention_cmd() -> None:
    """List every topic holding the record with its retention; exit 1 if any would delete."""
    from services.ops.topics import record_retention
    from services.settings import Settings

    found = record_retention(Settings.from_env())
    finite = [r for r in found if r.finite]
    for r in found:
        mark = click.style("DELETES ", fg="red") if r.finite else "forever "
        click.echo(f"{mark} {r.describe()}")
    click.echo(f"{len(found)} topics holding the record, {len(finite)} with a finite retention")
    sys.exit(1 if finite else 0)


@topics.command("keep-forever")
@click.option("--dry-run", is_flag=True, help="only list what would change")
def keep_forever_cmd(dry_run: bool) -> None:
    """Set retention.ms=-1 and retention.bytes=-1 on every record topic that would delete.

    Idempotent: topics already kept forever are left alone. Events already deleted by retention
    are gone (the log start offset says how many); this stops further deletion.
    """
    from services.ops.topics import finite_retention, keep_forever
    from services.settings import Settings

    settings = Settings.from_env()
    finite = finite_retention(settings)
    if not finite:
        click.echo("every topic holding the record is kept forever; nothing to change")
        return
    for r in finite:
        click.echo(f"{'would change' if dry_run else 'changing'} {r.describe()}")
    if dry_run:
        return
    changed = keep_forever(settings, [r.topic for r in finite])
    left = finite_retention(settings)
    click.echo(f"{len(changed)} topics now kept forever")
    if left:
        click.secho(f"error: still finite: {', '.join(r.topic for r in left)}", fg="red", err=True)
        sys.exit(1)
