"""The rebuild's replay: every agency topic from its first offset into fresh tables, without the
worker.

Why not a second worker: it replayed ~3,670 events/s (10 M events ≈ 46 min) and held every fact
in memory (~0.9 kB of RSS per event, ~9 GB at 10 M). A history that is read once, in full, does
not need a stream processor's per-event machinery, a re-keyed topic or a changelog: each case
needs to be derived once, from all its facts. So the replay runs in two phases:

1. **read**: the agency topics (`AGENCY_TOPIC_PATTERN`), from the first offset to the end
   offsets taken when the replay starts, by `processes` reader processes (librdkafka, assigned
   partitions, no commits). Each message is decoded and validated by `Ingestor.accept`, as the
   intake does; a rejected message is not a fact (the live worker dead-lettered it, and
   `casestream dlq replay` republishes it to its agency topic once fixed). Facts are spilled to
   bucket files by case (`services.ops.spill`), so memory stays bounded by the write buffers.
2. **derive**: `processes` processes take the buckets one at a time; each groups its facts by
   case, keeps the first copy of each event_id (as the worker's state does), derives every case
   once with `case_state.derive_rows` (the live worker's pure code) plus `facts.event_row` per
   fact, and writes one large batch per table and bucket through `ClickHouseSink`.

Memory: a reader holds at most buckets × `spill.CHUNK` facts; a deriver holds one bucket
(`BUCKET_EVENTS` facts). Disk: the spilled facts, ~0.3 kB per event, removed afterwards.

`catch_up()` then replays what was published since: it reads each partition from where the
last read stopped to its current end, appends the facts to their buckets, and re-derives only
the cases they touch (from all their facts, so from the bucket). The rebuild calls it before each
comparison, and once more after the switch, into the tables that became live.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import resource
import time
import traceback
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.ops.spill import BucketWriter, bucket_paths, read_facts
from services.ops.topics import AGENCY_TOPIC_PATTERN
from services.private_files import private_dir
from services.processor.case_state import CASE_HOME, derive_rows
from services.processor.facts import Fact, event_row, ms_to_datetime
from services.processor.ingest import Ingestor, RegistryUnavailable, Rejected
from services.serving.sink import ClickHouseSink, RowBatch, sink_clients
from services.settings import Settings

log = logging.getLogger("casestream.replay")

#: Events per bucket aimed at: what one deriver holds in memory at a time (~0.6 kB of RSS per
#: fact as Python objects plus its rows: ~100 MB per deriver), and one insert per table.
BUCKET_EVENTS = 50_000
CONSUME_BATCH = 10_000
PROGRESS_SECONDS = 5.0
REGISTRY_RETRY_MAX_SECONDS = 10.0
WATERMARK_ATTEMPTS = 5

Partition = tuple[str, int]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Range:
    """The offsets [start, end) of one partition to read."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class PhaseStats:
    """One phase (read or derive) summed over its processes."""

    seconds: float = 0.0
    messages: int = 0
    facts: int = 0
    rejected: int = 0
    rows: int = 0
    cases: int = 0
    peak_rss_mb: list[float] = field(default_factory=list)  # per process
    cpu_seconds: float = 0.0  # user + system, all processes: the cost on a busy machine

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class ReplayStats:
    read: PhaseStats = field(default_factory=PhaseStats)
    derive: PhaseStats = field(default_factory=PhaseStats)
    buckets: int = 0
    spilled_bytes: int = 0
    caught_up: int = 0  # events replayed by catch_up() after the first pass

    @property
    def seconds(self) -> float:
        return self.read.seconds + self.derive.seconds

    @property
    def peak_rss_mb(self) -> float:
        """The most the replay's processes held at once: the larger phase's processes together."""
        return max(sum(self.read.peak_rss_mb), sum(self.derive.peak_rss_mb), 0.0)


# ---------------------------------------------------------------------------------- offsets


def agency_partitions(settings: Settings) -> list[Partition]:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(settings.kafka_client_config()).list_topics(timeout=30)
    return sorted(
        (name, partition)
        for name, topic in metadata.topics.items()
        if AGENCY_TOPIC_PATTERN.match(name) and topic.error is None
        for partition in topic.partitions
    )


def watermarks(settings: Settings, partitions: Sequence[Partition]) -> dict[Partition, tuple]:
    """(first offset, end offset) of each partition, in one request per kind."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    if not partitions:
        return {}
    from confluent_kafka import KafkaException

    admin = AdminClient(settings.kafka_client_config())
    found: dict[Partition, list[int]] = {p: [0, 0] for p in partitions}
    for index, spec in enumerate((OffsetSpec.earliest(), OffsetSpec.latest())):
        for attempt in range(WATERMARK_ATTEMPTS):
            try:
                futures = admin.list_offsets(
                    {TopicPartition(t, p): spec for t, p in partitions}, request_timeout=60
                )
                for tp, future in futures.items():
                    found[(tp.topic, tp.partition)][index] = future.result().offset
                break
            except KafkaException as exc:
                # A leader moving answers UNKNOWN_LEADER_EPOCH or NOT_LEADER for a moment (seen
                # in a benchmark run), and librdkafka does not always flag those as retriable.
                if attempt + 1 == WATERMARK_ATTEMPTS:
                    raise
                log.warning("listing offsets failed (%s); retrying", exc)
                time.sleep(1.0 + attempt)
    return {p: (low, high) for p, (low, high) in found.items()}


# ------------------------------------------------------------------------------------ read


def _consumer(settings: Settings, group: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        settings.kafka_client_config(
            **{
                "group.id": group,  # never joined nor committed: partitions are assigned
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 4 << 20,
                "queued.max.messages.kbytes": 256 << 10,
            }
        )
    )


def _accept(ingestor: Ingestor, value: bytes | None, topic: str) -> Fact | None:
    """The fact of a message, None when rejected; waits out a registry outage like the intake."""
    delay = 0.5
    while True:
        try:
            return ingestor.accept(value, topic)
        except Rejected:
            return None
        except RegistryUnavailable as exc:
            log.warning("registry unavailable (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, REGISTRY_RETRY_MAX_SECONDS)


def read_ranges(
    settings: Settings,
    group: str,
    ranges: Sequence[Range],
    on_fact: Callable[[Fact], Any],
    *,
    ingestor: Ingestor | None = None,
    counted: Callable[[int], None] = lambda n: None,
    stall_seconds: float = 600.0,
) -> PhaseStats:
    """Read each range, hand every accepted fact to `on_fact` (in offset order per partition).

    A partition is done when a message at or past end - 1 was read, or when the consumer's
    position reached `end` (offsets a compaction or a transaction marker left out).
    """
    from confluent_kafka import TopicPartition

    stats = PhaseStats()
    started = time.monotonic()
    remaining = {(r.topic, r.partition): r.end for r in ranges if r.size}
    if not remaining:
        return stats
    ingestor = ingestor or Ingestor.from_settings(settings)
    consumer = _consumer(settings, group)
    try:
        consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges if r.size])
        last_progress = time.monotonic()
        while remaining:
            messages = consumer.consume(CONSUME_BATCH, timeout=1.0)
            done: list[Partition] = []
            if not messages:
                positions = consumer.position([TopicPartition(t, p) for t, p in remaining])
                done = [
                    (tp.topic, tp.partition)
                    for tp in positions
                    if tp.offset >= 0 and tp.offset >= remaining[(tp.topic, tp.partition)]
                ]
                if not done and time.monotonic() - last_progress > stall_seconds:
                    raise TimeoutError(
                        f"no message for {stall_seconds:.0f} s with {len(remaining)} "
                        f"partition(s) still to read, e.g. {next(iter(remaining))}"
                    )
            read = 0
            for message in messages:
                if message.error() is not None:
                    log.warning("consumer: %s", message.error())
                    continue
                topic = message.topic()
                where = (topic, message.partition())
                end = remaining.get(where)
                offset = message.offset()
                if end is None or offset >= end:  # past the snapshot: a later catch-up's
                    continue
                read += 1
                fact = _accept(ingestor, message.value(), topic)
                if fact is None:
                    stats.rejected += 1
                else:
                    stats.facts += 1
                    on_fact(fact)
                if offset >= end - 1:
                    done.append(where)
            for where in done:
                if remaining.pop(where, None) is not None:
                    consumer.pause([TopicPartition(*where)])
            if read or done:
                last_progress = time.monotonic()
            stats.messages += read
            counted(read)
    finally:
        consumer.close()
    stats.seconds = time.monotonic() - started
    return stats


# ---------------------------------------------------------------------------------- derive


def activity_rows(facts: Iterable[Fact], now: datetime) -> list[list[Any]]:
    """`agency_activity` rows (one per agency) for facts: the count, latest event time and
    highest sequence, as the worker appends per batch (its views sum and max them)."""
    per_agency: dict[str, list[Any]] = {}
    for fact in facts:
        entry = per_agency.get(fact.agency_id)
        if entry is None:
            entry = per_agency[fact.agency_id] = [fact.agency_id, 0, fact.occurred_ms, None, now]
        entry[1] += 1
        if fact.occurred_ms > entry[2]:
            entry[2] = fact.occurred_ms
        if fact.sequence is not None and (entry[3] is None or fact.sequence > entry[3]):
            entry[3] = fact.sequence
    for entry in per_agency.values():
        entry[2] = ms_to_datetime(entry[2])
    return list(per_agency.values())


def fact_rows(
    facts: Sequence[Fact], rows: RowBatch, now: datetime, homes: Mapping[str, str] | None = None
) -> None:
    """The rows of the facts themselves: one `events` row each (duplicates too, in read order:
    the table keeps the last one written, as it does for the worker) and `agency_activity`.

    ``homes``: each case's home province, as `case_rows` derived it. Without them (the catch-up
    writes events before it derives their cases) the rows carry no home and their cases are
    listed in `cases_rehomed`: the rollups then read those cases' homes from `cases`."""
    if homes is None:
        rows.extend("events", [event_row(f) for f in facts])
        rows.extend("cases_rehomed", [[case] for case in dict.fromkeys(f.case_id for f in facts)])
    else:
        rows.extend("events", [event_row(f, homes.get(f.case_id, "")) for f in facts])
    rows.extend("agency_activity", activity_rows(facts, now))


def case_rows(
    facts: Iterable[Fact],
    rows: RowBatch,
    only: Container[str] | None = None,
    homes: dict[str, str] | None = None,
) -> int:
    """Each case's rows, derived once from its facts (the first copy of an event_id is kept, as
    in the worker's state); with `only`, the cases named there; each case's home province put
    in `homes` when given. Returns the cases derived."""
    cases: dict[str, dict[str, Fact]] = {}
    for fact in facts:
        if only is not None and fact.case_id not in only:
            continue
        known = cases.get(fact.case_id)
        if known is None:
            known = cases[fact.case_id] = {}
        if fact.event_id not in known:
            known[fact.event_id] = fact
    case_table = rows.rows.setdefault("cases_state", [])
    transfers = rows.rows.setdefault("transfers_state", [])
    appraisals = rows.rows.setdefault("appraisals_state", [])
    violations = rows.rows.setdefault("integrity_violations_state", [])
    for known in cases.values():
        derived = derive_rows(known.values())
        if homes is not None:
            homes[derived.case[0]] = derived.case[CASE_HOME]
        case_table.append(derived.case)
        transfers.extend(derived.transfers)
        appraisals.extend(derived.appraisals)
        violations.extend(derived.violations)
    return len(cases)


def derive_buckets(
    settings: Settings,
    database: str,
    directory: Path,
    writers: list[str],
    buckets: Sequence[int],
    *,
    counted: Callable[[int], None] = lambda n: None,
) -> PhaseStats:
    """Derive and write whole buckets (every fact's `events` row, every case's rows)."""
    stats = PhaseStats()
    started = time.monotonic()
    sink = ClickHouseSink(sink_clients(settings, database))
    now = datetime.now(UTC)
    for bucket in buckets:
        facts = list(read_facts(bucket_paths(directory, bucket, writers)))
        rows = RowBatch()
        homes: dict[str, str] = {}
        stats.cases += case_rows(facts, rows, homes=homes)
        fact_rows(facts, rows, now, homes)
        sink.write(rows)
        stats.facts += len(facts)
        stats.messages += len(facts)
        stats.rows += len(rows)
        counted(len(facts))
    stats.seconds = time.monotonic() - started
    return stats


# ------------------------------------------------------------------------------- processes


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec. (`ru_maxrss` does not: a
    spawned child reported its parent's peak, 517 MB for a deriver holding ~100 MB.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(job: str, index: int, counters: Any, results: Any, args: tuple) -> None:
    """Entry point of a replay process: run one phase's share, report stats or the error."""

    def counted(n: int) -> None:
        with counters.get_lock():
            counters[index] += n

    try:
        if job == "read":
            settings, group, ranges, directory, buckets = args
            with BucketWriter(directory, buckets, f"r{index}") as writer:
                stats = read_ranges(settings, group, ranges, writer.add, counted=counted)
        else:
            settings, database, directory, writers, mine = args
            stats = derive_buckets(settings, database, directory, writers, mine, counted=counted)
        stats.peak_rss_mb = [_peak_rss_mb()]
        stats.cpu_seconds = _cpu_seconds()
        results.put((index, stats, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        results.put((index, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None


def _run_processes(
    job: str, shares: list[tuple], total: int, label: str, progress: Progress
) -> PhaseStats:
    """Run one phase in len(shares) spawned processes, printing progress; sum their stats.

    spawn, not fork: the parent holds librdkafka clients (threads), which a fork would copy in
    an undefined state.
    """
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", len(shares))
    results = context.Queue()
    processes = [
        context.Process(
            target=_child,
            args=(job, i, counters, results, share),
            name=f"casestream-replay-{job}-{i}",
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    total_stats = PhaseStats()
    finished: dict[int, PhaseStats] = {}
    try:
        next_report = started + PROGRESS_SECONDS
        while len(finished) < len(processes):
            try:
                index, stats, error = results.get(timeout=0.5)
            except queue.Empty:
                for i, process in enumerate(processes):
                    if i not in finished and process.exitcode not in (None, 0):
                        raise RuntimeError(
                            f"replay {job} process {i} died (exit code {process.exitcode})"
                        ) from None
            else:
                if error is not None:
                    raise RuntimeError(f"replay {job} process {index} failed: {error}")
                finished[index] = stats
            now = time.monotonic()
            if now >= next_report and len(finished) < len(processes):
                next_report = now + PROGRESS_SECONDS
                progress(_progress_line(label, sum(counters), total, now - started))
    finally:
        for process in processes:
            process.join(timeout=10 if not finished else 60)
            if process.is_alive():
                process.kill()
                process.join()
    for stats in finished.values():
        total_stats.messages += stats.messages
        total_stats.facts += stats.facts
        total_stats.rejected += stats.rejected
        total_stats.rows += stats.rows
        total_stats.cases += stats.cases
        total_stats.peak_rss_mb += stats.peak_rss_mb
        total_stats.cpu_seconds += stats.cpu_seconds
    total_stats.seconds = time.monotonic() - started
    return total_stats


def _us(stats: PhaseStats) -> str:
    return f"{1e6 * stats.cpu_seconds / stats.messages:,.0f} µs" if stats.messages else "n/a"


def _progress_line(label: str, done: int, total: int, seconds: float) -> str:
    rate = done / seconds if seconds else 0.0
    eta = f"{(total - done) / rate:,.0f} s" if rate and total >= done else "?"
    share = f" ({100 * done / total:.0f} %)" if total else ""
    return f"  {label}: {done:,} / {total:,} events{share}, {rate:,.0f} events/s, ETA {eta}"


def _balanced(items: Sequence[Any], weights: Sequence[int], parts: int) -> list[list[Any]]:
    """Split items into `parts` lists of about equal total weight (heaviest first)."""
    shares: list[list[Any]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for weight, item in sorted(zip(weights, items, strict=True), key=lambda x: -x[0]):
        lightest = loads.index(min(loads))
        shares[lightest].append(item)
        loads[lightest] += weight
    return shares


# ---------------------------------------------------------------------------------- replay


class Replay:
    """Replays the agency topics into `database` through a spill directory it owns."""

    def __init__(
        self,
        settings: Settings,
        database: str,
        directory: Path,
        *,
        group: str,
        processes: int = 2,
        progress: Progress = print,
    ) -> None:
        self.settings = settings
        self.database = database
        self.directory = directory
        self.group = group
        self.processes = max(1, processes)
        self.progress = progress
        self.positions: dict[Partition, int] = {}  # next offset to read, per partition
        self.writers: list[str] = []  # bucket files, in write order
        self.buckets = 0
        self.stats = ReplayStats()
        self._rounds = 0

    def _snapshot(self) -> list[Range]:
        """What to read now: each agency partition from where the replay stopped (its first
        offset for a partition not read yet, e.g. a new agency's topic) to its current end."""
        marks = watermarks(self.settings, agency_partitions(self.settings))
        return [
            Range(topic, partition, max(low, self.positions.get((topic, partition), low)), high)
            for (topic, partition), (low, high) in sorted(marks.items())
        ]

    def run(self) -> ReplayStats:
        """The first, full pass: read everything up to the end offsets of now, derive all."""
        private_dir(self.directory)  # the spilled facts are the full events: 0700, like the home
        ranges = self._snapshot()
        total = sum(r.size for r in ranges)
        self.buckets = max(2 * self.processes, math.ceil(total / BUCKET_EVENTS))
        self.stats.buckets = self.buckets
        self.progress(
            f"replaying {total:,} messages of {len(ranges)} agency partition(s) with "
            f"{self.processes} process(es), spilled to {self.buckets} bucket(s) in "
            f"{self.directory}"
        )
        readers = min(self.processes, max(1, sum(1 for r in ranges if r.size)))
        shares = _balanced(ranges, [r.size for r in ranges], readers)
        self.stats.read = _run_processes(
            "read",
            [(self.settings, self.group, s, self.directory, self.buckets) for s in shares],
            total,
            "read",
            self.progress,
        )
        self.writers = [f"r{i}" for i in range(readers)]
        self.stats.spilled_bytes = sum(p.stat().st_size for p in self.directory.iterdir())
        for r in ranges:
            self.positions[(r.topic, r.partition)] = r.end
        read = self.stats.read
        self.progress(
            f"  read {read.messages:,} messages in {read.seconds:.1f} s "
            f"({read.rate:,.0f}/s, {_us(read)} CPU per message): {read.facts:,} facts, {read.rejected:,} rejected "
            f"(not facts: the live worker dead-lettered them), "
            f"{self.stats.spilled_bytes / 1e6:,.0f} MB spilled"
        )
        bucket_ids = list(range(self.buckets))
        sizes = [
            sum(p.stat().st_size for p in bucket_paths(self.directory, b, self.writers))
            for b in bucket_ids
        ]
        shares = _balanced(bucket_ids, sizes, self.processes)
        self.stats.derive = _run_processes(
            "derive",
            [
                (self.settings, self.database, self.directory, self.writers, sorted(s))
                for s in shares
                if s
            ],
            read.facts,
            "derive",
            self.progress,
        )
        derive = self.stats.derive
        self.progress(
            f"  derived {derive.facts:,} facts of {derive.cases:,} cases into "
            f"{derive.rows:,} rows in {derive.seconds:.1f} s ({derive.rate:,.0f} facts/s, "
            f"{_us(derive)} CPU per fact)"
        )
        return self.stats

    def catch_up(self, database: str | None = None) -> int:
        """Replay what arrived since the last read into `database` (default: the replay's);
        returns the number of messages read."""
        ranges = [r for r in self._snapshot() if r.size]
        if not ranges:
            return 0
        if not self.buckets:
            raise RuntimeError("catch_up() before run()")
        self._rounds += 1
        writer_name = f"c{self._rounds}"
        sink = ClickHouseSink(sink_clients(self.settings, database or self.database))
        now = datetime.now(UTC)
        new: list[Fact] = []  # written every BUCKET_EVENTS: a long backlog stays bounded
        touched: dict[int, set[str]] = {}

        def write_new() -> None:
            rows = RowBatch()
            fact_rows(new, rows, now)
            sink.write(rows)
            new.clear()

        with BucketWriter(self.directory, self.buckets, writer_name) as writer:

            def on_fact(fact: Fact) -> None:
                new.append(fact)
                touched.setdefault(writer.add(fact), set()).add(fact.case_id)
                if len(new) >= BUCKET_EVENTS:
                    write_new()

            stats = read_ranges(self.settings, self.group, ranges, on_fact)
        write_new()
        self.writers.append(writer_name)
        for r in ranges:
            self.positions[(r.topic, r.partition)] = r.end
        for bucket, cases in sorted(touched.items()):
            rows = RowBatch()
            case_rows(read_facts(bucket_paths(self.directory, bucket, self.writers)), rows, cases)
            sink.write(rows)
        self.stats.caught_up += stats.messages
        return stats.messages
