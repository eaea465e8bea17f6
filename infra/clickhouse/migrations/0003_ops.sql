-- Operations: per-agency freshness and sequence gaps (issue: stream health).
-- agency_activity is appended by the worker once per batch and agency; wall-clock columns live
-- only here, never in the fact tables, so a rebuild still reproduces the facts exactly.

CREATE TABLE IF NOT EXISTS agency_activity
(
    agency_id           LowCardinality(String),
    events              UInt64 COMMENT 'events of this agency in the batch (duplicates included)',
    last_occurred_at    DateTime64(3, 'UTC') COMMENT 'latest event time in the batch',
    max_sequence        Nullable(Int64),
    ingested_at         DateTime64(3, 'UTC') COMMENT 'wall clock when the batch was written'
)
ENGINE = MergeTree
ORDER BY (agency_id, ingested_at)
TTL toDateTime(ingested_at) + INTERVAL 90 DAY;

CREATE VIEW IF NOT EXISTS agency_freshness AS
SELECT
    agency_id,
    max(last_occurred_at) AS last_event_at,
    max(ingested_at) AS last_ingested_at,
    sum(events) AS events_ingested
FROM agency_activity
GROUP BY agency_id;

-- Sequence numbers are optional, per agency and increasing: a number never seen between the
-- smallest and the largest one means an event was lost on the agency's side.
CREATE VIEW IF NOT EXISTS sequence_gaps AS
SELECT
    agency_id,
    min(sequence) AS first_sequence,
    max(sequence) AS last_sequence,
    uniqExact(sequence) AS distinct_sequences,
    toInt64(max(sequence) - min(sequence) + 1) - toInt64(uniqExact(sequence)) AS missing
FROM events FINAL
WHERE sequence IS NOT NULL
GROUP BY agency_id;
