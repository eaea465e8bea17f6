"""The faust-streaming worker: agency topics → validated facts → per-case state → ClickHouse.

Two agents:

* ``ingest`` subscribes to every agency topic by pattern (new agencies are picked up on the next
  metadata refresh, without restart), decodes with the registry and validates. Valid events are
  re-keyed by case_id onto ``casestream.facts-by-case``; anything else goes to the dead-letter
  topic with its raw bytes, source topic/partition/offset and a reason. It never raises on input.
* ``derive`` consumes the re-keyed facts in batches, keeps every fact of a case in the
  changelog-backed table ``case-facts``, derives the case's rows from that set (case_state.py)
  and writes them to ClickHouse. The batch is acknowledged only after ClickHouse took the rows,
  so a crash at any point replays into the same rows (all sinks are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import faust

from services.ops.topics import AGENCY_TOPIC_PATTERN, DLQ_TOPIC, FACTS_TOPIC, ensure_topics
from services.processor.batch import apply_batch
from services.processor.facts import Fact
from services.processor.ingest import Ingestor, Rejected
from services.serving.sink import ClickHouseSink
from services.settings import Settings

log = logging.getLogger("casestream.worker")

SEED_AGENCY_TOPIC = "agency.00-SC.events"  # always exists (ensure_topics), so never zero topics
TOPIC_DISCOVERY_SECONDS = 5.0
BATCH_SIZE = 5000
RESTART_FOR_NEW_TOPICS = threading.Event()
BATCH_WITHIN_SECONDS = 0.5


def create_app(settings: Settings, *, app_id: str | None = None) -> faust.App:
    app_id = app_id or settings.worker_app_id
    (settings.home / "worker").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.home / "worker" / app_id),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
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
    )
    # faust's pattern subscription does not work with its aiokafka driver ("XXX pattern does
    # not work"), so we subscribe by name and a timer adds agency topics as they appear.
    source = app.topic(
        *(_agency_topics(settings) or [SEED_AGENCY_TOPIC]),
        key_serializer="raw", value_serializer="raw",
    )
    facts_topic = app.topic(
        FACTS_TOPIC, key_serializer="raw", value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    dlq = app.topic(DLQ_TOPIC, key_serializer="raw", value_serializer="raw", partitions=1)
    # The table is partitioned by the producer's partitioner on the case_id bytes, exactly as
    # facts_topic is, so a case's facts and its state live in the same partition.
    case_facts = app.Table(
        "case-facts",
        default=None,
        partitions=settings.topic_partitions,
        schema=faust.Schema(key_serializer="raw", value_serializer="json"),
        use_partitioner=True,
    )
    ingestor = Ingestor.from_settings(settings)
    stop = threading.Event()
    sink = ClickHouseSink(lambda: settings.clickhouse_client(), stop=stop)
    app.casestream_sink = sink  # exposed for metrics

    @app.agent(source)
    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_SECONDS):
            for event in events:
                message = event.message
                try:
                    fact = ingestor.accept(message.value, message.topic)
                except Rejected as rejected:
                    await dlq.send(
                        key=message.key,
                        value=message.value,
                        headers=_dlq_headers(rejected, message),
                    )
                    continue
                await facts_topic.send(key=fact.case_id.encode(), value=fact.to_json())

    @app.agent(facts_topic)
    async def derive(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_SECONDS):
            facts = [Fact.from_json(event.message.value) for event in events]
            result = apply_batch(facts, case_facts.get)
            for case_id, stored in result.changed.items():
                case_facts[case_id] = stored
            batch = result.rows
            started = time.perf_counter()
            await loop.run_in_executor(None, sink.write, batch)
            log.debug("wrote %d rows in %.3fs", len(batch), time.perf_counter() - started)

    @app.timer(interval=TOPIC_DISCOVERY_SECONDS)
    async def discover_agency_topics() -> None:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, _agency_topics, settings)
        new = sorted(set(found) - set(source.topics))
        if new and not RESTART_FOR_NEW_TOPICS.is_set():
            # faust cannot add topics to a running subscription reliably (the group is
            # rebalanced but the new partitions are never fetched), so stop gracefully -
            # committing offsets - and re-exec the process with the new topic list.
            log.warning("new agency topics %s: restarting to subscribe", ", ".join(new))
            RESTART_FOR_NEW_TOPICS.set()
            os.kill(os.getpid(), signal.SIGTERM)

    @app.on_before_shutdown.connect
    async def _stop_retrying(app: faust.App, **_: Any) -> None:
        stop.set()

    return app


def _agency_topics(settings: Settings) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    names = admin.list_topics(timeout=10).topics
    return sorted(n for n in names if AGENCY_TOPIC_PATTERN.match(n))


def _dlq_headers(rejected: Rejected, message: Any) -> list[tuple[str, bytes]]:
    return [
        ("reason", rejected.reason.encode()),
        ("detail", rejected.detail.encode()[:2000]),
        ("field", (rejected.field or "").encode()),
        ("source_topic", message.topic.encode()),
        ("source_partition", str(message.partition).encode()),
        ("source_offset", str(message.offset).encode()),
        ("rejected_at_ms", str(int(time.time() * 1000)).encode()),
    ]


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    from services.serving.migrations import migrate

    migrate(settings, log=log.info)
    ensure_topics(settings, {SEED_AGENCY_TOPIC: settings.topic_partitions})
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        if RESTART_FOR_NEW_TOPICS.is_set():
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
