"""The stream worker: agency topics → validated facts → per-case state → ClickHouse.

Two halves in two processes (intake_process.py says why):

* the intake (intake.py on librdkafka, in a child process) reads every agency topic by
  regular expression (new agencies are picked up within seconds, nothing restarts), decodes
  with the registry and validates. Valid events travel as envelopes (envelope.py: one message per facts partition
  per batch) on ``<app_id>-facts-by-case``; anything else goes to the dead-letter topic with
  its raw bytes, source topic/partition/offset and a reason. It never raises on input, and
  commits only what the broker acknowledged.
* the faust agent ``derive`` consumes envelopes in batches, keeps every fact of a case in the
  table ``case-state`` (RocksDB on disk, state_store.py; its changelog co-partitioned with the
  facts, so any number of workers of one app id share the partitions), derives the touched
  cases' rows (batch.py) and writes them to ClickHouse. A batch is acknowledged only after the
  changelog, the local state and ClickHouse took it (`derive_batch` gives the order), so a
  crash at any point replays into the same rows (all sinks are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NoReturn

import faust

from services.ops import metrics as ops_metrics  # ops: Prometheus figures
from services.ops import probe as ops_probe  # ops: end-to-end latency probes
from services.ops.consumer_lag import group_lag, worker_lag
from services.ops.topics import PROBE_TOPIC, ensure_topics, facts_topic
from services.private_files import UMASK
from services.processor import collector, envelope, instance, predecessor, priority, restarts
from services.processor.batch import apply_batch
from services.processor.changelog_producer import ChangelogProducer, DeliveryFailed
from services.processor.facts import Fact
from services.processor.intake_process import IntakeProcess
from services.processor.refetch import read_offsets, start_offsets
from services.processor.stall import StallTracker
from services.processor.state_store import PartitionStates
from services.processor.state_upgrade import upgrade_state
from services.processor.table_manager import PromptTableManager
from services.processor.write_behind import WriteBehind
from services.processor.written_offsets import WrittenOffsets
from services.serving.sink import TABLES as SINK_TABLES
from services.serving.sink import ClickHouseSink, RowBatch, sink_clients
from services.settings import Settings

log = logging.getLogger("casestream.worker")

# Up to ~60,000 facts (an envelope holds up to 1,000: intake.py). Each batch's write makes about
# 14 ClickHouse parts whatever its size (the events table and its view split by year), and each
# touched case's state rows and changelog record are written once per batch: re-inserting one
# run's rows in 19 batches cost the endpoint 3.4 s of CPU, in 4 batches 1.6 s. Under load the
# buffer fills while the previous batch is derived, so batches grow with the backlog; at low
# traffic BATCH_WITHIN_SECONDS decides, as before. 120 was no better than 60.
ENVELOPES_PER_BATCH = 60
BATCH_WITHIN_SECONDS = 0.05  # envelopes arrive filled: wait briefly for more (latency)
CASE_STATE_TABLE = "case-state"
DELIVERY_TIMEOUT_SECONDS = 60.0
FETCH_MAX_WAIT_MS = 100
STALL_CHECK_SECONDS = 15.0
STALL_SECONDS = 45.0
HARD_STALL_SECONDS = 180.0  # the thread watchdog: see _start_thread_watchdog
_ACTIVITY = {"busy": 0, "watchdog_tick": 0.0}  # batches in progress, last loop-watchdog tick
LOOP_SILENT_SECONDS = 120.0  # the loop watchdog not ticking this long: the loop is stuck
LEAVE_SECONDS = 3.0  # a stop: each consumer group's goodbye, then the worker goes anyway


def _shorten_faust_fetch_wait(wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """faust-streaming 0.15 builds its aiokafka consumer with ``fetch_max_wait_ms=1500``, fixed.

    aiokafka leaves a partition whose fetched records are still buffered out of the next fetch
    request, and that request then waits up to fetch_max_wait on the other (empty) partitions:
    a fact arriving meanwhile on the left-out partition waits for it. At 1,000 events/s this
    was the largest part of the re-keyed → visible latency (docs/benchmarks.md). A broker
    answers an empty fetch after this shorter wait; the cost is a few more fetch requests.
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer
    if getattr(original, "_casestream_patched", False):
        return

    def _create_worker_consumer(self, transport):  # noqa: ANN001, ANN202 - faust's signature
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    _create_worker_consumer._casestream_patched = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = _create_worker_consumer


def _commit_only_written_facts() -> None:
    """Make faust commit, for the facts topic, only offsets below the first fact not written.

    faust computes the offsets to commit from what its stream acknowledged, which can include
    facts never handed to the agent (written_offsets.py lists the paths; one lost a fact of
    1,500 after a SIGKILL in 2 of 4 full test runs). For the topic named by the app's
    ``casestream_written`` guard, the offset comes from that guard instead; faust's own answer
    is still asked for, because asking trims its lists of acknowledged offsets. Every other
    topic (the changelog, the probes) keeps faust's rule.
    """
    from faust.transport.consumer import Consumer

    original = Consumer._filter_committable_offsets
    if getattr(original, "_casestream_patched", False):
        return

    def _filter_committable_offsets(self, tps):  # noqa: ANN001, ANN202 - faust's signature
        guard = getattr(self.app, "casestream_written", None)
        if guard is None:
            return original(self, tps)
        topic, written = guard
        tps = list(tps)
        offsets = original(self, [tp for tp in tps if tp.topic != topic])
        for tp in tps:
            if tp.topic != topic:
                continue
            self._new_offset(tp)  # trims faust's acknowledged offsets; its answer is not used
            offset = written.committable(tp)
            if offset is not None and self._should_commit(tp, offset):
                offsets[tp] = offset
        return offsets

    _filter_committable_offsets._casestream_patched = True  # type: ignore[attr-defined]
    Consumer._filter_committable_offsets = _filter_committable_offsets


async def _fill_holes(
    app: faust.App, written: WrittenOffsets, events: list, settings: Settings, app_id: str
) -> list:
    """The batch plus any facts it would skip, read again from the topic (refetch.py).

    A partition first seen in this consumer generation starts at the offset faust sought to
    after the assignment: its committed offset, asked of the broker when faust keeps none
    (``refetch.start_offsets``). A hole means faust fetched past facts it
    never delivered; they are read again here and written with the batch. If they cannot be
    read, the worker restarts: a replay from the committed offset, below the hole, brings them.
    """
    consumer = app.consumer
    generation = app.consumer_generation_id
    new = [tp for tp in {event.message.tp for event in events} if not written.knows(tp, generation)]
    if new:
        starts = {tp: consumer._committed_offset.get(tp) for tp in new}
        unknown = [tp for tp, offset in starts.items() if offset is None]
        if unknown:  # faust keeps none for a partition committed at 0 or never (refetch.py)
            try:
                found = await asyncio.get_running_loop().run_in_executor(
                    None,
                    start_offsets,
                    settings.kafka_client_config(),
                    app_id,
                    [(tp.topic, tp.partition) for tp in unknown],
                )
            except Exception as exc:  # noqa: BLE001 - a restart seeks and asks again
                _restart(f"the start offsets of {unknown} could not be read ({exc})")
            for tp in unknown:
                starts[tp] = found.get((tp.topic, tp.partition))
        for tp in new:
            written.assigned(tp, starts[tp], generation)
    holes = written.holes((event.message.tp, event.message.offset) for event in events)
    if not holes:
        return events
    described = "; ".join(hole.describe() for hole in holes)
    log.warning(
        "faust skipped facts (%s; faust had acknowledged %s): reading them again",
        described,
        [
            o
            for h in holes
            for o in range(h.first, h.last + 1)
            if o in consumer._acked_index[h.partition]
        ],
    )
    config = settings.kafka_client_config(**{"group.id": f"{app_id}-refetch"})
    ranges = [(h.partition.topic, h.partition.partition, h.first, h.last) for h in holes]
    try:
        refetched = await asyncio.get_running_loop().run_in_executor(
            None, read_offsets, config, ranges, DELIVERY_TIMEOUT_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - any failure: the replay after a restart
        _restart(f"the consumer skipped facts ({described}) and reading them failed ({exc})")
    app.casestream_metrics.facts_refetched.inc(len(refetched))
    return [*events, *refetched]


def _note_written(written: WrittenOffsets, events: list) -> None:
    """Move the committable offsets over a written batch (holes were filled before writing)."""
    skips = written.written((event.message.tp, event.message.offset) for event in events)
    if skips:
        _restart(
            "a written batch skipped facts ("
            + "; ".join(skip.describe() for skip in skips)
            + "): replaying from the committed offset"
        )


def create_app(settings: Settings, *, app_id: str | None = None) -> faust.App:
    _shorten_faust_fetch_wait()  # latency
    _commit_only_written_facts()
    app_id = app_id or settings.worker_app_id
    state_dir = instance.state_dir(settings, app_id)
    state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=settings.faust_broker_credentials(),  # SASL/SSL by config
        store="rocksdb://",  # case state on disk (state_store.py)
        datadir=str(state_dir),
        table_standby_replicas=settings.worker_standby_replicas,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        # Short group timeouts: the defaults make every join take ~30 s on a single node.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        broker_request_timeout=30.0,
        consumer_metadata_max_age_ms=5000,
        stream_wait_empty=True,
        web_enabled=False,
        producer_acks=-1,
        # faust's own producer only sends the latency probes now (changelog_producer.py).
        TableManager=PromptTableManager,  # no 1 s wait at start (table_manager.py)
    )
    facts_in = app.topic(
        facts_topic(app_id),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    # The case state, one RocksDB database per facts partition (state_store.py). Its changelog
    # is written by derive_batch to the partition of the facts the state comes from, so faust's
    # assignor gives partition p of both topics to one worker and a rebalance moves the state
    # with the facts; standby replicas (faust's table_standby_replicas) follow the changelog.
    # key_type/value_type bytes: faust decodes the changelog in recovery with serializers taken
    # from these types, not from a schema (with the default, JSON, recovery failed on the first
    # case id that is not a JSON literal, and the worker stalled).
    case_state = app.Table(
        CASE_STATE_TABLE,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
    )
    states = PartitionStates(case_state)
    changelog_name = case_state.changelog_topic.get_topic_name()
    changelog_out = ChangelogProducer(settings)
    sink = ClickHouseSink(
        sink_clients(settings),
        columns={**SINK_TABLES, "probes": ops_probe.PROBE_COLUMNS},  # ops: + probes table
    )
    app.casestream_sink = sink  # exposed for metrics
    written = WrittenOffsets()
    app.casestream_written = (facts_in.get_topic_name(), written)  # read by the commit patch
    metrics = app.casestream_metrics = ops_metrics.WorkerMetrics(sink)  # ops: served by run()

    async def note_member(_app: faust.App, _assigned: Any, **_: Any) -> None:
        """Note derive's member id in its state directory after each assignment, for the next
        process on it should this one die without leaving (predecessor.py)."""
        try:  # on faust's consumer thread: read, not called
            predecessor.note(state_dir, "derive", app_id, _group_coordinator(app).member_id)
        except Exception as exc:  # noqa: BLE001 - a note, never a reason to stop deriving
            log.warning("derive's member id not noted (%r)", exc)

    app.on_partitions_assigned.connect(note_member)

    @app.timer(interval=predecessor.SIBLING_CHECK_SECONDS)
    async def remove_dead_siblings_members() -> None:
        """A sibling instance on this host died without leaving: its partitions move to the
        living now, not after its session (predecessor.py)."""
        for sibling in predecessor.dead_siblings(state_dir):
            removed = await asyncio.get_running_loop().run_in_executor(
                None, predecessor.remove_noted, settings, sibling
            )
            predecessor.log_outcomes(removed, f"instance {sibling.name} is gone: its %s member %s")

    @app.task
    async def connect_outputs() -> None:
        """Connect the changelog producer and the ClickHouse client while faust joins its
        group: created at the first batch, they held it back 0.5-1.3 s (changelog_producer.py,
        sink.py), after a start and after every restart."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            loop.run_in_executor(None, changelog_out.connect, changelog_name),
            loop.run_in_executor(None, sink.connect),
        )

    deriving: set = set()

    async def derive_batch(events: list) -> None:
        """Derive a batch of envelopes, in this order (each step safe to crash after):

        1. derive every partition's touched cases in memory (nothing written yet);
        2. send the new states to the changelog, to the facts' partition, and wait for Kafka:
           the changelog must hold them before the input is acknowledged, or a crash would
           restore a state lacking facts whose offsets were committed;
        3. write the new states and the changelog offset they reach to RocksDB, atomically;
        4. write the rows to ClickHouse (idempotent: a replay writes the same rows);
        5. mark the envelopes written, which lets faust commit their offsets.

        A crash before 5 replays the envelopes: their facts are duplicates of the restored
        state, and their cases' rows are derived and written again.

        Steps 4 and 5 run while the next batch does 1 to 3 (write_behind.py says why and
        what keeps the order).
        """
        batch_started = time.perf_counter()  # ops
        generation = app.consumer_generation_id
        await behind.settle_before(generation)  # a rebalance: the last write noted first
        events = await _fill_holes(app, written, events, settings, app_id)
        fact_events, probes = ops_probe.split_probes(events)  # ops: probes go to `probes` only
        for tp in {event.message.tp for event in events} - deriving:
            deriving.add(tp)  # said once per partition and process: who derives what
            log.info("deriving %s[%d]", tp.topic, tp.partition)
        rows = RowBatch()
        changed: dict[int, dict[str, bytes]] = {}
        facts: list[Fact] = []
        # No collection runs meanwhile: the worker collects on a clock (collector.py).
        by_partition = facts_by_partition(fact_events)
        for partition, partition_facts in by_partition.items():
            result = apply_batch(partition_facts, states.getter(partition))
            for table, table_rows in result.rows.rows.items():
                rows.extend(table, table_rows)
            changed[partition] = result.changed
            facts.extend(partition_facts)
        rows.extend("probes", probes)  # ops: written with the batch's rows
        for partition, partition_changed in changed.items():
            for case_id, state in partition_changed.items():
                changelog_out.send(changelog_name, partition, case_id.encode(), state)
        try:
            offsets = await changelog_out.delivered(DELIVERY_TIMEOUT_SECONDS)
        except (TimeoutError, DeliveryFailed) as exc:
            _restart(f"case-state changelog not delivered ({exc})")
        for partition, partition_changed in changed.items():
            if partition_changed:
                states.commit(partition, partition_changed, offsets[partition])
        written.derived((event.message.tp, event.message.offset) for event in events)
        await behind.submit(
            _finish_or_die(write_rows(rows, events, facts, probes, batch_started)), generation
        )

    behind = WriteBehind()  # the previous batch's rows, written while this one is derived

    async def write_rows(
        rows: RowBatch, events: list, facts: list[Fact], probes: list, batch_started: float
    ) -> None:
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, sink.write, rows)
        log.debug("wrote %d rows in %.3fs", len(rows), time.perf_counter() - started)
        _note_written(written, events)
        metrics.written(facts, probes, time.perf_counter() - started)  # ops
        metrics.batch("derive", len(facts), time.perf_counter() - batch_started)  # ops

    @app.agent(facts_in)
    async def derive(stream: faust.StreamT) -> None:
        async for events in stream.take_events(ENVELOPES_PER_BATCH, within=BATCH_WITHIN_SECONDS):
            await _finish_or_die(derive_batch(events))

    if settings.probe_interval_seconds > 0:  # ops: continuous end-to-end latency probes
        probe_topic = app.topic(PROBE_TOPIC, key_serializer="raw", value_serializer="raw")

        @app.timer(interval=settings.probe_interval_seconds)
        async def send_latency_probe() -> None:
            key, value = ops_probe.new_probe("worker")
            await probe_topic.send(key=key, value=value)
            metrics.probes_sent.inc()

    derive_stalls = StallTracker(STALL_SECONDS)

    @app.timer(interval=STALL_CHECK_SECONDS)
    async def watchdog() -> None:
        # Liveness of derive: faust was seen to stop fetching some facts partitions after a
        # restart, consuming only the one the probes hash to. Judged per partition (stall.py);
        # a restart resumes from the committed offsets.
        now = _ACTIVITY["watchdog_tick"] = time.monotonic()
        if app.rebalancing or app.in_recovery or _ACTIVITY["busy"]:
            derive_stalls.excuse(now)  # recovering, or a batch waits for ClickHouse
            return
        loop = asyncio.get_running_loop()
        try:
            lags = await asyncio.wait_for(
                loop.run_in_executor(None, group_lag, settings, app_id, [facts_topic(app_id)]),
                timeout=STALL_CHECK_SECONDS,
            )
        except Exception as exc:  # noqa: BLE001 - broker unreachable: no verdict this tick
            log.warning("watchdog cannot read offsets (%r)", exc)
            derive_stalls.excuse(now)
            return
        lags = derive_stalls.only(lags, _owned(app) or set())
        stuck = derive_stalls.stuck(lags, now)
        suspect = derive_stalls.stuck(lags, now, window=STALL_SECONDS / 3)
        if suspect:
            log.info(
                "facts partitions not moving with messages waiting: %s (%s)",
                _describe(suspect),
                _fetch_state(app, facts_topic(app_id)),
            )
        if stuck:
            _restart(f"facts partitions not consumed with messages waiting: {_describe(stuck)}")

    @app.task
    async def stop_like_a_crash() -> None:
        # Replace faust's graceful SIGTERM/SIGINT handling: its stop commits the offsets of
        # batches that were buffered but never processed (measured: 142 of 3,823 events lost
        # in one stop). Leaving without committing is the crash case, which replays and is
        # tested; only the consumer groups hear a goodbye first (`_leave_groups_and_exit`).
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task] = []

        def on_stop() -> None:
            if stopping:  # a second signal: go now
                _leave_now()
            stopping.append(loop.create_task(_leave_groups_and_exit(app)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)

    return app


def facts_by_partition(events: list) -> dict[int, list[Fact]]:
    """The facts of a batch's messages, by the facts partition they came from.

    Reads only what faust events and refetched messages (refetch.py) both have:
    ``message.tp`` and ``message.value``.
    """
    by_partition: dict[int, list[Fact]] = {}
    for event in events:
        by_partition.setdefault(event.message.tp.partition, []).extend(
            _facts_of(event.message.value)
        )
    return by_partition


def _facts_of(raw: bytes) -> list[Fact]:
    """The facts of one message of the facts topic: an envelope, or one fact as older workers'
    intakes sent them (read during an upgrade, until their messages are consumed)."""
    if envelope.is_envelope(raw):
        return envelope.decode(raw)
    return [Fact.from_json(raw)]


async def _finish_or_die(batch: Awaitable[None]) -> None:
    """Process one batch; if the worker is stopped in the middle of it, die instead.

    faust's take_events() acknowledges a yielded batch in a `finally`, even when the agent is
    cancelled halfway through it (a graceful stop, for instance), and those
    offsets would then be committed unprocessed. Leaving the process at once, like a crash,
    prevents that commit: the batch is replayed on restart, and every sink is idempotent.
    """
    _ACTIVITY["busy"] += 1
    try:
        await batch
    except asyncio.CancelledError:
        log.warning("stopped in the middle of a batch: leaving without acknowledging it")
        _leave_now()
    finally:
        _ACTIVITY["busy"] -= 1


def _fetch_state(app: faust.App, topic: str) -> str:
    """What faust's consumer thinks it is fetching: for the log when a partition stops moving."""

    def short(tps: Any) -> list[str]:
        return sorted(f"{tp.topic[-8:]}[{tp.partition}]" for tp in tps or ())

    try:
        consumer = app.consumer
        queues = [c.queue for c in app.topics if topic in c.topics]  # the agent's clones
        fetcher = consumer._thread._consumer._fetcher  # aiokafka's, buffered records per tp
        return (
            f"active={short(consumer._active_partitions)} "
            f"paused={short(consumer._paused_partitions)} "
            f"buffer-full={short(consumer._buffered_partitions)} "
            f"queues={[(q.qsize(), len(q._pending_pressure_drop_callbacks)) for q in queues]} "
            f"aiokafka-buffered={short(fetcher._records)} flow={consumer.flow_active}"
        )
    except Exception as exc:  # noqa: BLE001 - diagnostics only, never fatal
        return f"fetch state unavailable: {exc!r}"


def _owned(app: faust.App) -> set[tuple[str, int]] | None:
    """The partitions faust's consumer is assigned now; None if that could not be read (the
    thread watchdog reads it from outside the loop while a rebalance may change it)."""
    try:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    except Exception:  # noqa: BLE001 - e.g. "set changed size during iteration"
        return None


def _describe(stuck: list[tuple[str, int, int, float]]) -> str:
    return ", ".join(f"{t}[{p}] {lag} behind for {secs:.0f}s" for t, p, lag, secs in stuck)


_RESTART_LOG: dict[str, Path] = {}  # "path": where _restart records, set by run()
_INTAKE: dict[str, IntakeProcess] = {}  # "process": ended before a restart, set by run()
_HELD: dict[str, Any] = {}  # "lock": the instance's lock file, open for the process's life


async def _leave_groups_and_exit(app: faust.App) -> NoReturn:
    """A stop: both consumer groups told this member is leaving, then `_leave_now`.

    A member that just vanishes keeps its partitions until its session times out, so a worker
    restarted after a stop (a deploy, `systemctl restart`) read nothing for ~10 s (restart
    benchmark: ready 9.2-9.5 s, a fresh worker 1.7 s). Here the intake process leaves its group
    (`IntakeProcess.leave`) while derive's aiokafka coordinator closes on its own thread's
    loop; neither commits anything more. Each gets `LEAVE_SECONDS`; then the worker goes anyway,
    and the next process on its state directory removes what is left (predecessor.py).
    """
    loop = asyncio.get_running_loop()
    intake = _INTAKE.get("process")
    intake_left = (
        loop.run_in_executor(None, intake.leave, LEAVE_SECONDS) if intake is not None else None
    )
    try:
        # `close`, not a bare LeaveGroup: aiokafka's coordination task, still running, rejoined
        # at once as a new member, and the next worker waited out that one's session instead
        # (broker log). It ends the task, commits nothing (faust commits itself), then leaves.
        leaving = asyncio.run_coroutine_threadsafe(
            _group_coordinator(app).close(), app.consumer._thread.thread_loop
        )
        await asyncio.wait_for(asyncio.wrap_future(leaving), LEAVE_SECONDS)
    except Exception as exc:  # noqa: BLE001 - not joined yet, broker gone: go anyway
        log.warning("derive did not leave its consumer group (%r)", exc)
    if intake_left is not None:
        with contextlib.suppress(Exception):
            if not await intake_left:
                log.warning("the intake did not leave its consumer group in time")
    _leave_now()


def _group_coordinator(app: faust.App) -> Any:
    """derive's aiokafka group coordinator, which lives on faust's consumer thread (its loop is
    `app.consumer._thread.thread_loop`); None or an AttributeError before it started. A faust
    internal, listed in docs/guarantees.md."""
    return app.consumer._thread._consumer._coordinator


def _leave_now() -> NoReturn:
    """Leave without committing anything more: the uncommitted input is replayed next time."""
    logging.shutdown()
    os._exit(0)


def _restart(reason: str) -> NoReturn:
    """Leave like a crash and start again in place, recorded (restarts.py) so it can be counted."""
    log.error("%s; restarting", reason)
    if "path" in _RESTART_LOG:
        try:
            restarts.record(_RESTART_LOG["path"], reason)
        except OSError as exc:  # a full disk must not keep a stalled worker stalled
            log.error("could not record the restart (%r)", exc)
    if "process" in _INTAKE:  # the new image starts its own: never two intakes at once
        _INTAKE["process"].end()
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _start_thread_watchdog(
    app: faust.App, intake: IntakeProcess, settings: Settings, app_id: str
) -> None:
    """A second watchdog on a plain thread, for stalls the event loop cannot see itself.

    Seen in full test-suite runs (when faust still read the agency topics): the worker sat idle
    with messages waiting and committed offsets frozen, and none of its asyncio timers ran again.
    This thread does not depend on the loop: any partition this process owns (intake or derive)
    with messages waiting and its committed offset frozen for HARD_STALL_SECONDS means restart (crash
    semantics: the uncommitted input is replayed), unless the intake waits for the registry or
    for broker acks, which is not a stall.
    """

    def watch() -> None:
        stalls = StallTracker(HARD_STALL_SECONDS)
        started = time.monotonic()
        while True:
            time.sleep(STALL_CHECK_SECONDS)
            now = time.monotonic()
            silent = now - (_ACTIVITY["watchdog_tick"] or started)
            if silent > LOOP_SILENT_SECONDS:
                _restart(f"the event loop ran no watchdog for {silent:.0f}s")
            try:
                lags = worker_lag(settings, app_id)
            except Exception as exc:  # noqa: BLE001 - broker unreachable: no verdict
                log.warning("thread watchdog cannot read offsets (%r)", exc)
                stalls.excuse(now)
                continue
            if intake.waiting:  # registry down or broker not acking: not a stall
                stalls.excuse(now, {p.topic for p in lags if p.topic != facts_topic(app_id)})
            owned = _owned(app)
            if owned is None:  # the assignment changed while read: no verdict this round
                stalls.excuse(now)
                continue
            owned |= intake.owned()
            stuck = stalls.stuck(stalls.only(lags, owned), now)
            # Restoring a large changelog is slow progress, yet a worker stuck "in recovery"
            # was seen too: give recovery longer, not forever.
            if app.in_recovery:
                stuck = [s for s in stuck if s[3] > 4 * HARD_STALL_SECONDS]
            if stuck:
                _restart(
                    "partitions not consumed with messages waiting (thread watchdog): "
                    + _describe(stuck)
                )

    threading.Thread(target=watch, name="casestream-watchdog", daemon=True).start()


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    from services.serving.migrations import migrate

    # Its state dir and restart log are private whoever started it (stack, systemd, a shell).
    os.umask(UMASK)
    # Before joining any group: one process per state directory (instance.py).
    _HELD["lock"] = instance.hold(settings, settings.worker_app_id)
    # Its predecessor on this directory is gone: its members leave both groups now, not when
    # their sessions time out (predecessor.py).
    departed = predecessor.remove_noted(
        settings, instance.state_dir(settings, settings.worker_app_id)
    )
    predecessor.log_outcomes(departed, "the previous process's %s member: %s")
    migrate(settings, log=log.info)
    _RESTART_LOG["path"] = restarts.restart_log(settings.home, settings.worker_app_id)
    if restarts.restarts_so_far():
        log.warning("restarted in place %d time(s) so far", restarts.restarts_so_far())
    ensure_topics(settings, {facts_topic(settings.worker_app_id): settings.topic_partitions})
    upgrade_state(  # once, from the layout before envelopes (state_upgrade.py)
        settings, settings.worker_app_id, CASE_STATE_TABLE, settings.topic_partitions, log.warning
    )
    ops_probe.ensure_probe_topic(settings)  # ops: before the intake subscribes to it
    app = create_app(settings)
    app.casestream_metrics.restarts.set(restarts.restarts_so_far())
    ops_metrics.serve(app.casestream_metrics, settings.worker_metrics_addr)  # ops: /metrics
    # The intake in its own process (intake_process.py). If it ever exits (a bug, a fatal
    # client error) the worker restarts: nothing it did not commit is lost, and a half-alive
    # worker is the worst kind.
    niceness = priority.started_niceness()
    intake = _INTAKE["process"] = IntakeProcess(
        settings, settings.worker_app_id, app.casestream_metrics, _restart, niceness
    )
    priority.yield_to_intake(niceness)  # derive waits for the CPU behind its intake
    collector.run_on_a_clock()  # no cycle collection on allocation counts (collector.py)
    _start_thread_watchdog(app, intake, settings, settings.worker_app_id)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
