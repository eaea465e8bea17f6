-- Facts that break an authority rule (services/processor/authority.py): kept in `events` (the
-- record), left out of every derived row and rollup, and listed here for analysts.
-- A later fact can lift a violation (the transfer that made an agency a holder arrives late), so
-- each derivation of a case writes its current violations with the case's version, and the view
-- shows only those of the case's latest version.

CREATE TABLE IF NOT EXISTS integrity_violations_state
(
    case_id       String,
    event_id      UUID,
    event_type    LowCardinality(String),
    agency_id     LowCardinality(String) COMMENT 'the agency that emitted the event',
    occurred_at   DateTime64(3, 'UTC'),
    rule          LowCardinality(String) COMMENT 'which authority rule it breaks',
    detail        String COMMENT 'why, in one sentence',
    version       UInt64 COMMENT 'number of distinct events of the case when derived'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (case_id, event_id);

CREATE VIEW IF NOT EXISTS integrity_violations AS
SELECT v.case_id AS case_id, v.event_id AS event_id, v.event_type AS event_type,
    v.agency_id AS agency_id, v.occurred_at AS occurred_at, v.rule AS rule, v.detail AS detail,
    e.first_seen AS first_seen
FROM integrity_violations_state AS v FINAL
LEFT JOIN (SELECT event_id, min(ingested_at) AS first_seen FROM events GROUP BY event_id) AS e
    ON e.event_id = v.event_id
WHERE (v.case_id, v.version) IN (SELECT case_id, version FROM cases_state FINAL);
