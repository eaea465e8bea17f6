-- Each event row carries its case's home province as the deriving step knew it when it wrote the
-- row, so the provincial rollups need no join of the case events with the cases' homes: that join
-- was 0.35-0.42 s of the ~1.2 s provincial yearly rollup at 10 M events; without it the rollup
-- took 0.41 s instead of 1.03 s in process, same rows (docs/benchmarks.md).
--
-- Only an opening moves a case's home (processor/authority.py: the first admitted one), and rows
-- are never rewritten: when an opening reaches a case that already has facts, the case goes to
-- `cases_rehomed` (processor/batch.py), and the rollups read the homes of the cases listed there
-- from `cases`, as they did for every case before. A rebuild writes every row with its case's
-- final home and lists no case.
ALTER TABLE events ADD COLUMN IF NOT EXISTS home_province_code LowCardinality(String) DEFAULT '' COMMENT 'the case''s home province when the row was written; cases_rehomed lists the cases whose home moved since';

ALTER TABLE events_by_type ADD COLUMN IF NOT EXISTS home_province_code LowCardinality(String) DEFAULT '';

CREATE TABLE IF NOT EXISTS cases_rehomed
(
    case_id  String
)
ENGINE = ReplacingMergeTree
ORDER BY case_id;

-- The view feeds the new column too, changed in place (one atomic ALTER: a DROP and CREATE
-- would leave a moment in which inserts reach `events` but not its copy, and workers started
-- together each run the migrations).
ALTER TABLE events_by_type_feed MODIFY QUERY
SELECT event_id, event_type, case_id, province_code, occurred_at, discipline_party_members,
    discipline_party_orgs, assets_identified_vnd, assets_recovered_vnd, home_province_code
FROM events;

-- The rows written before this migration carry no home: their cases take it from `cases`. Apply
-- it with the workers of the previous version stopped (docs/clickhouse-cluster.md): one writing
-- after this would leave rows without a home whose cases are not listed.
INSERT INTO cases_rehomed (case_id) SELECT DISTINCT case_id FROM events;
