-- Data-quality results written by the Prefect flow flows/quality.py (check_data_quality).
-- One row per check and scope (an agency id, or 'all' for a platform-wide figure) and run.
-- status is 'warn' when value > threshold, else 'ok'. Check definitions: flows/quality.py.
-- Wall-clock data, like agency_activity: never part of the fact tables.

CREATE TABLE IF NOT EXISTS data_quality_checks
(
    run_id          String COMMENT 'one id per check_data_quality run (all its rows share it)',
    checked_at      DateTime64(3, 'UTC') COMMENT 'wall clock of the run',
    check_name      LowCardinality(String) COMMENT 'duplicate_deliveries, sequence_gaps, stale_transfers, orphan_receipts, late_arrivals, cases_without_opening',
    scope           LowCardinality(String) COMMENT 'agency id, or all',
    value           Float64 COMMENT 'what the check measured (a count)',
    threshold       Float64 COMMENT 'status is warn when value exceeds it',
    status          LowCardinality(String) COMMENT 'ok | warn',
    detail          String COMMENT 'human-readable detail, e.g. a few offending ids'
)
ENGINE = MergeTree
ORDER BY (checked_at, check_name, scope)
TTL toDateTime(checked_at) + INTERVAL 400 DAY;

-- The rows of the most recent run.
CREATE VIEW IF NOT EXISTS data_quality_latest AS
SELECT * FROM data_quality_checks
WHERE run_id = (SELECT argMax(run_id, checked_at) FROM data_quality_checks);
