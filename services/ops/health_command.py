"""CLI of stream health: ``casestream health``, ``casestream dlq list|show|replay``, ``ops``.

Registered in ``services/cli.py`` (``_register_area_commands``). Only click is imported at module
level, so ``casestream --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
import time

import click

CHECK_NAMES = (
    "broker",
    "registry",
    "clickhouse",
    "lag",
    "throughput",
    "dlq",
    "freshness",
    "sequence_gaps",
    "latency",
    "rollups",
)


def _settings():
    from services.settings import Settings

    return Settings.from_env()


def _dump(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# --------------------------------------------------------------------------- health


@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option(
    "--check",
    "checks",
    multiple=True,
    type=click.Choice(CHECK_NAMES),
    help="evaluate only these checks (repeatable); default: all",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="consumer group(s) whose lag to check; default: the worker's",
)
@click.option(
    "--probe", is_flag=True, help="also send one latency probe now and wait for it (up to 60 s)"
)
@click.option("--strict", is_flag=True, help="exit 1 on warnings too")
@click.option("-v", "--verbose", is_flag=True, help="figures below the checks")
def health(
    as_json: bool,
    checks: tuple[str, ...],
    groups: tuple[str, ...],
    probe: bool,
    strict: bool,
    verbose: bool,
) -> None:
    """Is the stream healthy? Broker, registry, ClickHouse, lag, DLQ, freshness, latency...

    Thresholds come from CASESTREAM_HEALTH_* settings (`casestream settings`). Exit status 0
    when healthy, 1 when any check fails (or warns, with --strict).
    """
    import logging

    from services.ops.health import format_text, report

    # An unreachable ClickHouse is reported by the check; its client's retry warnings are noise.
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)
    settings = _settings()
    measured = None
    if probe:
        from services.ops.probe import measure

        try:
            measured = measure(settings)
        except Exception as exc:  # noqa: BLE001 - reported, the other checks still run
            measured = {"error": str(exc)}
    rep = report(settings, only=checks or None, groups=groups or None)
    if measured is not None:
        rep["probe"] = measured
    if as_json:
        _dump(rep)
    else:
        click.echo(format_text(rep, verbose=verbose))
        if measured is not None:
            latency = measured.get("latency_seconds")
            click.echo(
                f"  probe {measured.get('probe_id', '?')}: "
                + (
                    f"{latency:.2f}s end to end"
                    if latency is not None
                    else f"not visible ({measured.get('error', 'timeout')})"
                )
            )
    bad = {"fail"} | ({"warn"} if strict else set())
    sys.exit(1 if rep["status"] in bad else 0)


# --------------------------------------------------------------------------- dlq


@click.group("dlq")
def dlq() -> None:
    """Dead-lettered events: list, show, and replay them after a fix."""


def _filters(func):
    func = click.option("--reason", default=None, help="only this reason (e.g. invalid_event)")(
        func
    )
    func = click.option("--agency", default=None, help="only this agency (from the source topic)")(
        func
    )
    func = click.option(
        "--since-minutes",
        type=float,
        default=None,
        help="only entries dead-lettered within the last N minutes",
    )(func)
    return func


def _selected(settings, reason, agency, since_minutes, ids=()):
    from services.ops import dlq as dlq_mod

    since_ms = None
    if since_minutes is not None:
        since_ms = int((time.time() - since_minutes * 60) * 1000)
    if ids:
        entries = dlq_mod.read_entries(
            settings, limit=None, only=[dlq_mod.parse_id(i) for i in ids]
        )
    else:
        entries = dlq_mod.read_entries(settings, limit=None)
    return dlq_mod.select(entries, reason=reason, agency=agency, since_ms=since_ms)


@dlq.command("list")
@_filters
@click.option("--limit", default=50, show_default=True, help="newest N entries (0: all)")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(reason, agency, since_minutes, limit: int, as_json: bool) -> None:
    """Dead letters, newest first: id, time, reason, agency, source, replayed?, detail."""
    from services.ops import dlq as dlq_mod

    settings = _settings()
    entries = _selected(settings, reason, agency, since_minutes)
    try:
        records = dlq_mod.load_records(settings)
    except Exception:  # noqa: BLE001 - ClickHouse down: list without replay state
        records = None
    shown = entries[::-1][:limit] if limit else entries[::-1]
    rows = []
    for e in shown:
        row = e.summary()
        row["replayed"] = records.by_source(e) if records else None
        rows.append(row)
    if as_json:
        _dump(
            {
                "total": len(entries),
                "shown": len(rows),
                "counts": dlq_mod.counts(entries),
                "entries": rows,
            }
        )
        return
    click.echo(f"{len(entries)} dead letters" + (f", newest {len(rows)}:" if rows else ""))
    for r in rows:
        source = f"{r['source_topic']}[{r['source_partition']}]@{r['source_offset']}"
        mark = f" [{r['replayed']}]" if r["replayed"] else ""
        detail = r["detail"].replace("\n", " ")
        click.echo(
            f"  {r['id']:<8} {r['rejected_at'] or '':<29} {r['reason']:<16} "
            f"{r['agency']:<12} {source}{mark}\n           {detail[:150]}"
        )


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(entry_id: str, as_json: bool) -> None:
    """Everything about one dead letter (ENTRY_ID = <partition>:<offset> from `dlq list`)."""
    from services.ops import dlq as dlq_mod

    settings = _settings()
    try:
        entry = dlq_mod.get_entry(settings, entry_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if entry is None:
        click.secho(f"error: no DLQ entry {entry_id}", fg="red", err=True)
        sys.exit(1)
    details = dlq_mod.entry_details(settings, entry)
    if as_json:
        _dump(details)
        return
    for key in (
        "id",
        "rejected_at",
        "reason",
        "field",
        "detail",
        "agency",
        "source_topic",
        "source_partition",
        "source_offset",
        "key",
        "value_bytes",
        "replayed",
    ):
        click.echo(f"{key:>17}: {details.get(key)}")
    verdict = details["now"]
    click.echo(
        f"{'validates now':>17}: "
        + (
            "yes (replayable)"
            if verdict["valid"]
            else f"no: {verdict['reason']}: {verdict['detail']}"
        )
    )
    if details.get("event"):
        click.echo(
            "            event: " + json.dumps(details["event"], ensure_ascii=False, default=str)
        )
    else:
        click.echo(f"            event: not decodable ({details.get('decode_error')})")
    click.echo(f"        value hex: {details['value_hex']}")


@dlq.command("replay")
@_filters
@click.option("--id", "ids", multiple=True, help="only these entry ids (repeatable)")
@click.option("--dry-run", is_flag=True, help="say what would be replayed, produce nothing")
@click.option(
    "--force",
    is_flag=True,
    help="ignore earlier replays (may duplicate; the worker still dedups by event_id)",
)
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(
    reason, agency, since_minutes, ids, dry_run: bool, force: bool, as_json: bool
) -> None:
    """Re-publish dead letters whose event now validates, each at most once.

    Fix the cause first (e.g. add the agency to the reference data), restart the worker with
    the fix, then replay with the same reference data (CASESTREAM_SCHEMAS_DIR). Each replayed
    entry is recorded in ClickHouse (dlq_replays), so replaying again does nothing.
    Exit 1 when a replay could not be delivered.
    """
    from services.ops import dlq as dlq_mod

    settings = _settings()
    entries = _selected(settings, reason, agency, since_minutes, ids)
    result = dlq_mod.replay(settings, entries, dry_run=dry_run, force=force)
    if as_json:
        _dump(result.as_dict())
    else:
        verb = "would replay" if dry_run else "replayed"
        if dry_run:
            done = [d.as_dict() for d in result.decisions if d.action == "replay"]
        else:
            done = result.replayed
        for info in done:
            click.echo(
                f"  {verb} {info['id']} ({info['agency']}, {info['reason']}) event "
                f"{info['event_id']} → {info['source_topic']}"
            )
        problems = [d for d in result.decisions if d.action in ("still_invalid", "failed")]
        for d in problems[:20]:
            click.echo(f"  {d.action:<14} {d.entry.id}: {d.detail[:150]}")
        if len(problems) > 20:
            click.echo(f"  … and {len(problems) - 20} more (see --json)")
        tally = ", ".join(f"{k} {v}" for k, v in sorted(result.tally().items())) or "nothing"
        click.echo(f"{len(entries)} entries: {tally}")
    sys.exit(1 if result.tally().get("failed") else 0)


# --------------------------------------------------------------------------- ops


@click.group("ops")
def ops() -> None:
    """Operations: the status page and latency probes."""


@ops.command("probe")
@click.option("--timeout", default=60.0, show_default=True)
def ops_probe(timeout: float) -> None:
    """Send one latency probe and wait until its row is visible in ClickHouse."""
    from services.ops.probe import send_probe, wait_visible

    settings = _settings()
    probe_id, _ = send_probe(settings, "cli")
    latency = wait_visible(settings, probe_id, timeout)
    if latency is None:
        click.secho(
            f"probe {probe_id} not visible after {timeout:.0f}s (is the worker running?)",
            fg="red",
            err=True,
        )
        sys.exit(1)
    click.echo(f"probe {probe_id}: {latency:.3f}s from Kafka to ClickHouse")


@ops.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option(
    "--interval",
    default=5.0,
    show_default=True,
    help="seconds between two collections of the figures",
)
def ops_serve(host: str, port: int, interval: float) -> None:
    """Serve the status page (/ , JSON at /api/status) until Ctrl-C."""
    from services.ops.status_page import serve

    serve(_settings(), host=host, port=port, interval=interval)
