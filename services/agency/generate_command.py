"""`casestream generate`: write a seeded, realistic scenario of case events as JSONL.

Registered in the CLI with ``main.add_command(generate)``. The work is done by
:mod:`services.agency.generator` (imported when the command runs, so ``--help`` stays instant).
"""

from __future__ import annotations

import sys
from datetime import date

import click


def _province_list(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    codes = tuple(c.strip() for c in value.split(",") if c.strip())
    if not codes:
        raise click.BadParameter("give comma-separated province codes, e.g. 01,20,79")
    for code in codes:
        if len(code) != 2 or not code.isdigit():
            raise click.BadParameter(f"{code!r} is not a two-digit province code")
    return codes


def _stderr(message: str) -> None:
    click.echo(f"generate: {message}", err=True)


@click.command("generate")
@click.option(
    "--out",
    "-o",
    "out",
    default="-",
    show_default=True,
    metavar="FILE",
    help="output .jsonl file ('-' = stdout); written as FILE.partial, then renamed",
)
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=None,
    help="approximate number of lines to write (default 100000)",
)
@click.option(
    "--cases",
    type=click.IntRange(min=1),
    default=None,
    help="exact number of cases to simulate (instead of --events)",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="same seed and options = byte-identical output",
)
@click.option(
    "--start",
    type=click.DateTime(["%Y-%m-%d"]),
    default="2021-01-01",
    show_default=True,
    help="first day of the history (local date, +07:00)",
)
@click.option(
    "--end",
    type=click.DateTime(["%Y-%m-%d"]),
    default="2025-12-31",
    show_default=True,
    help="last day of the history; must be before today",
)
@click.option(
    "--provinces",
    callback=_province_list,
    default=None,
    metavar="CODES",
    help="comma-separated province codes, e.g. 01,20,79 (00 = central agencies); "
    "default: all provinces weighted by population plus central cases",
)
@click.option(
    "--duplicates",
    type=click.FloatRange(0.0, 0.5),
    default=0.0,
    show_default=True,
    help="fraction of events delivered twice (same event_id, identical line)",
)
@click.option(
    "--out-of-order",
    "out_of_order",
    type=click.FloatRange(0.0, 0.5),
    default=0.0,
    show_default=True,
    help="fraction of events emitted late (incl. receipts before their transfer)",
)
@click.option(
    "--violations",
    type=click.FloatRange(0.0, 0.5),
    default=0.0,
    show_default=True,
    help="share of cases given one forged event (a resolution by an agency that never held "
    "the case): listed in integrity_violations, counted in no figure",
)
@click.option(
    "--sorted/--no-sorted",
    "sorted_",
    default=True,
    show_default=True,
    help="event-time order, or per-agency batch delivery order",
)
@click.option(
    "--check",
    is_flag=True,
    help="validate every written line with parse_event and report counts by type",
)
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="directory for the spill files (about the size of the output)",
)
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr")
def generate(out, events, cases, seed, start, end, provinces, duplicates, out_of_order,
             violations, sorted_, check, tmp_dir, quiet) -> None:  # fmt: skip
    """Write a seeded multi-year, multi-province history of case events as JSONL.

    Cases are detected by inspectorates, state audit, party inspection and internal-affairs
    commissions, police and other agencies; cases with signs of crime go through police,
    procuracy, courts and judgment enforcement, with lognormal transfer lags (some stalled for
    months), slow appraisals, steering-committee monitoring, party discipline, asset recovery
    and the 2025-07-01 province merger. Progress goes to stderr.
    """
    from services.agency.generator import GeneratorOptions, check_jsonl, check_lines, iter_lines
    from services.agency.generator import write_jsonl as write

    if events is not None and cases is not None:
        raise click.UsageError("give --events or --cases, not both")
    options = GeneratorOptions(
        seed=seed,
        start=start.date(),
        end=end.date(),
        events=events,
        cases=cases,
        provinces=provinces,
        duplicates=duplicates,
        out_of_order=out_of_order,
        violations=violations,
        sorted=sorted_,
        tmp_dir=tmp_dir,
        progress=None if quiet else _stderr,
    )
    try:
        options = options.validated(today=date.today())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    if out == "-" and check:
        # validate each line on its way to stdout
        from services.agency.generator import Summary

        summary = Summary()

        def tee():
            write_line = sys.stdout.write
            for line in iter_lines(options, summary):
                write_line(line + "\n")
                yield line

        report = check_lines(tee())
        sys.stdout.flush()
    else:
        summary = write(options, out)
        report = check_jsonl(out) if check else None

    if not quiet:
        _stderr(
            f"{summary.lines:,} lines ({summary.events:,} events, {summary.duplicates:,} duplicates,"
            f" {summary.out_of_order:,} out of order), {summary.cases:,} cases, "
            f"{summary.agencies:,} agencies in {summary.seconds:.1f} s "
            f"({summary.lines_per_second:,.0f} lines/s) -> {out}"
        )
    if report is not None:
        click.echo(
            f"check: {report.lines:,} lines, {report.valid:,} valid, {report.invalid:,} invalid "
            f"({report.seconds:.1f} s)",
            err=True,
        )
        for event_type, count in report.by_type.items():
            click.echo(f"  {event_type:<22}{count:>12,}", err=True)
        for error in report.errors:
            click.echo(f"  {error}", err=True)
        if not report.ok:
            sys.exit(1)
