-- The payload figures the rollups sum, as columns computed once per row at insert (MATERIALIZED)
-- with the rollups' own expressions, so the figures cannot differ from reading the JSON: reading
-- the JSON at query time was 0.51 s of the 2.58 s national yearly rollup at 10 M events
-- (docs/benchmarks.md). Rows written before this migration compute them on read until merged.
-- `SELECT *` leaves MATERIALIZED columns out, so every existing query and view is unchanged.
ALTER TABLE events ADD COLUMN IF NOT EXISTS discipline_party_members UInt64 MATERIALIZED if(event_type = 'discipline_imposed' AND JSONExtractString(payload, 'target') = 'party_member', JSONExtractUInt(payload, 'count'), 0) COMMENT 'discipline_imposed on party members: their count';
ALTER TABLE events ADD COLUMN IF NOT EXISTS discipline_party_orgs UInt64 MATERIALIZED if(event_type = 'discipline_imposed' AND JSONExtractString(payload, 'target') = 'party_organization', JSONExtractUInt(payload, 'count'), 0) COMMENT 'discipline_imposed on party organisations: their count';
ALTER TABLE events ADD COLUMN IF NOT EXISTS assets_identified_vnd Int64 MATERIALIZED if(event_type = 'assets_recovered', JSONExtractInt(payload, 'identified_vnd'), 0) COMMENT 'assets_recovered: identified amount';
ALTER TABLE events ADD COLUMN IF NOT EXISTS assets_recovered_vnd Int64 MATERIALIZED if(event_type = 'assets_recovered', JSONExtractInt(payload, 'recovered_vnd'), 0) COMMENT 'assets_recovered: recovered amount';
