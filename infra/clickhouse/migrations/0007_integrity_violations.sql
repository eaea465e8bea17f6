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

-- The event ids that count for nothing now: rows of each case's latest version only (looked up
-- only for the cases that ever had a violation). Rollups and reports leave these events out.
CREATE VIEW IF NOT EXISTS violating_events AS
SELECT v.case_id AS case_id, v.event_id AS event_id, v.event_type AS event_type,
    v.agency_id AS agency_id, v.occurred_at AS occurred_at, v.rule AS rule, v.detail AS detail
FROM integrity_violations_state AS v FINAL
INNER JOIN (
    SELECT case_id, max(version) AS version FROM cases_state
    WHERE case_id IN (SELECT case_id FROM integrity_violations_state)
    GROUP BY case_id
) AS c ON c.case_id = v.case_id AND c.version = v.version;

-- What analysts read: each violation with when the record first had the event.
CREATE VIEW IF NOT EXISTS integrity_violations AS
SELECT v.*, e.first_seen AS first_seen
FROM violating_events AS v
LEFT JOIN (
    SELECT event_id, min(ingested_at) AS first_seen FROM events
    WHERE event_id IN (SELECT event_id FROM integrity_violations_state)
    GROUP BY event_id
) AS e ON e.event_id = v.event_id;
