"""`casestream bench`: the benchmark scenarios with their baselines, as one results table.

Every figure is measured next to a baseline in the same run (the machine is small and shared,
so ratios are steadier than absolute numbers); see benchmarks/ and docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

CHOICES = [
    "publish",
    "process",
    "scale",
    "latency",
    "rebuild",
    "query",
    "endpoint",
    "restart",
    "all",
]


@click.command("bench")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(CHOICES),
    default=["all"],
    show_default=True,
    help="scenario to run (repeatable); `all` runs every one in order",
)
@click.option(
    "--events",
    type=int,
    default=None,
    help="size of the generated history [default: 200,000; --quick: 20,000]",
)
@click.option(
    "--quick", is_flag=True, help="small sizes (20k events, 1M-row query data, 15 s latency run)"
)
@click.option(
    "--query-events",
    type=int,
    default=None,
    help="rows of `events` for the query scenario [default: 10,000,000; --quick: 1M]",
)
@click.option(
    "--latency-seconds",
    type=float,
    default=None,
    help="duration of the steady 1,000 events/s run [default: 60; --quick: 15]",
)
@click.option(
    "--stack",
    "stack_mode",
    type=click.Choice(["private", "settings"]),
    default="private",
    show_default=True,
    help="private: a fresh stack on free ports, stopped afterwards; settings: the "
    "stack CASESTREAM_* points at (started if needed; its topics get the events)",
)
@click.option(
    "--agency-partitions",
    type=int,
    default=1,
    show_default=True,
    help="partitions of each agency topic the benchmark creates. One per agency: ~800 agency "
    "topics each carry a few events a minute, and with 4 each (CASESTREAM_TOPIC_PARTITIONS) the "
    "worker fetches ~3,200 mostly empty partitions (measured in docs/benchmarks.md)",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="run the process scenario this many times, each against its own bare-decode ceiling "
    "with a fresh worker, and report the run of median ratio with every run's ratio: single "
    "runs on two shared cores spread by about ±0.05 (docs/benchmarks.md)",
)
@click.option("--keep", is_flag=True, help="keep the private stack's home and bench databases")
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="sample the worker with `uvx py-spy record` during the process scenario",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="scratch directory (generated history, outboxes, profiles) [default: <stack home>/bench]",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write the results as JSON here",
)
def bench(
    scenarios,
    events,
    quick,
    query_events,
    latency_seconds,
    stack_mode,
    agency_partitions,
    repeat,
    keep,
    profile,
    work,
    json_path,
) -> None:
    """Run benchmark scenarios on generated data and print the results table.

    Scenarios: publish (SDK vs bare producer), process (worker vs bare decode), scale (two worker
    processes of one app id vs one, tables compared), latency (p50/p99 at 1,000 events/s),
    rebuild (replay into fresh tables), query (national rollup and lag percentiles through the
    endpoint vs in-process chDB), endpoint (insert/query throughput vs in-process chDB), restart
    (a worker with state stopped and started again vs a fresh start).
    """
    from dataclasses import replace

    from benchmarks import SCENARIOS, report, run_benchmarks, write_json
    from benchmarks.common import Sizes

    chosen = SCENARIOS if "all" in scenarios else [s for s in SCENARIOS if s in scenarios]
    sizes = Sizes.quick(events) if quick else Sizes(**({"events": events} if events else {}))
    if query_events:
        sizes = replace(sizes, query_events=query_events)
    if latency_seconds:
        sizes = replace(sizes, latency_seconds=latency_seconds)
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    command = "casestream bench"
    if stack_mode != "private":
        command += f" --stack {stack_mode}"
    if agency_partitions != 1:
        command += f" --agency-partitions {agency_partitions}"

    def log(message: str) -> None:
        click.echo(message, err=True)

    results, ctx = run_benchmarks(
        chosen,
        sizes,
        quick=quick,
        stack=stack_mode,
        keep=keep,
        profile=profile,
        work=work,
        log=log,
        command=command,
        agency_partitions=agency_partitions,
        repeat=repeat,
    )
    click.echo(report(results, ctx))
    if json_path is not None:
        write_json(results, ctx, json_path)
    sys.exit(1 if any(r.result == "error" for r in results) else 0)
