"""CLI of the HTTP gateway: ``casestream gateway`` and ``casestream tokens create|list|revoke``.

Registered in ``services/cli.py`` with ``main.add_command(gateway)`` and
``main.add_command(tokens)``.  Heavy imports (fastapi, uvicorn, confluent_kafka) happen inside
the commands so ``casestream --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from services.settings import Settings

TOKENS_FILE_HELP = (
    "token store (default: $CASESTREAM_GATEWAY_TOKENS_FILE, else "
    "$CASESTREAM_HOME/gateway/tokens.json)"
)


def _store(tokens_file: Path | None):
    from services.agency.tokens import TokenStore

    return TokenStore(tokens_file) if tokens_file else TokenStore.for_settings(Settings.from_env())


@click.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8088, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=TOKENS_FILE_HELP,
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1),
    default=None,
    help="larger request bodies get 413 (default: $CASESTREAM_GATEWAY_MAX_BODY_BYTES or 5 MiB)",
)
@click.option(
    "--max-events",
    type=click.IntRange(1),
    default=None,
    help="larger batches get 413 (default: $CASESTREAM_GATEWAY_MAX_EVENTS or 10000)",
)
@click.option(
    "--metrics-addr",
    default=None,
    help="admin address of /metrics, host:port or 'off' (default: "
    "$CASESTREAM_GATEWAY_METRICS_ADDR or 127.0.0.1:9465)",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def gateway(
    host: str,
    port: int,
    tokens_file: Path | None,
    max_body_bytes: int | None,
    max_events: int | None,
    metrics_addr: str | None,
    log_level: str,
) -> None:
    """Run the HTTP gateway: agencies POST JSON event batches to /v1/events.

    Each agency authenticates with its own token (`casestream tokens create <agency_id>`);
    accepted events are stored in a durable outbox and produced as Avro to the agency's
    Kafka topic. API docs at http://HOST:PORT/docs, health at /healthz; metrics on the admin
    address (--metrics-addr, 127.0.0.1:9465 by default).
    """
    import logging
    import os

    from services.agency.gateway import DEFAULT_METRICS_ADDR, GatewayConfig, serve
    from services.agency.tokens import TokenStoreError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpx2"):  # one INFO line per registry call
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = Settings.from_env()
    store = _store(tokens_file)
    try:
        active = store.agencies()
    except TokenStoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        config = GatewayConfig.from_env(max_body_bytes=max_body_bytes, max_events=max_events)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"casestream gateway on http://{host}:{port} (docs: /docs); tokens: {store.path} "
        f"({len(active)} agencies with active tokens)",
        err=True,
    )
    if metrics_addr is None:
        metrics_addr = os.environ.get("CASESTREAM_GATEWAY_METRICS_ADDR") or DEFAULT_METRICS_ADDR
    serve(
        settings,
        host,
        port,
        tokens=store,
        config=config,
        log_level=log_level,
        metrics_addr=metrics_addr,
    )


@click.group("tokens")
@click.option(
    "--file",
    "tokens_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=TOKENS_FILE_HELP,
)
@click.pass_context
def tokens(ctx: click.Context, tokens_file: Path | None) -> None:
    """Create, list and revoke the agencies' API tokens of the HTTP gateway.

    Tokens are stored hashed (SHA-256); a token is shown once, when created. A running gateway
    picks up new and revoked tokens on the next request.
    """
    ctx.obj = tokens_file


@tokens.command("create")
@click.argument("agency_id")
@click.option("--label", default=None, help="free text to recognise the token by (system, owner)")
@click.pass_obj
def tokens_create(tokens_file: Path | None, agency_id: str, label: str | None) -> None:
    """Create a token for AGENCY_ID (e.g. 20-INSP) and print it once.

    The token alone goes to stdout (`TOKEN=$(casestream tokens create 20-INSP)`); it cannot be
    shown again, only revoked and replaced.
    """
    from services.agency.tokens import TokenStoreError

    store = _store(tokens_file)
    try:
        token, record = store.create(agency_id, label)
    except TokenStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"created token {record.id} for {record.agency_id} in {store.path}; "
        f"store it now, it is not shown again:",
        err=True,
    )
    click.echo(token)


@tokens.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="include revoked tokens")
@click.option("--agency", "agency_id", default=None, help="only this agency's tokens")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def tokens_list(
    tokens_file: Path | None, include_revoked: bool, agency_id: str | None, as_json: bool
) -> None:
    """List tokens (ids, agencies, dates; never the tokens themselves)."""
    from services.agency.tokens import TokenStoreError

    try:
        records = _store(tokens_file).records(include_revoked=include_revoked)
    except TokenStoreError as exc:
        raise click.ClickException(str(exc)) from None
    if agency_id:
        records = [r for r in records if r.agency_id == agency_id]
    rows = [
        {
            "id": r.id,
            "agency_id": r.agency_id,
            "created_at": r.created_at,
            "revoked_at": r.revoked_at,
            "label": r.label,
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no tokens", err=True)
        return
    click.echo(f"{'ID':<12}{'AGENCY':<14}{'CREATED':<22}{'REVOKED':<22}LABEL")
    for r in rows:
        click.echo(
            f"{r['id']:<12}{r['agency_id']:<14}{r['created_at']:<22}"
            f"{r['revoked_at'] or '-':<22}{r['label'] or ''}"
        )


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_obj
def tokens_revoke(tokens_file: Path | None, token_id: str) -> None:
    """Revoke the token TOKEN_ID (see `casestream tokens list`; the token itself works too)."""
    from services.agency.tokens import TokenStoreError

    try:
        record = _store(tokens_file).revoke(token_id)
    except TokenStoreError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyError:
        click.echo(f"error: no token with id {token_id[:16]!r}", err=True)
        sys.exit(1)
    click.echo(f"revoked token {record.id} of {record.agency_id} at {record.revoked_at}")
