-- Operations (issue: stream health): latency probes and dead-letter replays.
-- Wall-clock data, like agency_activity: never part of the fact tables, so a rebuild still
-- reproduces the analysts' tables exactly.

-- Latency probes travel the worker's pipeline (topic casestream.probe, the ingest agent, the
-- re-keyed facts topic, the derive agent, the ClickHouse write) but are written only here,
-- never to events or cases. visible_at is ClickHouse's clock when the row was inserted.
-- A replayed batch may insert a probe twice: read probe_latency, which keeps the first row.
CREATE TABLE IF NOT EXISTS probes
(
    probe_id            String,
    source              LowCardinality(String) COMMENT 'who sent it: worker (timer) or cli',
    sent_at             DateTime64(3, 'UTC') COMMENT 'wall clock when the probe was produced',
    visible_at          DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'wall clock of the ClickHouse insert'
)
ENGINE = MergeTree
ORDER BY (visible_at, probe_id)
TTL toDateTime(visible_at) + INTERVAL 30 DAY;

CREATE VIEW IF NOT EXISTS probe_latency AS
SELECT
    p.probe_id AS probe_id,
    any(p.source) AS source,
    min(p.sent_at) AS sent_at,
    min(p.visible_at) AS visible_at,
    greatest(dateDiff('millisecond', min(p.sent_at), min(p.visible_at)), 0) / 1000.0 AS latency_seconds
FROM probes AS p
GROUP BY p.probe_id;

-- One row per dead letter re-published by `casestream dlq replay`, keyed by where the event
-- was first read (source topic, partition, offset). A second replay skips what is here.
CREATE TABLE IF NOT EXISTS dlq_replays
(
    source_topic        String,
    source_partition    Int32,
    source_offset       Int64,
    event_id            String COMMENT 'the replayed event, which the worker deduplicates on',
    agency_id           LowCardinality(String),
    reason              LowCardinality(String) COMMENT 'why it had been dead-lettered',
    dlq_partition       Int32,
    dlq_offset          Int64,
    replayed_partition  Int32 COMMENT 'where the copy was produced in source_topic',
    replayed_offset     Int64,
    replayed_at         DateTime64(3, 'UTC'),
    replayed_by         String COMMENT 'user and host that ran the replay'
)
ENGINE = MergeTree
ORDER BY (source_topic, source_partition, source_offset);
