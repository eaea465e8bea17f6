"""`casestream verify`: check every agency's hash chain in the topics (tamper evidence)."""

from __future__ import annotations

import json
import sys

import click


@click.command("verify")
@click.option("--agency", default=None, help="verify only this agency's topic (e.g. 20-INSP)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
@click.option(
    "--no-store",
    is_flag=True,
    help="do not record the run in ClickHouse (health shows the last recorded run)",
)
@click.option(
    "--timeout", default=600.0, show_default=True, help="seconds to read one agency's topic"
)
def verify(agency: str | None, as_json: bool, no_store: bool, timeout: float) -> None:
    """Re-read the agency topics from the start and check each agency's hash chain.

    Reports every altered, inserted, missing or reordered event with its topic, partition and
    offset, and a log start offset above 0 as deleted history. Events written before the chain
    existed are listed as notes. Progress goes to stderr. The run is recorded in ClickHouse
    (table chain_verifications) for `casestream health`.

    Exit status: 0 intact, 1 findings, 2 the verification could not run.
    """
    from services.ops.verify import VerifyError, format_text, store
    from services.ops.verify import verify as run_verify
    from services.settings import Settings

    settings = Settings.from_env()
    try:
        run = run_verify(
            settings,
            agency=agency,
            progress=lambda line: click.echo(line, err=True),
            timeout=timeout,
        )
    except VerifyError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    if not no_store:
        try:
            store(settings, run)
        except Exception as exc:  # noqa: BLE001 - the verdict stands without the record
            click.secho(
                f"warning: the run was not recorded for `casestream health` "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                f"is ClickHouse up and `casestream migrate` applied?",
                fg="yellow",
                err=True,
            )
    if as_json:
        click.echo(json.dumps(run.as_dict(), indent=2))
    else:
        click.echo(format_text(run))
    sys.exit(0 if run.intact else 1)
