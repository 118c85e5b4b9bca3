-- Usage at scale: hourly roll-ups, outcomes and retention. The table swap
-- below relies on the migration history (it runs once).
--
-- Roll-ups gain the period `hour` and count what became of requests: passed
-- ones by status class (`status_2xx` counts every status below 300), refused
-- ones by reason. Rows written before this migration have no classes (their
-- `requests` and `errors` stay exact). SQLite cannot change a CHECK, so the
-- table is rebuilt: copied into the new shape, then swapped in.
CREATE TABLE IF NOT EXISTS keysmith_usage_agg_v2 (
    key_id       BLOB NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    period       TEXT NOT NULL CHECK (period IN ('hour', 'day', 'month')),
    period_start INTEGER NOT NULL,
    app_id       TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    requests     BIGINT NOT NULL DEFAULT 0,
    errors       BIGINT NOT NULL DEFAULT 0,
    status_2xx BIGINT NOT NULL DEFAULT 0,
    status_3xx BIGINT NOT NULL DEFAULT 0,
    status_4xx BIGINT NOT NULL DEFAULT 0,
    status_5xx BIGINT NOT NULL DEFAULT 0,
    refused_rate_limited BIGINT NOT NULL DEFAULT 0,
    refused_quota_exceeded BIGINT NOT NULL DEFAULT 0,
    refused_credits_exhausted BIGINT NOT NULL DEFAULT 0,
    refused_insufficient_scope BIGINT NOT NULL DEFAULT 0,
    refused_ip_not_allowed BIGINT NOT NULL DEFAULT 0,
    refused_origin_not_allowed BIGINT NOT NULL DEFAULT 0,
    refused_key_revoked BIGINT NOT NULL DEFAULT 0,
    refused_key_suspended BIGINT NOT NULL DEFAULT 0,
    refused_key_expired BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, period_start)
);
INSERT OR IGNORE INTO keysmith_usage_agg_v2 (key_id, period, period_start, app_id, tenant_id, requests, errors)
    SELECT key_id, period, period_start, app_id, tenant_id, requests, errors FROM keysmith_usage_agg;
DROP TABLE keysmith_usage_agg;
ALTER TABLE keysmith_usage_agg_v2 RENAME TO keysmith_usage_agg;

-- A tenant's totals per period.
CREATE INDEX IF NOT EXISTS keysmith_usage_agg_tenant ON keysmith_usage_agg (app_id, tenant_id, period, period_start);
-- The sweeper deletes expired roll-ups by time, in bounded batches (raw
-- records by id: a UUIDv7 is made at its time, so the primary key serves).
CREATE INDEX IF NOT EXISTS keysmith_usage_agg_expiry ON keysmith_usage_agg (period, period_start);

-- Batches whose roll-up increments were added (refusals, and requests kept
-- without a raw record): a batch written again adds them once. Swept with
-- the raw records.
CREATE TABLE IF NOT EXISTS keysmith_usage_batches (
    id         BLOB PRIMARY KEY,
    written_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keysmith_usage_batches_time ON keysmith_usage_batches (written_at);
