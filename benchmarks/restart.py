"""restart: a worker with a large case state stopped and started again, vs a fresh start.

The worker keeps its case state in RocksDB under its state directory, with a changelog
co-partitioned with the facts topic; on start faust reads only the changelog records after the
offset persisted with the local state. So a restart should cost about what a fresh start costs,
whatever the size of the state. Measured here:

1. A worker of its own (app id, database, instance) derives every event on the agency topics,
   which are topped up (re-tagged copies of the generated history, published with the SDK, not
   timed) to the first size of ``Sizes.restart_facts``; it is stopped with SIGTERM (the worker
   commits nothing more, like a crash, but tells both consumer groups it leaves) and started
   again. Measured from the spawn:
   (a) ready: faust's worker logs "Ready" (recovery of the tables done, agents started);
   (b) first row: an event published right after the spawn is visible in `events` (its
       `ingested_at`, ClickHouse's insert clock).
2. The same at the next size (topped up again, caught up, stopped, started): recovery time
   should not grow with the state. Then the worker is killed (SIGKILL, a real crash: nothing
   flushed on the way out) and started again, timed the same way.
3. Baseline, same run: a fresh worker (new app id, no state, its intake group committed at the
   end of the agency topics so it has no backlog) started the same way, with its own probe.

Ready minus faust's own "Starting" (log timestamps) is also reported: the part of (a) that is
faust's start and state recovery, the rest being the process start (imports, migrations).

Facts in the state = unique events in the worker's `events` table when it is stopped (one
fact per event).
"""

from __future__ import annotations

import time
import uuid

from benchmarks.common import (
    BenchContext,
    Result,
    agency_topics,
    chunks,
    fmt_num,
    kafka_config,
    retag,
)

READY = "]: Ready"  # faust's worker, once recovery is done and the agents run
TIMEOUT = 600.0
CRASH_TIMEOUT = 180.0  # a recovery that is not done by then is stuck, not slow


def faust_span(log_text: str, start: str = "[^Worker]: Starting", end: str = READY) -> float | None:
    """Seconds between faust's worker starting (after our imports and migrations) and its
    "Ready" (recovery done), from the log's own timestamps; None if either is missing."""
    from datetime import datetime

    stamps = {}
    for line in log_text.splitlines():
        for key, needle in (("start", start), ("end", end)):
            if key not in stamps and needle in line and line.startswith("["):
                stamps[key] = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) < 2:
        return None
    return round((stamps["end"] - stamps["start"]).total_seconds(), 1)


def changelog_records_read(log_text: str) -> int:
    """Changelog records faust's recovery set out to read, from its "Highwater for active
    changelog partitions" and "active offsets at start of reading" tables (summed over every
    recovery in the log): per partition, highwater - offset already in the local state."""
    tables: dict[str, dict[int, int]] = {"high": {}, "start": {}}
    total = 0
    mode = None
    for line in log_text.splitlines():
        if "Highwater for active changelog partitions" in line:
            mode, tables = "high", {"high": {}, "start": {}}
        elif "active offsets at start of reading" in line:
            mode = "start"
        elif "standby offsets at start of reading" in line or "]: " in line:
            if mode == "start":
                total += sum(
                    max(0, high - tables["start"].get(p, -1)) for p, high in tables["high"].items()
                )
            mode = None
        elif mode and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[1].isdigit():
                tables[mode][int(cells[1])] = int(cells[2])
    return total


def top_up(ctx: BenchContext, facts: int) -> None:
    """Publish re-tagged copies of the history until the agency topics hold `facts` events."""
    from services.agency.publisher import Publisher

    missing = facts - ctx.agency_messages()
    if missing <= 0:
        return
    source = ctx.dataset.events
    tag = f"rs{ctx.stamp}-{facts}-"
    events = [retag(source[i % len(source)], f"{tag}{i // len(source)}") for i in range(missing)]
    ctx.log(f"restart: publishing {missing:,} more events (not timed)")
    started = time.monotonic()
    outbox = ctx.work / f"outbox-restart-{ctx.stamp}-{facts}.sqlite"
    with Publisher(None, ctx.settings, outbox_path=outbox) as pub:
        for n, chunk in enumerate(chunks(events, 5000)):
            pub.publish_many(chunk)
            if n % 20 == 19:
                ctx.log(f"   published {(n + 1) * 5000:,}")
    ctx.log(f"   published in {time.monotonic() - started:.0f}s")


def commit_intake_at_end(ctx: BenchContext, app_id: str) -> None:
    """Commit the (new) intake group of `app_id` at the end of every agency topic."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from services.processor.intake import intake_group

    metadata = AdminClient(kafka_config(ctx.settings)).list_topics(timeout=30)
    consumer = Consumer(
        kafka_config(
            ctx.settings, **{"group.id": intake_group(app_id), "enable.auto.commit": False}
        )
    )
    try:
        offsets = []
        for topic in agency_topics(ctx.settings):
            for p in metadata.topics[topic].partitions:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                offsets.append(TopicPartition(topic, p, high))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def timed_start(ctx: BenchContext, what: str, run: str, timeout: float = TIMEOUT) -> dict:
    """Spawn a worker of `what` (instance i0), publish one probe event right after, and time
    the spawn -> "Ready" and spawn -> probe row visible."""
    from services.agency.publisher import Publisher

    probe = retag(ctx.dataset.events[0], f"probe-{uuid.uuid4().hex[:8]}")
    outbox = ctx.work / f"outbox-probe-{ctx.stamp}-{run}.sqlite"
    with Publisher(None, ctx.settings, outbox_path=outbox) as pub:
        pub.schema_id(probe["agency_id"])  # the registry round trip before the clock starts
        worker = ctx.start_worker(what, instance="i0", loglevel="info", log_name=f"{what}-{run}")
        pub.publish_many([probe])
        pub.flush()
    client = ctx.client()
    ready = visible = None
    while time.time() - worker.started_at < timeout and (ready is None or visible is None):
        if not worker.alive():
            raise RuntimeError(f"worker {worker.app_id} exited:\n{worker.log_tail()}")
        if ready is None and worker.log_lines(READY):
            ready = time.time()
        if visible is None and database_exists(client, worker.database):
            count, first = client.query(
                f"SELECT count(), toUnixTimestamp64Milli(min(ingested_at)) "
                f"FROM {worker.database}.events WHERE case_id = {{case:String}}",
                parameters={"case": probe["case_id"]},
            ).result_rows[0]
            if int(count):
                visible = int(first) / 1000.0
        time.sleep(0.1)
    if ready is None or visible is None:
        worker.stop()
        raise TimeoutError(f"worker {worker.app_id} ({run}) not ready / probe not visible")
    text = worker.log_path.read_text(errors="replace")
    return {
        "worker": worker,
        "changelog_read": changelog_records_read(text),
        "faust_start_to_ready_s": faust_span(text),
        "recovery_errors": text.count("Error in recovery"),
        "ready_s": round(ready - worker.started_at, 1),
        "first_row_s": round(visible - worker.started_at, 1),
    }


def database_exists(client, database: str) -> bool:
    return bool(
        client.command(
            "SELECT count() FROM system.databases WHERE name = {db:String}",
            parameters={"db": database},
        )
    )


def facts_in_state(ctx: BenchContext, database: str) -> int:
    return int(ctx.client().command(f"SELECT uniqExact(event_id) FROM {database}.events"))


def run(ctx: BenchContext) -> list[Result]:
    ctx.ensure_published()
    what = "restart"
    worker = None
    restarts: list[dict] = []
    for size in ctx.sizes.restart_facts:
        top_up(ctx, size)
        if worker is None:
            ctx.log(f"restart: a worker derives {ctx.agency_messages():,} events (not timed)")
            worker = ctx.start_worker(what, instance="i0", log_name=f"{what}-fill")
        else:
            ctx.log(f"restart: the worker catches up to {ctx.agency_messages():,} events")
        worker.wait_caught_up(timeout=7200, progress=None)
        facts = facts_in_state(ctx, worker.database)
        ctx.log(f"restart: SIGTERM with {facts:,} facts in the state; starting again")
        worker.stop()
        timed = timed_start(ctx, what, f"after-{facts}")
        worker = timed.pop("worker")
        timed["facts"] = facts
        restarts.append(timed)
        ctx.log(
            f"   {facts:,} facts: ready after {timed['ready_s']}s, "
            f"first new row after {timed['first_row_s']}s"
        )
    if worker is not None:
        # A crash: SIGKILL once the restarted worker caught up again (its state persisted with
        # whatever offset RocksDB last flushed; the changelog tail after it is read back).
        worker.wait_caught_up(timeout=TIMEOUT)
        facts = facts_in_state(ctx, worker.database)
        ctx.log(f"restart: SIGKILL with {facts:,} facts in the state; starting again")
        worker.kill()
        try:
            crash = timed_start(ctx, what, f"crash-{facts}", timeout=CRASH_TIMEOUT)
            crash.pop("worker").stop()
        except (TimeoutError, RuntimeError) as exc:  # reported in the row; the baseline still runs
            crash = {"ready_s": None, "first_row_s": None, "failed": str(exc).splitlines()[0]}
            log = ctx.work / "logs" / f"worker-{what}-crash-{facts}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            crash["changelog_read"] = changelog_records_read(text)
            crash["recovery_errors"] = text.count("Error in recovery")
        ctx.log(
            f"   after SIGKILL: ready after {crash['ready_s']}s, "
            f"first new row after {crash['first_row_s']}s {crash.get('failed', '')}"
        )

    ctx.log("restart: baseline, a fresh worker with no state and no backlog")
    fresh_what = "freshstart"  # names a database too: no hyphen
    commit_intake_at_end(ctx, f"casestream-bench-{ctx.stamp}-{fresh_what}")
    ctx.new_database(fresh_what)  # migrated like the restarted worker's (not timed)
    fresh = timed_start(ctx, fresh_what, "fresh")
    fresh.pop("worker").stop()
    ctx.log(f"   fresh: ready after {fresh['ready_s']}s, first row after {fresh['first_row_s']}s")

    largest = restarts[-1]
    ratio = largest["first_row_s"] / fresh["first_row_s"] if fresh["first_row_s"] else None
    numbers: dict = {}
    for r in restarts:
        numbers[f"{r['facts']}_facts_ready_s"] = r["ready_s"]
        numbers[f"{r['facts']}_facts_first_row_s"] = r["first_row_s"]
        numbers[f"{r['facts']}_facts_faust_start_to_ready_s"] = r["faust_start_to_ready_s"]
        numbers[f"{r['facts']}_facts_changelog_records_read"] = r["changelog_read"]
        numbers[f"{r['facts']}_facts_recovery_errors"] = r["recovery_errors"]
    if worker is not None:
        numbers["sigkill_ready_s"] = crash["ready_s"]
        numbers["sigkill_first_row_s"] = crash["first_row_s"]
        numbers["sigkill_changelog_records_read"] = crash["changelog_read"]
        numbers["sigkill_recovery_errors"] = crash["recovery_errors"]
        if "failed" in crash:
            numbers["sigkill_failed"] = crash["failed"]
    numbers["fresh_ready_s"] = fresh["ready_s"]
    numbers["fresh_first_row_s"] = fresh["first_row_s"]
    numbers["fresh_faust_start_to_ready_s"] = fresh["faust_start_to_ready_s"]
    return [
        Result(
            scenario=f"restart ({largest['facts']:,} facts of state)",
            result=(
                f"ready {fmt_num(largest['ready_s'], 's', 1)}, "
                f"first new row {fmt_num(largest['first_row_s'], 's', 1)}"
            ),
            baseline=(
                f"fresh start: ready {fmt_num(fresh['ready_s'], 's', 1)}, "
                f"first row {fmt_num(fresh['first_row_s'], 's', 1)}"
            ),
            ratio=ratio,
            ratio_label="× fresh start (first row)",
            target="resumes within seconds",
            met=largest["first_row_s"] < 30,
            numbers=numbers,
            command=ctx.repro("restart"),
        )
    ]
