-- Tamper evidence: one row per `casestream verify` run, so `casestream health` can show the last
-- verification and its result. Wall-clock operations data (like probes): never part of the fact
-- tables, so a rebuild still reproduces the analysts' tables exactly.
CREATE TABLE IF NOT EXISTS chain_verifications
(
    run_id          String,
    scope           String COMMENT 'all, or the one agency_id verified with --agency',
    started_at      DateTime64(3, 'UTC'),
    finished_at     DateTime64(3, 'UTC'),
    agencies        UInt32 COMMENT 'agency topics read',
    messages        UInt64 COMMENT 'messages read from them',
    chained         UInt64 COMMENT 'distinct chained events among them',
    findings        UInt32 COMMENT 'altered, inserted, missing, reordered or deleted history',
    intact          UInt8 COMMENT '1 when there was no finding',
    tampered        Array(String) COMMENT 'agencies with findings',
    summary         String COMMENT 'the run as JSON (findings capped), what `verify --json` printed',
    run_by          String COMMENT 'user and host that ran it'
)
ENGINE = MergeTree
ORDER BY (finished_at, run_id);
