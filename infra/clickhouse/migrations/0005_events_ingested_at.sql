-- When each event row reached ClickHouse. Lets the scheduled rollup refresh find the periods
-- that late events touched. Wall clock, so it is left out of rebuild comparisons.
ALTER TABLE events ADD COLUMN IF NOT EXISTS ingested_at DateTime64(3, 'UTC') DEFAULT now64(3);
