-- The rollups' copy of `events`, ordered by event type: `events` is ordered by event_id (a random
-- UUID), so every 8,192-row granule holds some events of every type, and picking out the 63 k
-- monitoring assignments among 10 M events read the whole case_id column (0.19 s); the monitored
-- resolutions' join read it twice (0.48 s). Ordered by type, each part reads only the types it
-- needs: 0.013 s and 0.06 s, the event figures 0.42 → 0.11 s (docs/benchmarks.md).
--
-- Fed at write time by a materialized view, so the worker writes nothing more; the columns are the
-- ones the rollups read (the payload figures are migration 0009's MATERIALIZED columns, one
-- definition). The key is (event_type, case_id, event_id): a duplicate of an event collapses as
-- in `events`. Only an event_id reused with another event_type or case is kept twice here, where
-- `events` keeps one of the two (in `events` too when the two fall in different years). Within a
-- type the rows are in case order, which makes the provincial rollups' join of each case event
-- with its case's home province cheaper (1.09 → 0.93 s per provincial yearly rollup in process).
CREATE TABLE IF NOT EXISTS events_by_type
(
    event_id                  UUID,
    event_type                LowCardinality(String),
    case_id                   String,
    province_code             LowCardinality(String),
    occurred_at               DateTime64(3, 'UTC'),
    discipline_party_members  UInt64,
    discipline_party_orgs     UInt64,
    assets_identified_vnd     Int64,
    assets_recovered_vnd      Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYear(occurred_at)
ORDER BY (event_type, case_id, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_by_type_feed TO events_by_type AS
SELECT event_id, event_type, case_id, province_code, occurred_at, discipline_party_members,
    discipline_party_orgs, assets_identified_vnd, assets_recovered_vnd
FROM events;

-- The events written before the view existed (a row the view also took collapses with its copy).
-- The columns are named: a worker started at the same time may already have applied a later
-- migration that adds one.
INSERT INTO events_by_type (event_id, event_type, case_id, province_code, occurred_at,
    discipline_party_members, discipline_party_orgs, assets_identified_vnd, assets_recovered_vnd)
SELECT event_id, event_type, case_id, province_code, occurred_at, discipline_party_members,
    discipline_party_orgs, assets_identified_vnd, assets_recovered_vnd
FROM events;
