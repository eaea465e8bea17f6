-- Rollups built by the Prefect flows (flows/rollups.py, SQL in services/serving/rollups.py).
-- Rebuilding a period inserts a newer `built_at` version, so re-running a flow replaces the
-- period; the analyst views read the latest build only. Metric definitions: services/serving/rollups.py.

CREATE TABLE IF NOT EXISTS rollup_national_state
(
    period_kind                   LowCardinality(String) COMMENT 'month | quarter | year',
    period_start                  Date,
    period_end                    Date COMMENT 'exclusive',
    cases_opened                  UInt64,
    cases_resolved                UInt64,
    pending_end                   Int64,
    clearance_rate                Nullable(Float64),
    disposition_time_days         Nullable(Float64),
    transfers_sent                UInt64,
    transfers_received            UInt64,
    transfers_returned            UInt64,
    transfers_to_investigation    UInt64,
    transfer_lag_p50_hours        Nullable(Float64),
    transfer_lag_p90_hours        Nullable(Float64),
    transfer_lag_max_hours        Nullable(Float64),
    transfers_pending_end         Int64,
    monitored_cases               Int64,
    monitored_resolved            Int64,
    monitored_resolution_rate     Nullable(Float64),
    discipline_party_members      UInt64,
    discipline_party_orgs         UInt64,
    assets_identified_vnd         Int64,
    assets_recovered_vnd          Int64,
    asset_recovery_rate           Nullable(Float64),
    appraisal_lag_p50_hours       Nullable(Float64),
    appraisal_lag_p90_hours       Nullable(Float64),
    built_at                      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(built_at)
ORDER BY (period_kind, period_start);

CREATE TABLE IF NOT EXISTS rollup_province_state
(
    geography                     LowCardinality(String) COMMENT 'historical (province as it was) | current (mapped to today''s provinces)',
    period_kind                   LowCardinality(String),
    period_start                  Date,
    period_end                    Date,
    province_code                 LowCardinality(String),
    cases_opened                  UInt64,
    cases_resolved                UInt64,
    pending_end                   Int64,
    clearance_rate                Nullable(Float64),
    disposition_time_days         Nullable(Float64),
    transfers_sent                UInt64,
    transfers_received            UInt64,
    transfers_returned            UInt64,
    transfers_to_investigation    UInt64,
    transfer_lag_p50_hours        Nullable(Float64),
    transfer_lag_p90_hours        Nullable(Float64),
    transfer_lag_max_hours        Nullable(Float64),
    transfers_pending_end         Int64,
    monitored_cases               Int64,
    monitored_resolved            Int64,
    monitored_resolution_rate     Nullable(Float64),
    discipline_party_members      UInt64,
    discipline_party_orgs         UInt64,
    assets_identified_vnd         Int64,
    assets_recovered_vnd          Int64,
    asset_recovery_rate           Nullable(Float64),
    appraisal_lag_p50_hours       Nullable(Float64),
    appraisal_lag_p90_hours       Nullable(Float64),
    built_at                      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(built_at)
ORDER BY (geography, period_kind, period_start, province_code);

CREATE TABLE IF NOT EXISTS rollup_runs
(
    flow            LowCardinality(String),
    period_kind     LowCardinality(String),
    first_period    Date,
    last_period     Date,
    rows_written    UInt64,
    finished_at     DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (flow, finished_at);

CREATE VIEW IF NOT EXISTS rollup_national AS SELECT * EXCEPT built_at FROM rollup_national_state FINAL;
CREATE VIEW IF NOT EXISTS rollup_province AS SELECT * EXCEPT built_at FROM rollup_province_state FINAL;
