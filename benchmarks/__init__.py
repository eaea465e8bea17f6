"""Benchmarks of casestream: every figure next to a baseline measured in the same run.

    casestream bench                          # every scenario on a private stack
    casestream bench --scenario process --events 500000
    casestream bench --quick                  # small sizes, a few minutes

One module per scenario (``run(ctx) -> list[Result]``), shared machinery in ``common``.
Results and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import BenchContext, Result, Sizes, bench_stack, failed_result, results_table

# Run order matters only for reuse: `process` leaves a caught-up worker that `latency` and
# `rebuild` use; `query` starts from that worker's tables. `scale` reads the dataset alone, before
# `latency` adds events; `restart` publishes many more events, so it runs last.
SCENARIOS = ["publish", "process", "scale", "latency", "rebuild", "query", "endpoint", "restart"]


def run_benchmarks(
    scenarios: list[str],
    sizes: Sizes,
    *,
    quick: bool = False,
    stack: str = "private",
    keep: bool = False,
    profile: bool = True,
    work: Path | None = None,
    log: Callable[[str], None] = print,
    command: str = "casestream bench",
    agency_partitions: int | None = None,
    repeat: int = 1,
) -> tuple[list[Result], BenchContext]:
    """Start (or use) the stack, run the scenarios in order, return their results."""
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    ordered = [s for s in SCENARIOS if s in scenarios]
    results: list[Result] = []
    with bench_stack(stack, keep=keep, log=log) as settings:
        bench_dir = work or settings.home / "bench"
        bench_dir.mkdir(parents=True, exist_ok=True)
        ctx = BenchContext(
            settings=settings,
            sizes=sizes,
            work=bench_dir,
            command=command,
            quick=quick,
            profile=profile,
            log=log,
            agency_partitions=agency_partitions,
            repeat=repeat,
        )
        try:
            for name in ordered:
                module = importlib.import_module(f"benchmarks.{name}")
                log(f"== {name}")
                started = time.monotonic()
                try:
                    results.extend(module.run(ctx))
                except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the rest
                    log(traceback.format_exc())
                    results.append(failed_result(name, exc, ctx.repro(name)))
                log(f"   {name} took {time.monotonic() - started:.0f}s")
        finally:
            ctx.close(drop=stack == "settings" or not keep)
    return results, ctx


def report(results: list[Result], ctx: BenchContext, *, details: bool = True) -> str:
    """The results table and the profiles, as printed by `casestream bench`."""
    parts = [results_table(results, details=details)]
    for name, text in ctx.profiles.items():
        parts += ["", f"profile: {name}", "", text]
    return "\n".join(parts)


def write_json(results: list[Result], ctx: BenchContext, path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "sizes": ctx.sizes.__dict__,
                "results": [r.as_dict() for r in results],
                "profiles": ctx.profiles,
            },
            indent=2,
            default=str,
        )
    )
