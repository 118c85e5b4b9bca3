-- Usage at scale: hourly roll-ups, outcomes and retention. Idempotent, like
-- the schema file (every statement may run again).
--
-- Roll-ups gain the period `hour` and count what became of requests: passed
-- ones by status class (`status_2xx` counts every status below 300), refused
-- ones by reason. Rows written before this migration have no classes (their
-- `requests` and `errors` stay exact).
ALTER TABLE keysmith_usage_agg DROP CONSTRAINT IF EXISTS keysmith_usage_agg_period_check;
ALTER TABLE keysmith_usage_agg ADD CONSTRAINT keysmith_usage_agg_period_check
    CHECK (period IN ('hour', 'day', 'month'));
ALTER TABLE keysmith_usage_agg
    ADD COLUMN IF NOT EXISTS status_2xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS status_3xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS status_4xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS status_5xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_rate_limited BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_quota_exceeded BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_credits_exhausted BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_insufficient_scope BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_ip_not_allowed BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_origin_not_allowed BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_key_revoked BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_key_suspended BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_key_expired BIGINT NOT NULL DEFAULT 0;

-- The sweeper deletes expired roll-ups by time, in bounded batches (raw
-- records by id: a UUIDv7 is made at its time, so the primary key serves).
CREATE INDEX IF NOT EXISTS keysmith_usage_agg_expiry ON keysmith_usage_agg (period, period_start);

-- Batches whose roll-up increments were added (refusals, and requests kept
-- without a raw record): a batch written again adds them once. Swept with
-- the raw records.
CREATE TABLE IF NOT EXISTS keysmith_usage_batches (
    id         UUID PRIMARY KEY,
    written_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS keysmith_usage_batches_time ON keysmith_usage_batches (written_at);
