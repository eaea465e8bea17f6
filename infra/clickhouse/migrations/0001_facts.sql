-- Fact tables written by the stream worker. Every engine is Replacing keyed by the natural id, so
-- a replayed or duplicated batch is harmless: the row with the highest version wins, and rows with
-- equal versions are identical because the worker derives them from the same set of events.

CREATE TABLE IF NOT EXISTS events
(
    event_id            UUID COMMENT 'idempotency key chosen by the agency',
    event_type          LowCardinality(String),
    case_id             String COMMENT 'national case key',
    agency_id           LowCardinality(String) COMMENT 'publishing agency, <province>-<type>',
    province_code       LowCardinality(String) COMMENT 'province of the publishing agency at the time',
    agency_type         LowCardinality(String),
    occurred_at         DateTime64(3, 'UTC') COMMENT 'event time, which decides the period',
    utc_offset_minutes  Int16 COMMENT 'offset the agency wrote occurred_at with',
    sequence            Nullable(Int64) COMMENT 'per-agency sequence number, gaps mean loss',
    transfer_id         String DEFAULT '' COMMENT 'case_transferred / transfer_received / transfer_returned',
    to_agency_id        LowCardinality(String) DEFAULT '' COMMENT 'case_transferred receiver',
    stage               LowCardinality(String) DEFAULT '' COMMENT 'stage_changed',
    outcome             LowCardinality(String) DEFAULT '' COMMENT 'case_resolved',
    payload             String COMMENT 'the whole payload as JSON'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYear(occurred_at)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS transfers_state
(
    transfer_id         String,
    case_id             String,
    from_agency_id      LowCardinality(String),
    from_province_code  LowCardinality(String),
    to_agency_id        LowCardinality(String),
    to_province_code    LowCardinality(String),
    to_agency_type      LowCardinality(String),
    reason              LowCardinality(String),
    sent_at             DateTime64(3, 'UTC'),
    received_at         Nullable(DateTime64(3, 'UTC')),
    returned_at         Nullable(DateTime64(3, 'UTC')),
    return_reason       Nullable(String),
    status              LowCardinality(String) COMMENT 'pending | received | returned',
    lag_hours           Nullable(Float64) COMMENT 'received_at - sent_at in hours (event time)',
    version             UInt64 COMMENT 'number of distinct events of the case when derived'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY transfer_id;

CREATE TABLE IF NOT EXISTS cases_state
(
    case_id                   String,
    opened_agency_id          LowCardinality(String),
    province_code             LowCardinality(String) COMMENT 'province of the opening agency',
    opened_at                 Nullable(DateTime64(3, 'UTC')),
    origin                    LowCardinality(String),
    field                     LowCardinality(String),
    subject_kind              LowCardinality(String),
    prominent                 UInt8,
    damage_vnd                Nullable(Int64),
    current_agency_id         LowCardinality(String),
    current_stage             LowCardinality(String),
    status                    LowCardinality(String) COMMENT 'open | resolved',
    outcome                   LowCardinality(String),
    resolved_at               Nullable(DateTime64(3, 'UTC')),
    reopened_count            UInt32,
    monitored                 UInt8,
    monitoring_level          LowCardinality(String),
    monitored_at              Nullable(DateTime64(3, 'UTC')),
    transfers_sent            UInt32,
    transfers_in_flight       UInt32,
    discipline_party_members  UInt32,
    discipline_party_orgs     UInt32,
    assets_identified_vnd     Int64,
    assets_recovered_vnd      Int64,
    last_event_at             DateTime64(3, 'UTC'),
    event_count               UInt32,
    version                   UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY case_id;

CREATE TABLE IF NOT EXISTS appraisals_state
(
    appraisal_id        String,
    case_id             String,
    agency_id           LowCardinality(String),
    kind                LowCardinality(String),
    requested_at        Nullable(DateTime64(3, 'UTC')),
    completed_at        Nullable(DateTime64(3, 'UTC')),
    status              LowCardinality(String) COMMENT 'pending | completed',
    lag_hours           Nullable(Float64),
    version             UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY appraisal_id;

-- Analyst-facing objects: one row per natural id, latest state.
CREATE VIEW IF NOT EXISTS transfers AS SELECT * EXCEPT version FROM transfers_state FINAL;
CREATE VIEW IF NOT EXISTS cases AS SELECT * EXCEPT version FROM cases_state FINAL;
CREATE VIEW IF NOT EXISTS appraisals AS SELECT * EXCEPT version FROM appraisals_state FINAL;
