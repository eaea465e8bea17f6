"""scale: the same dataset derived by one worker and by two worker processes of one app id.

Each group is fresh (its own app id, consumer groups, facts topic, state and database) and is
started after the dataset is on the agency topics, like the process scenario's worker. The two
processes of the second group share the intake's agency partitions and the derive step's facts
partitions (each derives its own partitions from the case state of those partitions; their logs
say which: "deriving <topic>[p]"). A group's rate is measured like the process scenario's:
messages / (last ClickHouse write of the group's database, from `ingested_at` - first offset
commit of its groups); when that span is under 2 s (a small dataset done before the first commit
is seen), the write phase's rate instead (`steady_rate`), as the row's numbers say. The two databases must hold identical tables
(`services.ops.rebuild.table_digests`: row count and checksum per analyst-facing table).

What bounds the ratio here: the machine has 2 cores, and while a group runs they are shared by
the Kafka broker (a JVM serving the agency topics, the facts topic and both changelogs), the
ClickHouse endpoint (parsing and merging every insert), the benchmark's own polling and every
worker process of the group, besides whatever else runs on the machine. One worker is already
close to one core busy, so two workers can at best use what the broker and the endpoint leave of
the second core: ratio <= (2 - their cores) / (one worker's cores). The scenario measures it:
CPU seconds of each worker process (utime + stime from /proc/<pid>/stat), of the endpoint, and
the machine's busy fraction (/proc/stat) over each group's run, and reports them with the ratio.
"""

from __future__ import annotations

import time

from benchmarks.common import (
    BenchContext,
    Result,
    endpoint_pid,
    fmt_num,
    machine_cpu,
    process_cpu_seconds,
    steady_rate,
    wait_pipeline_started,
    write_timeline,
)

FACTS_TOPIC_LOG = "deriving "
MIN_SPAN = 2.0  # seconds; a shorter first-commit-to-last-write span is polling noise
# Log lines that must not occur in a healthy run (counted and reported per group).
TROUBLE = {
    "recovery_errors": "Error in recovery",  # faust could not apply a changelog record
    "watchdog_restarts": "restarted in place",  # the worker's stall watchdog re-exec'd it
}


def trouble(workers) -> dict[str, int]:
    return {key: sum(len(w.log_lines(needle)) for w in workers) for key, needle in TROUBLE.items()}


def run_group(ctx: BenchContext, what: str, processes: int) -> dict:
    """Start `processes` fresh workers of one app id, wait until caught up, measure the rate."""
    messages = ctx.agency_messages()
    ep_pid = endpoint_pid(ctx.settings)
    busy0, total0 = machine_cpu()
    ep_cpu0 = process_cpu_seconds(ep_pid) if ep_pid else None
    workers = [
        ctx.start_worker(what, instance=f"i{n}", loglevel="info", log_name=f"{what}-i{n}")
        for n in range(processes)
    ]
    lead = workers[0]
    started = wait_pipeline_started(
        ctx.settings, lead.app_id, lambda: all(w.alive() for w in workers)
    )

    def progress(lag: int | None) -> None:
        now = time.monotonic()
        if now - progress.last >= 10:  # type: ignore[attr-defined]
            progress.last = now  # type: ignore[attr-defined]
            ctx.log(f"   {what}: {processes} worker(s), lag {lag}")

    progress.last = time.monotonic()  # type: ignore[attr-defined]
    for worker in workers[1:]:
        if not worker.alive():
            raise RuntimeError(f"worker {worker.instance} exited:\n{worker.log_tail()}")
    # A group that does not move for minutes is stuck (e.g. a partition whose state recovery
    # never ends), not slow: the scenario fails with the logs' evidence instead of waiting.
    try:
        lead.wait_caught_up(timeout=max(300.0, messages / 200), progress=progress)
    except TimeoutError as exc:
        for worker in workers:
            worker.stop()
        found = ", ".join(f"{k}={v}" for k, v in trouble(workers).items())
        raise TimeoutError(f"{exc} ({found}; logs: {lead.log_path.parent})") from None
    for worker in workers[1:]:
        if not worker.alive():
            raise RuntimeError(f"worker {worker.instance} exited:\n{worker.log_tail()}")
    caught_up = time.time()
    cpu = [w.cpu_seconds() or 0.0 for w in workers]
    ep_cpu = (process_cpu_seconds(ep_pid) or 0.0) - ep_cpu0 if ep_pid and ep_cpu0 else None
    busy1, total1 = machine_cpu()
    derived = {
        w.instance: sorted(  # "deriving <facts topic>[p]" -> "p"
            line.rsplit("[", 1)[1].split("]")[0] for line in w.log_lines(FACTS_TOPIC_LOG)
        )
        for w in workers
    }
    for worker in workers:
        worker.stop()

    client = ctx.client()
    timeline = write_timeline(client, lead.database)
    last_write = timeline[-1][0] if timeline else caught_up
    span = last_write - started if started else None
    rate = messages / span if span and span >= MIN_SPAN else None
    basis = "intake assigned to last write"
    if rate is None:
        # A small dataset can be done before the assignment is seen (polled every 0.1 s):
        # then the write phase (steady_rate: first write's rows left out) is the rate.
        rate, span = steady_rate(timeline)
        basis = "write phase (first to last write)"
    wall = caught_up - lead.started_at
    return {
        "database": lead.database,
        "messages": messages,
        "rate": rate,
        "rate_basis": basis,
        "span_s": round(span, 1) if span else None,
        "wall_s": round(wall, 1),
        "worker_cpu_s": [round(c, 1) for c in cpu],
        # cores busy on average from spawn to caught up (start-up included)
        "worker_cores": round(sum(cpu) / wall, 2) if wall > 0 else None,
        "endpoint_cores": round(ep_cpu / wall, 2) if ep_cpu is not None and wall > 0 else None,
        "machine_busy": round((busy1 - busy0) / (total1 - total0), 2) if total1 > total0 else None,
        "derived_partitions": derived,
        **trouble(workers),
    }


def compare_tables(client, left: str, right: str) -> list[str]:
    """The analyst-facing tables whose digests differ between two databases."""
    from services.ops.rebuild import table_digests

    a, b = table_digests(client, left), table_digests(client, right)
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def run(ctx: BenchContext) -> list[Result]:
    ctx.ensure_published()
    messages = ctx.agency_messages()
    ctx.log(f"scale: one fresh worker over {messages:,} messages")
    one = run_group(ctx, "scale1", 1)
    ctx.log(f"   1 worker: {fmt_num(one['rate'], 'events/s')}")
    ctx.log(f"scale: two fresh worker processes of one app id over {messages:,} messages")
    two = run_group(ctx, "scale2", 2)
    ctx.log(f"   2 workers: {fmt_num(two['rate'], 'events/s')}")
    differing = compare_tables(ctx.client(), one["database"], two["database"])
    ctx.log("   tables equal" if not differing else f"   tables differ: {', '.join(differing)}")
    ratio = two["rate"] / one["rate"] if one["rate"] and two["rate"] else None
    numbers: dict = {"messages": messages}
    for label, group in (("1w", one), ("2w", two)):
        for key in (
            "rate_basis",
            "span_s",
            "wall_s",
            "worker_cpu_s",
            "worker_cores",
            "endpoint_cores",
            "machine_busy",
            "recovery_errors",
            "watchdog_restarts",
        ):
            numbers[f"{label}_{key}"] = group[key]
    numbers["2w_derived"] = " / ".join(
        f"{instance}: partitions {','.join(tps) or 'none'}"
        for instance, tps in two["derived_partitions"].items()
    )
    numbers["tables"] = "equal" if not differing else f"differ: {', '.join(differing)}"
    return [
        Result(
            scenario="scale: 2 workers vs 1",
            result=f"2 workers {fmt_num(two['rate'], 'events/s')}",
            baseline=f"1 worker {fmt_num(one['rate'], 'events/s')}",
            ratio=ratio,
            ratio_label="× one worker",
            target="tables identical; ratio reported",
            met=not differing,
            numbers=numbers,
            command=ctx.repro("scale"),
        )
    ]
