"""Shared machinery of the benchmarks: results, timing, memory, the stack, workers, profiles.

Every scenario measures its subject *and* a baseline in the same run on the same data, and
reports the ratio next to the absolute numbers: the machine is small (2 cores) and shared, so
absolute figures move from run to run while the ratios move much less.

Memory is the peak resident set size (VmHWM) of the process that does the work: the benchmark
process itself for in-process work (reset with ``/proc/<pid>/clear_refs`` before each
measurement), the worker subprocess, or the ClickHouse endpoint process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from services.settings import Settings
from services.stack.process import free_ports

REPO = Path(__file__).resolve().parents[1]
STACK_PARTS = ["kafka", "registry", "clickhouse"]  # Prefect is not needed by any scenario
DEFAULT_SEED = 8

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    events: int = 200_000  # generated history for publish / process / rebuild / endpoint
    query_events: int = 10_000_000  # rows of `events` the query scenario runs on
    latency_seconds: float = 60.0
    latency_rate: int = 1_000
    bare_latency_seconds: float = 20.0
    query_repeats: int = 5
    small_queries: int = 300
    # facts in a worker's state when it is restarted (measured at each size: recovery should not
    # grow with it, since only the changelog tail after the persisted offset is read)
    restart_facts: tuple[int, ...] = (500_000, 1_000_000)

    @classmethod
    def quick(cls, events: int | None = None) -> Sizes:
        return cls(
            events=events or 20_000,
            query_events=1_000_000,
            latency_seconds=15.0,
            bare_latency_seconds=5.0,
            query_repeats=3,
            small_queries=100,
            restart_facts=(100_000, 200_000),
        )


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """One row of the results table."""

    scenario: str
    result: str  # e.g. "12,345 events/s"
    baseline: str  # e.g. "bare producer 40,000 events/s"
    ratio: float | None  # result / baseline in the scenario's own sense (see ratio_label)
    ratio_label: str  # how to read the ratio, e.g. "of bare" or "× in-process time"
    target: str
    met: bool | None  # None: no target or not measurable
    numbers: dict[str, Any] = field(default_factory=dict)  # absolute figures
    memory: dict[str, float] = field(default_factory=dict)  # peak RSS in MB per process
    command: str = ""
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fmt_num(value: float | int | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(result: Result) -> str:
    if result.ratio is None:
        return "n/a"
    return f"{result.ratio:.2f} {result.ratio_label}".rstrip()


def fmt_met(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def fmt_memory(memory: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:,.0f} MB" for name, mb in memory.items()) or "-"


def fmt_numbers(numbers: dict[str, Any]) -> str:
    parts = []
    for key, value in numbers.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, float):
            value = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        parts.append(f"{key}={value}")
    return "; ".join(parts)


def results_table(results: Sequence[Result], *, details: bool = True) -> str:
    """Markdown table of the results (what `casestream bench` prints)."""
    head = ["scenario", "result", "baseline (same run)", "ratio", "target", "met", "peak RSS"]
    if details:
        head += ["absolute numbers", "reproduce"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [
            r.scenario,
            r.result,
            r.baseline,
            fmt_ratio(r),
            r.target,
            fmt_met(r.met),
            fmt_memory(r.memory),
        ]
        if details:
            cells += [
                fmt_numbers(r.numbers) + (f" — {r.notes}" if r.notes else ""),
                f"`{r.command}`" if r.command else "",
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def failed_result(scenario: str, exc: BaseException, command: str) -> Result:
    return Result(
        scenario,
        "error",
        "-",
        None,
        "",
        "-",
        None,
        notes=f"{type(exc).__name__}: {exc}"[:500],
        command=command,
    )


# --------------------------------------------------------------------------- timing


class Timer:
    """`with Timer() as t: ...` then `t.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed_runs(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Run fn warmup + repeats times; the seconds of the measured runs and the last value."""
    value = None
    for _ in range(warmup):
        value = fn()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, value


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak RSS (VmHWM) of a live process in MB (default: this process)."""
    kb = _status_kb(pid or os.getpid(), "VmHWM")
    return None if kb is None else kb / 1024


def rss_mb(pid: int | None = None) -> float | None:
    kb = _status_kb(pid or os.getpid(), "VmRSS")
    return None if kb is None else kb / 1024


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc/<pid>/stat, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def reset_peak_rss(pid: int | None = None) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is this measurement's."""
    try:
        Path(f"/proc/{pid or os.getpid()}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def endpoint_pid(settings: Settings) -> int | None:
    from services.stack import clickhouse

    return clickhouse.process(settings).pid()


# --------------------------------------------------------------------------- the stack


def private_stack_env(home: Path, partitions: int = 4) -> dict[str, str]:
    """A stack of our own on free ports (like tests/conftest.py), so no other one is touched."""
    kafka, controller, registry, management, clickhouse, prefect = free_ports(6)
    return {
        "CASESTREAM_HOME": str(home),
        "CASESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "CASESTREAM_KAFKA_CONTROLLER_PORT": str(controller),
        "CASESTREAM_REGISTRY_URL": f"http://127.0.0.1:{registry}/apis/ccompat/v7",
        "CASESTREAM_REGISTRY_MANAGEMENT_PORT": str(management),
        "CASESTREAM_CLICKHOUSE_URL": f"http://127.0.0.1:{clickhouse}",
        "CASESTREAM_PREFECT_API_URL": f"http://127.0.0.1:{prefect}/api",
        "CASESTREAM_TOPIC_PARTITIONS": str(partitions),
    }


# Every worker the benchmark starts (its own and the rebuild's, which inherits the environment):
# no metrics port, and no latency probes: a probe every 10 s per worker keeps the shared facts
# topic from ever showing zero lag twice in a row, which only delays the catch-up detection of
# `rebuild` (the latency scenario measures real events instead).
WORKER_ENV = {"CASESTREAM_WORKER_METRICS_ADDR": "off", "CASESTREAM_PROBE_INTERVAL_SECONDS": "0"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def bench_stack(mode: str = "private", *, keep: bool = False, log=print) -> Iterator[Settings]:
    """The stack the benchmarks run on.

    ``private``: a fresh stack (Kafka, Apicurio, the ClickHouse endpoint) on free ports with its
    own home, started here and stopped (and deleted unless ``keep``) at the end.
    ``settings``: the stack the CASESTREAM_* settings point at, started if it is not running and
    left running; the benchmark's events then land in its agency topics.
    """
    from services.stack import manager

    if mode == "settings":
        with _environment(WORKER_ENV):
            settings = Settings.from_env()
            manager.up(settings, log=log, parts=STACK_PARTS)
            yield settings
        return
    if mode != "private":
        raise ValueError(f"stack mode must be 'private' or 'settings', not {mode!r}")
    home = Path(tempfile.mkdtemp(prefix="casestream-bench-"))
    with _environment({**private_stack_env(home), **WORKER_ENV}):
        settings = Settings.from_env()
        try:
            log(f"starting a private stack under {home}")
            manager.up(settings, log=log, parts=STACK_PARTS)
            yield settings
        finally:
            manager.down(settings, log=lambda m: None, parts=STACK_PARTS)
            if keep:
                log(f"kept the benchmark stack's home: {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- Kafka helpers


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Client configuration for the settings' cluster (incl. SASL/SSL when configured)."""
    make = getattr(settings, "kafka_client_config", None)
    if make is not None:
        return make(**extra)
    return {"bootstrap.servers": settings.kafka_bootstrap, **extra}


def _worker_halves(settings: Settings, app_id: str) -> tuple[list, list]:
    """A worker's partition lags: (its intake's on the agency topics, its derive's)."""
    from services.ops.consumer_lag import worker_lag
    from services.ops.topics import facts_topic

    lags = worker_lag(settings, app_id)
    derive = [p for p in lags if p.topic == facts_topic(app_id)]
    intake = [p for p in lags if p.topic != facts_topic(app_id)]
    return intake, derive


def worker_lag_total(settings: Settings, app_id: str) -> int | None:
    """A worker's uncommitted messages, both of its groups (None until each committed once)."""
    halves = _worker_halves(settings, app_id)
    if not all(any(p.committed >= 0 for p in half) for half in halves):
        return None
    return sum(p.lag for half in halves for p in half)


def intake_assigned(settings: Settings, app_id: str) -> bool:
    """The worker's intake group is stable with its partitions assigned: it fetches from now."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    from services.processor.intake import intake_group

    group = intake_group(app_id)
    admin = AdminClient(kafka_config(settings))
    try:
        found = admin.describe_consumer_groups([group], request_timeout=5)[group].result(5)
    except Exception:  # noqa: BLE001 - the group does not exist yet
        return False
    return found.state == ConsumerGroupState.STABLE and any(
        member.assignment.topic_partitions for member in found.members
    )


def wait_pipeline_started(
    settings: Settings, app_id: str, alive: Callable[[], bool], timeout: float = 600.0
) -> float | None:
    """When the worker's intake got its partitions (wall clock), or None.

    The time of the last poll that saw no assignment yet, so the pipeline span measured from it
    is never shorter than the real one: start-up (imports, migrations, the group join) is over,
    the first fetch and everything after it count. Earlier starts were later, and flattered:
    derive's first commit (faust's, every few seconds, after the intake had re-keyed most of a
    200,000-event history: 0.75 of the ceiling, corrected 2026-12-05), then the intake's first
    commit (its first batch, up to 20,000 events, ~0.6 s of work, lay before it).
    """
    started = time.monotonic()
    before = time.time()
    while time.monotonic() - started < timeout and alive():
        if intake_assigned(settings, app_id):
            return before
        before = time.time()
        time.sleep(0.1)
    return None


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the worker runs its intake as a child process)."""
    found = [pid]
    for parent in found:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found.extend(int(child) for child in children)
    return found


def agency_topics(settings: Settings) -> list[str]:
    from services.ops.consumer_lag import matching_topics
    from services.ops.topics import AGENCY_TOPIC_PATTERN

    return matching_topics(settings, AGENCY_TOPIC_PATTERN)


def topic_messages(settings: Settings, topics: Iterable[str], retries: int = 30) -> int:
    """Messages currently held by the topics (high - low watermark, summed).

    One batched ListOffsets per offset kind; retried while partitions of just-created topics
    have no leader yet.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    topics = list(topics)
    if not topics:
        return 0
    admin = AdminClient(kafka_config(settings))
    for attempt in range(retries):
        try:
            metadata = admin.list_topics(timeout=30)
            partitions = [
                TopicPartition(t, p)
                for t in topics
                if t in metadata.topics
                for p in metadata.topics[t].partitions
            ]
            if not partitions:
                return 0
            total = 0
            for spec, sign in ((OffsetSpec.latest(), 1), (OffsetSpec.earliest(), -1)):
                futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=60)
                total += sign * sum(f.result().offset for f in futures.values())
            return total
        except Exception:  # noqa: BLE001 - leaders of new partitions not elected yet
            if attempt == retries - 1:
                raise
            time.sleep(1.0)
    return 0


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> None:
    """Create missing topics (default: the settings' partition count), wait for their leaders."""
    from confluent_kafka.admin import AdminClient

    from services.ops.topics import ensure_topics as _ensure

    names = list(names)
    for start in range(0, len(names), 200):
        _ensure(
            settings,
            dict.fromkeys(names[start : start + 200], partitions or settings.topic_partitions),
            timeout=120,
        )
    admin = AdminClient(kafka_config(settings))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until every partition has a leader
        topics = admin.list_topics(timeout=30).topics
        if all(
            n in topics
            and topics[n].partitions
            and all(p.leader >= 0 for p in topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.5)


def producer_config(settings: Settings) -> dict[str, Any]:
    """What the SDK publisher configures (services/agency/publisher.py), for the baselines."""
    return {
        **kafka_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 60_000,
    }


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """A seeded generated history (JSON-form events in delivery order)."""

    path: Path
    events: list[dict[str, Any]]
    seed: int

    @property
    def agencies(self) -> list[str]:
        return sorted({e["agency_id"] for e in self.events})

    @property
    def unique_events(self) -> int:
        return len({e["event_id"] for e in self.events})

    @classmethod
    def generate(cls, work: Path, events: int, seed: int = DEFAULT_SEED, log=print) -> Dataset:
        from services.agency.generator import GeneratorOptions, write_jsonl

        path = work / f"history-seed{seed}-{events}.jsonl"
        if not path.exists():
            started = time.perf_counter()
            # Delivery order (per-agency batches), like agencies really publish.
            summary = write_jsonl(
                GeneratorOptions(
                    seed=seed,
                    events=events,
                    start=date(2021, 1, 1),
                    end=date(2025, 12, 31),
                    sorted=False,
                    tmp_dir=str(work),
                ),
                path,
            )
            log(
                f"generated {summary.lines:,} events ({summary.cases:,} cases, "
                f"{summary.agencies} agencies) in {time.perf_counter() - started:.1f}s"
            )
        with open(path, encoding="ascii") as f:
            loaded = [json.loads(line) for line in f]
        return cls(path, loaded, seed)


def retag(event: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy of a generated event with ids of its own (new event_id, case and transfer ids)."""
    import uuid

    out = {**event, "payload": dict(event["payload"])}
    out["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{event['event_id']}"))
    out["case_id"] = f"{tag}:{event['case_id']}"
    for key in ("transfer_id", "appraisal_id"):
        if key in out["payload"]:
            out["payload"][key] = f"{tag}:{out['payload'][key]}"
    out.pop("sequence", None)
    return out


# --------------------------------------------------------------------------- worker


class WorkerRun:
    """`casestream worker run` as a subprocess with its own consumer group and database."""

    def __init__(
        self,
        settings: Settings,
        app_id: str,
        database: str,
        log_path: Path,
        *,
        instance: str = "0",
        loglevel: str = "warning",
    ) -> None:
        self.settings = replace(settings, worker_app_id=app_id, clickhouse_database=database)
        self.app_id = app_id
        self.database = database
        self.log_path = log_path
        self.instance = instance  # names the state directory: one per process of an app id
        self.loglevel = loglevel  # `info` for faust's "Ready" and derive's "deriving <tp>"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0  # wall clock (time.time()) of the spawn

    def start(self) -> WorkerRun:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **WORKER_ENV,
            "CASESTREAM_WORKER_APP_ID": self.app_id,
            "CASESTREAM_CLICKHOUSE_DATABASE": self.database,
            "CASESTREAM_WORKER_INSTANCE": self.instance,
        }
        self.started_at = time.time()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    "worker",
                    "run",
                    "--loglevel",
                    self.loglevel,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def peak_rss_mb(self) -> float | None:
        """The worker's processes' peak RSS added up (its intake runs as a child process)."""
        if not self.alive() or not self.pid:
            return None
        return sum(peak_rss_mb(pid) or 0.0 for pid in process_tree(self.pid))

    def log_lines(self, needle: str) -> list[str]:
        """The lines of this run's log that contain `needle`."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if needle in line]

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker's processes so far (None once it exited)."""
        if not self.alive() or not self.pid:
            return None
        return sum(process_cpu_seconds(pid) or 0.0 for pid in process_tree(self.pid))

    def lag(self) -> int | None:
        """Uncommitted messages on the agency topics and the facts topic (None: no commit yet)."""
        return worker_lag_total(self.settings, self.app_id)

    def wait_written(self, rows: int, timeout: float = 3600.0, still: float = 5.0) -> None:
        """Until the worker's `events` table holds `rows` rows or has stopped growing for
        `still` seconds, asked every 0.5 s.

        The quiet wait before `wait_caught_up` in the timed scenarios: a lag poll lists the
        offsets of ~830 agency partitions and the groups' commits, ~35 ms of this process's CPU
        and ~24 ms of the broker's each (measured 2026-12-05), taken from the two cores the
        timed pipeline runs on; a `count()` costs the endpoint ~4.4 ms and this process ~0.8 ms.
        The count only decides when the lag polls begin: duplicates may reach `rows` early, and
        merged away (topics holding events twice) they may never reach it, hence `still`.
        """
        client = self.settings.clickhouse_client(database=self.database)
        started = time.monotonic()
        last, grew_at = -1, started
        while time.monotonic() - started < timeout and self.alive():
            with contextlib.suppress(Exception):  # a failed poll waits for the next one
                count = int(client.command("SELECT count() FROM events"))
                if count >= rows:
                    return
                if count != last:
                    last, grew_at = count, time.monotonic()
            if last > 0 and time.monotonic() - grew_at >= still:
                return
            time.sleep(0.5)

    def wait_caught_up(self, timeout: float = 3600.0, progress=None) -> float:
        """Until the group committed everything on the agency and facts topics (twice)."""
        started = time.monotonic()
        zero = 0
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise RuntimeError(f"worker {self.app_id} exited:\n{self.log_tail()}")
            total = self.lag()
            if progress:
                progress(total)
            zero = zero + 1 if total == 0 else 0
            if zero >= 2:
                return time.monotonic() - started
            time.sleep(1.0)
        raise TimeoutError(f"worker {self.app_id} still behind after {timeout:.0f}s")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or persisted on the way out."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def write_timeline(
    client, database: str, table: str = "events", where: str = "1"
) -> list[tuple[float, int]]:
    """(insert time as epoch seconds, rows) per distinct `ingested_at`, i.e. per worker write."""
    rows = client.query(
        f"SELECT toUnixTimestamp64Milli(ingested_at) AS t, count() FROM {database}.{table} "
        f"WHERE {where} GROUP BY t ORDER BY t"
    ).result_rows
    return [(int(t) / 1000.0, int(n)) for t, n in rows]


def steady_rate(timeline: list[tuple[float, int]]) -> tuple[float | None, float]:
    """Events/s between the first and the last write (the first write's rows excluded, since
    its processing time lies before the first timestamp); and that span in seconds."""
    if len(timeline) < 2:
        return None, 0.0
    span = timeline[-1][0] - timeline[0][0]
    rows = sum(n for _, n in timeline[1:])
    return (rows / span if span > 0 else None), span


# --------------------------------------------------------------------------- profiles


class PySpy:
    """`uvx py-spy record` on a process for a while (sampling, non-blocking), raw stacks out."""

    def __init__(self, pid: int, seconds: float, output: Path, rate: int = 97) -> None:
        self.pid = pid
        self.seconds = seconds
        self.output = output
        self.rate = rate
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None

    def start(self) -> PySpy:
        exe = shutil.which("uvx")
        argv = ([exe] if exe else [sys.executable, "-m", "uv", "tool", "run"]) + [
            "py-spy",
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            str(int(self.seconds)),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",  # the worker's intake is a child process
            "--output",
            str(self.output),
        ]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.output.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in wait
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        return self

    def stop(self) -> bool:
        """End the recording now (py-spy writes what it sampled on SIGINT)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(60)

    def wait(self, timeout: float | None = None) -> bool:
        if self.proc is None:
            return False
        try:
            self.proc.wait(timeout if timeout is not None else self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self._log.close()
        ok = self.output.exists() and self.output.stat().st_size > 0
        if not ok:
            self.error = self.output.with_suffix(".log").read_text(errors="replace")[-500:]
        return ok


@dataclass
class Profile:
    samples: int
    self_top: list[tuple[str, float]]  # (function, % of samples on top of the stack)
    inclusive_top: list[tuple[str, float]]  # (function, % of samples anywhere in the stack)
    by_area: list[tuple[str, float]]  # (area, % self)

    def render(self, top: int = 15) -> str:
        lines = [
            f"{self.samples:,} samples (py-spy, non-blocking, idle excluded)",
            "",
            "self time by area:",
        ]
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in self.by_area]
        lines += ["", "hottest functions (self):"]
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in self.self_top[:top]]
        lines += ["", "inclusive (function and what it calls):"]
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in self.inclusive_top[:top]]
        return "\n".join(lines)


AREAS = [  # (substring of the frame's file, area); first match wins
    ("services/contracts/events.py", "validation (contracts/events.py)"),
    ("services/contracts/reference.py", "validation (contracts/reference.py)"),
    ("services/contracts/codec.py", "Avro decode/encode (codec + fastavro)"),
    ("fastavro", "Avro decode/encode (codec + fastavro)"),
    ("services/processor/case_state.py", "derive: case state"),
    ("services/processor/transfer_lag.py", "derive: transfer/appraisal pairing"),
    ("services/processor/batch.py", "derive: apply_batch"),
    ("services/processor/facts.py", "facts (to/from JSON, event rows)"),
    ("services/processor/ingest.py", "ingest"),
    ("services/processor/worker.py", "worker agents"),
    ("services/serving/sink.py", "ClickHouse sink"),
    ("clickhouse_connect", "clickhouse-connect (serialise + HTTP)"),
    ("urllib3", "clickhouse-connect (serialise + HTTP)"),
    ("services/ops", "ops metrics/probes"),
    ("prometheus_client", "ops metrics/probes"),
    ("faust", "faust (streams, tables, producer)"),
    ("mode/", "faust (streams, tables, producer)"),
    ("aiokafka", "aiokafka (consumer/producer protocol)"),
    ("kafka/", "aiokafka (consumer/producer protocol)"),
    ("cramjam", "aiokafka (consumer/producer protocol)"),
    ("lz4", "compression (lz4)"),
    ("json/", "json (stdlib)"),
    ("asyncio", "asyncio event loop"),
    ("uuid.py", "uuid (stdlib)"),
    ("datetime", "datetime"),
    ("threading.py", "threads (executor)"),
    ("concurrent/futures", "threads (executor)"),
]


def _frame_name(frame: str) -> str:
    """'decode (services/contracts/codec.py:152)' -> 'decode (contracts/codec.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def _area(frame: str) -> str:
    for needle, area in AREAS:
        if needle in frame:
            return area
    return "other"


def summarize_profile(raw_path: Path, top: int = 20) -> Profile:
    """Aggregate py-spy's raw (collapsed) stacks: self and inclusive share per function."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    area_counts: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[_frame_name(leaf)] += count
        # Self time of the leaf goes to the innermost frame that belongs to a known area.
        area = "other"
        for frame in reversed(frames):
            area = _area(frame)
            if area != "other":
                break
        area_counts[area] += count
        for name in {_frame_name(f) for f in frames}:
            incl_counts[name] += count
    if total == 0:
        return Profile(0, [], [], [])

    def pct(counter: Counter[str], n: int | None = top) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in counter.most_common(n)]

    inclusive = [
        (k, p)
        for k, p in pct(incl_counts, None)
        if not k.startswith(("<module>", "run (", "_run_module", "main ("))
    ][:top]
    return Profile(total, pct(self_counts), inclusive, pct(area_counts, None))


def drop_worker_traces(settings: Settings, app_ids: set[str]) -> None:
    """Delete the topics (facts, changelog, faust's assignor topic) and consumer groups of the
    benchmark's workers. Left on a long-lived stack (`--stack settings`), every run added a
    compacted changelog for the broker's cleaner and three topics to every metadata answer: the
    same code measured 0.50 then 0.42 of the ceiling after ~15 runs on one stack (2026-12-05)."""
    from confluent_kafka.admin import AdminClient

    from services.processor.intake import intake_group

    admin = AdminClient(kafka_config(settings))
    topics = [
        name
        for name in admin.list_topics(timeout=30).topics
        if any(name.startswith(f"{app_id}-") for app_id in app_ids)
    ]
    ours = app_ids | {intake_group(app_id) for app_id in app_ids}
    groups = [
        g.group_id for g in admin.list_consumer_groups().result(30).valid if g.group_id in ours
    ]
    futures = [
        *(admin.delete_topics(topics).values() if topics else ()),
        *(admin.delete_consumer_groups(groups).values() if groups else ()),
    ]
    for future in futures:
        with contextlib.suppress(Exception):  # already gone, or the broker is: nothing to keep
            future.result(30)


# --------------------------------------------------------------------------- context


@dataclass
class BenchContext:
    """What the scenarios share within one `casestream bench` run."""

    settings: Settings
    sizes: Sizes
    work: Path
    command: str = "casestream bench"
    quick: bool = False
    profile: bool = True
    agency_partitions: int | None = None  # None: the settings' topic_partitions (the default)
    repeat: int = 1  # runs of the process scenario; its row is the run of median ratio
    log: Callable[[str], None] = print
    stamp: str = field(default_factory=lambda: time.strftime("%H%M%S"))
    seed: int = DEFAULT_SEED
    live: WorkerRun | None = None  # a caught-up worker over the dataset (process scenario)
    published: bool = False
    baselines: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)  # scenario -> rendered profile
    notes: list[str] = field(default_factory=list)
    _dataset: Dataset | None = None
    _inproc_path: Path | None = None
    _workers: list[WorkerRun] = field(default_factory=list)
    _databases: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ data
    @property
    def dataset(self) -> Dataset:
        """The generated history, loaded once and frozen out of this process's garbage collector.

        The bench process holds it for the whole run (~200,000 dicts at the default size), and
        every baseline that runs here (the bare decode, the bare producer, the bare round trip)
        and the SDK publishing here would otherwise pay for full collections walking it: the
        bare decode measured 51,750 and 51,362 events/s with it in the collector, 58,145 and
        59,952 with it frozen (alternated, one stack) — a ceiling 12 % too low flattered every
        ratio against it. No real publisher or consumer holds such a heap.
        """
        if self._dataset is None:
            self._dataset = Dataset.generate(self.work, self.sizes.events, self.seed, self.log)
            gc.collect()
            gc.freeze()
        return self._dataset

    def repro(self, scenario: str) -> str:
        size = "--quick" if self.quick else f"--events {self.sizes.events}"
        repeat = f" --repeat {self.repeat}" if scenario == "process" and self.repeat > 1 else ""
        return f"{self.command} --scenario {scenario} {size}{repeat}".strip()

    def name(self, what: str) -> str:
        """A per-run identifier for databases / consumer groups."""
        return f"bench_{self.stamp}_{what}"

    def client(self, database: str | None = None):
        return self.settings.clickhouse_client(database=database or "default")

    def new_database(self, what: str) -> str:
        from services.serving.migrations import migrate

        database = self.name(what)
        migrate(self.settings, database=database, log=lambda m: None)
        self._databases.append(database)
        return database

    def inproc_client(self, database: str | None = None):
        """clickhouse-connect's in-process chDB client (one engine per process: one path)."""
        import clickhouse_connect

        if self._inproc_path is None:
            self._inproc_path = self.work / "chdb-inprocess"
            self._inproc_path.mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(interface="chdb", path=str(self._inproc_path))
        if database:
            client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.database = database
        return client

    # ------------------------------------------------------------------ topics and events
    def ensure_agency_topics(self, agencies: Iterable[str]) -> None:
        from services.contracts.events import topic_for_agency

        ensure_topics(
            self.settings, [topic_for_agency(a) for a in agencies], self.agency_partitions
        )

    def agency_messages(self) -> int:
        return topic_messages(self.settings, agency_topics(self.settings))

    def ensure_published(self) -> None:
        """The dataset is on the agency topics (published with the SDK if nobody did yet)."""
        if self.published:
            return
        data = self.dataset
        if self.agency_messages() >= len(data.events):
            self.published = True
            return
        from services.agency.publisher import Publisher

        self.ensure_agency_topics(data.agencies)
        outbox = self.work / "outbox-setup.sqlite"
        if outbox.exists():
            # The topics lack the dataset, so this outbox was filled for another stack (a `--work`
            # kept across a new stack): its event ids would make every publish an idempotent
            # no-op, and the benchmark would wait for events nobody sent.
            self.log(f"starting a new setup outbox ({outbox} is from another stack)")
            for path in (outbox, *outbox.parent.glob(outbox.name + "-*")):
                path.unlink(missing_ok=True)
        self.log(f"publishing {len(data.events):,} events (not timed)")
        with Publisher(None, self.settings, outbox_path=outbox) as pub:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(8) as pool:  # ~830 subjects, one registry round trip each
                list(pool.map(pub.schema_id, data.agencies))
            for chunk in chunks(data.events, 2000):
                pub.publish_many(chunk)
        self.published = True

    # ------------------------------------------------------------------ workers
    def start_worker(
        self, what: str, *, instance: str = "0", loglevel: str = "warning", log_name: str = ""
    ) -> WorkerRun:
        """A worker of app id / database named by `what`; several calls with one `what` and
        different `instance`s are processes of one app id sharing its partitions."""
        app_id = f"casestream-bench-{self.stamp}-{what}"
        log_path = self.work / "logs" / f"worker-{log_name or what}.log"
        worker = WorkerRun(
            self.settings, app_id, self.name(what), log_path, instance=instance, loglevel=loglevel
        )
        if worker.database not in self._databases:
            self._databases.append(worker.database)
        self._workers.append(worker)
        return worker.start()

    def ensure_live_worker(self) -> WorkerRun:
        """A worker (own group and database) that has processed everything on the topics."""
        if self.live is None or not self.live.alive():
            self.ensure_published()
            self.log("starting a worker over the dataset (not timed)")
            self.live = self.start_worker("live")
        self.live.wait_caught_up()
        return self.live

    def close(self, drop: bool = True) -> None:
        for worker in self._workers:
            worker.stop()
        if drop and self._databases:
            with contextlib.suppress(Exception):
                client = self.client()
                for database in self._databases:
                    client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        if drop and self._workers:
            with contextlib.suppress(Exception):
                drop_worker_traces(self.settings, {w.app_id for w in self._workers})
