"""Prometheus metrics of the stream worker, served on ``CASESTREAM_WORKER_METRICS_ADDR``.

The same figures as `casestream health`, seen from inside the worker process (counters reset
when the worker restarts, as Prometheus expects):

| metric | labels | meaning |
| --- | --- | --- |
| casestream_worker_events_ingested_total | agency | events validated and re-keyed |
| casestream_worker_events_dead_lettered_total | agency, reason | messages sent to the DLQ |
| casestream_worker_batch_size | agent | messages per batch (ingest, derive) |
| casestream_worker_batch_duration_seconds | agent | batch processing time incl. flush / write |
| casestream_worker_clickhouse_write_seconds | | one batch's ClickHouse write incl. retries |
| casestream_worker_clickhouse_rows_written_total | | rows ClickHouse accepted |
| casestream_worker_clickhouse_write_failures_total | | failed attempts (each is retried) |
| casestream_worker_last_event_time_seconds | agency | newest event time (occurred_at) written |
| casestream_worker_last_ingested_time_seconds | agency | wall clock of the agency's last write |
| casestream_worker_probe_latency_seconds | | probe produced → its row written |
| casestream_worker_probes_sent_total | | probes this worker produced |
| casestream_worker_facts_refetched_total | | facts faust skipped, read again (written_offsets.py) |

Each worker has its own registry (several apps can live in one test process). The HTTP server
is prometheus_client's ``start_http_server``; if the port is taken (a second worker on one
machine without its own CASESTREAM_WORKER_METRICS_ADDR) the worker logs a warning and runs
without metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from services.contracts.events import agency_from_topic

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _SinkCollector:
    """Reads the ClickHouse sink's own counters at scrape time (the sink does the retries)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "casestream_worker_clickhouse_rows_written",
            "Rows ClickHouse accepted from the worker",
            value=getattr(self.sink, "rows_written", 0),
        )
        yield CounterMetricFamily(
            "casestream_worker_clickhouse_write_failures",
            "Failed ClickHouse write attempts (each one is retried)",
            value=getattr(self.sink, "failures", 0),
        )


class WorkerMetrics:
    def __init__(self, sink: Any = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "casestream_worker_events_ingested",
            "Events validated and re-keyed by the intake",
            ["agency"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "casestream_worker_events_dead_lettered",
            "Messages sent to the dead-letter topic",
            ["agency", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "casestream_worker_batch_size",
            "Messages per batch",
            ["agent"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "casestream_worker_batch_duration_seconds",
            "Batch processing time, flushes and writes included",
            ["agent"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.write_seconds = Histogram(
            "casestream_worker_clickhouse_write_seconds",
            "One batch's ClickHouse write, retries included",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.last_event = Gauge(
            "casestream_worker_last_event_time_seconds",
            "Newest event time (occurred_at) written, per agency",
            ["agency"],
            registry=r,
        )
        self.last_ingested = Gauge(
            "casestream_worker_last_ingested_time_seconds",
            "Wall clock of the agency's last write to ClickHouse",
            ["agency"],
            registry=r,
        )
        self.probe_latency = Histogram(
            "casestream_worker_probe_latency_seconds",
            "Latency probe produced → its row written to ClickHouse",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.probes_sent = Counter(
            "casestream_worker_probes_sent", "Latency probes produced by this worker", registry=r
        )
        self.facts_refetched = Counter(
            "casestream_worker_facts_refetched",
            "Facts faust fetched but never delivered, read again and written with their batch",
            registry=r,
        )
        self.restarts = Gauge(
            "casestream_worker_restarts",
            "Self-restarts by a watchdog since the process was started (restarts.jsonl says why)",
            registry=r,
        )
        self._newest_ms: dict[str, int] = {}
        self._ingested: dict[str, Any] = {}
        if sink is not None:
            r.register(_SinkCollector(sink))

    # ------------------------------------------------------------------ called by the worker

    def accepted(self, agency_id: str, count: int = 1) -> None:
        # The labelled child per agency, looked up once: `labels()` on every event was 2.7 % of
        # the worker's samples in the 2 M-event process benchmark (2026-12-04).
        child = self._ingested.get(agency_id)
        if child is None:
            child = self._ingested[agency_id] = self.ingested.labels(agency_id)
        child.inc(count)

    def rejected(self, topic: str, reason: str, count: int = 1) -> None:
        try:
            agency = agency_from_topic(topic)
        except ValueError:
            agency = "unknown"
        self.dead_lettered.labels(agency, reason).inc(count)

    def batch(self, agent: str, size: int, seconds: float) -> None:
        self.batch_size.labels(agent).observe(size)
        self.batch_seconds.labels(agent).observe(seconds)

    def written(
        self,
        facts: Iterable[Any],
        probes: list[list[Any]],
        write_seconds: float,
        now: float | None = None,
    ) -> None:
        """After a derive batch reached ClickHouse: freshness per agency and probe latency."""
        now = time.time() if now is None else now
        self.write_seconds.observe(write_seconds)
        newest: dict[str, int] = {}
        for fact in facts:
            newest[fact.agency_id] = max(newest.get(fact.agency_id, 0), fact.occurred_ms)
        for agency, occurred_ms in newest.items():
            if occurred_ms > self._newest_ms.get(agency, -1):  # late events do not go back
                self._newest_ms[agency] = occurred_ms
                self.last_event.labels(agency).set(occurred_ms / 1000)
            self.last_ingested.labels(agency).set(now)
        for _probe_id, _source, sent_at in probes:
            self.probe_latency.observe(max(0.0, now - sent_at.timestamp()))


def parse_addr(addr: str) -> tuple[str, int] | None:
    """``"127.0.0.1:9464"`` → (host, port); ``""``/``off``/port 0 → None (disabled)."""
    addr = (addr or "").strip()
    if addr.lower() in ("", "off", "none", "false", "0"):
        return None
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return None
    return host or "127.0.0.1", int(port)


def serve(metrics: WorkerMetrics, addr: str) -> tuple[str, int] | None:
    """Start the /metrics HTTP server in a daemon thread; None when disabled or port taken."""
    from prometheus_client import start_http_server

    parsed = parse_addr(addr)
    if parsed is None:
        return None
    host, port = parsed
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning("worker metrics not served on %s:%d (%s)", host, port, exc)
        return None
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return parsed
