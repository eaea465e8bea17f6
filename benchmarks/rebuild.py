"""rebuild: replay every topic into fresh tables (`services.ops.rebuild.rebuild`, no switch).

The live side is the caught-up worker of the process scenario (its group and database stand in
for the production worker). `rebuild()` creates `<db>_rebuild_<stamp>`, starts a second worker
with its own group that reads every agency topic from offset 0, waits until both are caught up
and compares the checksums of the analyst tables. Timed end to end (wall clock, including the
worker's start-up and the checksums) and at its sustained rate: agency events per second between
the rebuild group's first offset commit and its lag reaching zero (sampled every 2 s; the
rebuilt tables' `ingested_at` is no good here: a replayed batch makes duplicates that background
merges remove).

10 million events cannot be replayed here in the time of a benchmark run, so the time for 10 M
is extrapolated linearly from the measured run: fixed part (start-up, checksums) + 10 M / the
sustained rate. The rebuild worker keeps every fact in memory (faust table, `memory://`), so its
peak RSS is extrapolated the same way.

Baseline: the bare decode ceiling of the same messages (process scenario), i.e. how long a
Python consumer that only decodes would take for the same replay.
"""

from __future__ import annotations

import threading
import time

from benchmarks.common import (
    BenchContext,
    Result,
    agency_topics,
    fmt_num,
    peak_rss_mb,
    rss_mb,
    worker_lag_total,
)

TARGET_EVENTS = 10_000_000
TARGET_SECONDS = 600.0


class _Watch(threading.Thread):
    """Peak RSS of the rebuild worker (a detached process found by its pid file) and its lag.

    The lag (agency topics + facts topic, uncommitted by the rebuild's group) every 2 s gives
    the replay's progress without reading the rebuilt tables.
    """

    def __init__(self, settings, app_id: str) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.app_id = app_id
        self.peak = 0.0
        self.base = 0.0  # RSS at the group's first commit: the worker before it holds much state
        self.samples: list[tuple[float, int]] = []  # (wall clock, lag) once the group committed
        self.stop = threading.Event()

    def run(self) -> None:
        pid_file = self.settings.home / "run" / f"rebuild-worker-{self.app_id}.pid"
        rss = 0.0
        while not self.stop.wait(2.0):
            try:
                pid = int(pid_file.read_text().split()[0])
                self.peak = max(self.peak, peak_rss_mb(pid) or 0.0)
                rss = rss_mb(pid) or rss
            except (OSError, ValueError, IndexError):
                pass
            try:
                lag = worker_lag_total(self.settings, self.app_id)
            except Exception:  # noqa: BLE001 - a sample less
                continue
            if lag is not None:
                if not self.base and rss:  # first RSS seen once the group committed
                    self.base = rss
                self.samples.append((time.time(), lag))

    def progress(self) -> tuple[float | None, float | None, int]:
        """(first commit time, caught-up time, lag at the first commit)."""
        if not self.samples:
            return None, None, 0
        first_t, first_lag = self.samples[0]
        done = next((t for t, lag in self.samples if lag == 0), None)
        return first_t, done, first_lag


def run(ctx: BenchContext) -> list[Result]:
    from benchmarks.process import bare_decode
    from services.ops.rebuild import rebuild

    live = ctx.ensure_live_worker()
    settings = live.settings
    messages = ctx.agency_messages()
    decode_rate = ctx.baselines.get("decode_rate")
    if not decode_rate:
        decode_rate = bare_decode(settings, agency_topics(settings), messages)["rate"]
        ctx.baselines["decode_rate"] = decode_rate

    stamp = time.strftime("%Y%m%d%H%M%S")
    app_id = f"{settings.worker_app_id}-rebuild-{stamp}"
    watch = _Watch(settings, app_id)
    watch.start()
    ctx.log(f"rebuild: replaying {messages:,} agency messages")
    started = time.time()
    result = rebuild(
        settings, switch=False, timeout=3600, stamp=stamp, log=lambda m: ctx.log(f"   {m}")
    )
    wall = time.time() - started
    watch.stop.set()
    watch.join(5)
    ctx._databases.append(result.database)

    first_commit, caught_up, first_lag = watch.progress()
    # Sustained: agency events replayed per second between the group's first commit and the
    # moment its lag reached zero (both halves: intake and its own facts topic's derive).
    span = (caught_up - first_commit) if first_commit and caught_up else None
    rate = messages / span if span else None
    fixed = max(0.0, wall - span) if span else wall
    projected = fixed + TARGET_EVENTS / rate if rate else None
    # The worker's state (every fact of every case, in memory) grows with the events.
    growth_kb = (watch.peak - watch.base) * 1024 / messages if messages and watch.base else None
    projected_rss_gb = (watch.base + growth_kb * TARGET_EVENTS / 1024) / 1024 if growth_kb else None
    ratio = rate / decode_rate if rate and decode_rate else None
    return [
        Result(
            scenario="rebuild",
            result=(
                f"{fmt_num(messages)} events in {wall:.0f} s "
                f"({fmt_num(rate, 'events/s')} sustained) → 10 M ≈ "
                f"{fmt_num((projected or 0) / 60, 'min', 1)}"
            ),
            baseline=f"bare decode {fmt_num(decode_rate, 'events/s')} "
            f"(10 M in {fmt_num(TARGET_EVENTS / decode_rate / 60, 'min', 1)})",
            ratio=ratio,
            ratio_label="of ceiling",
            target="10 M events < 10 min",
            met=bool(projected is not None and projected < TARGET_SECONDS and result.equal),
            numbers={
                "messages": messages,
                "wall_s": round(wall, 1),
                "startup_s": round(first_commit - started, 1) if first_commit else None,
                "sustained_span_s": round(span, 1) if span else None,
                "lag_at_first_commit": first_lag,
                "fixed_s": round(fixed, 1),
                "projected_10M_s": round(projected) if projected else None,
                "tables_equal": result.equal,
                "rows": {k: v[0] for k, v in result.rebuilt.items()},
                "rss_growth_kB_per_event": round(growth_kb, 2) if growth_kb else None,
                "projected_10M_worker_rss_GB": round(projected_rss_gb, 1)
                if projected_rss_gb
                else None,
            },
            memory={"rebuild worker": round(watch.peak)},
            command=ctx.repro("rebuild"),
            notes="10 M extrapolated linearly from the measured replay",
        )
    ]
