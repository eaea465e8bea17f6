"""rebuild: replay every topic into fresh tables (`services.ops.rebuild.rebuild`, no switch).

The live side is the caught-up worker of the process scenario (its group and database stand in
for the production worker). `rebuild()` creates `<db>_rebuild_<stamp>`, replays every agency
topic from offset 0 into it (`services.ops.replay`: reader processes spill the facts by case to
disk, deriver processes derive each case once), then compares the checksums of the analyst
tables with the live ones. Timed end to end (wall clock: migrations, process start-up, both
phases, the catch-up and the checksums) and per phase (the replay's own clocks).

10 million events cannot be replayed here in the time of a benchmark run, so the time for 10 M
is extrapolated linearly from the whole measured wall clock (start-up and checksums included,
so a little pessimistic). Memory: each replay process reports its peak RSS (`ru_maxrss`); the
peak of the replay is the larger phase's processes together, plus this process's own peak while
it runs the rebuild (progress, catch-up, comparison). A reader holds at most its write buffers,
a deriver one bucket of ~`BUCKET_EVENTS` events, so the peak does not grow with the history.

Baseline: the bare decode ceiling of the same messages (process scenario), i.e. how long a
Python consumer that only decodes would take for the same replay.
"""

from __future__ import annotations

import time

from benchmarks.common import (
    BenchContext,
    Result,
    agency_topics,
    fmt_num,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
)

TARGET_EVENTS = 10_000_000
TARGET_SECONDS = 600.0
TARGET_RSS_MB = 2048.0


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

    ctx.log(f"rebuild: replaying {messages:,} agency messages")
    parent_before = rss_mb() or 0.0
    reset_peak_rss()
    started = time.time()
    result = rebuild(settings, switch=False, timeout=3600, log=lambda m: ctx.log(f"   {m}"))
    wall = time.time() - started
    parent_peak = peak_rss_mb() or 0.0
    ctx._databases.append(result.database)

    replay = result.replay
    assert replay is not None
    replayed = replay.read.messages + replay.caught_up
    rate = replayed / wall if wall else None  # end to end
    projected = TARGET_EVENTS / rate if rate else None
    replay_rate = replay.read.messages / replay.seconds if replay.seconds else None
    peak_mb = replay.peak_rss_mb + max(0.0, parent_peak - parent_before)
    ratio = rate / decode_rate if rate and decode_rate else None
    met = bool(
        projected is not None
        and projected < TARGET_SECONDS
        and peak_mb < TARGET_RSS_MB
        and result.equal
    )
    return [
        Result(
            scenario="rebuild",
            result=(
                f"{fmt_num(replayed)} events in {wall:.0f} s "
                f"({fmt_num(rate, 'events/s')} end to end) → 10 M ≈ "
                f"{fmt_num((projected or 0) / 60, 'min', 1)}; peak RSS "
                f"{fmt_num(peak_mb, 'MB')}; tables {'equal' if result.equal else 'DIFFERENT'}"
            ),
            baseline=f"bare decode {fmt_num(decode_rate, 'events/s')} "
            f"(10 M in {fmt_num(TARGET_EVENTS / decode_rate / 60, 'min', 1)})",
            ratio=ratio,
            ratio_label="of ceiling",
            target="10 M events < 10 min, peak RSS < 2 GB, tables equal",
            met=met,
            numbers={
                "messages": messages,
                "replayed": replayed,
                "rejected": replay.read.rejected,
                "wall_s": round(wall, 1),
                "read_s": round(replay.read.seconds, 1),
                "read_rate": round(replay.read.rate),
                "derive_s": round(replay.derive.seconds, 1),
                "derive_rate": round(replay.derive.rate),
                # CPU per event of the replay's processes (user + system): what the replay
                # costs whatever else runs on the machine; 2 cores of it ≈ the rate it reaches
                # on a machine of its own (the endpoint's and Kafka's share not included).
                "read_cpu_us_per_event": round(1e6 * replay.read.cpu_seconds / replayed)
                if replayed
                else None,
                "derive_cpu_us_per_event": round(1e6 * replay.derive.cpu_seconds / replayed)
                if replayed
                else None,
                "replay_rate": round(replay_rate) if replay_rate else None,
                "other_s": round(wall - replay.seconds, 1),  # migrations, catch-up, checksums
                "buckets": replay.buckets,
                "spilled_MB": round(replay.spilled_bytes / 1e6, 1),
                "projected_10M_s": round(projected) if projected else None,
                "tables_equal": result.equal,
                "rows": {k: v[0] for k, v in result.rebuilt.items()},
                "peak_rss_MB": round(peak_mb),
            },
            memory={
                **{f"reader {i}": round(mb) for i, mb in enumerate(replay.read.peak_rss_mb)},
                **{f"deriver {i}": round(mb) for i, mb in enumerate(replay.derive.peak_rss_mb)},
                "bench process (growth)": round(max(0.0, parent_peak - parent_before)),
            },
            command=ctx.repro("rebuild"),
            notes="10 M extrapolated linearly from the whole measured wall clock",
        )
    ]
