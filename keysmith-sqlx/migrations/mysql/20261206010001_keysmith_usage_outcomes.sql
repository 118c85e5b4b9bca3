-- Usage at scale: hourly roll-ups, outcomes and retention. MySQL cannot add
-- a column only if it is missing (MariaDB can, MySQL 8 cannot), so this file
-- relies on the migration history (it runs once).
--
-- Roll-ups gain the period `hour` and count what became of requests: passed
-- ones by status class (`status_2xx` counts every status below 300), refused
-- ones by reason. Rows written before this migration have no classes (their
-- `requests` and `errors` stay exact). The column's CHECK is named after the
-- column on MariaDB; MySQL 8 enforces none made inline before 8.0.16.
ALTER TABLE keysmith_usage_agg MODIFY period VARCHAR(8) NOT NULL;
ALTER TABLE keysmith_usage_agg
    ADD COLUMN status_2xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN status_3xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN status_4xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN status_5xx BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_rate_limited BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_quota_exceeded BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_credits_exhausted BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_insufficient_scope BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_ip_not_allowed BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_origin_not_allowed BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_key_revoked BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_key_suspended BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refused_key_expired BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT keysmith_usage_agg_period CHECK (period IN ('hour', 'day', 'month')),
    -- The sweeper deletes expired roll-ups by time, in bounded batches (raw
    -- records by id: a UUIDv7 is made at its time, so the primary key serves).
    ADD KEY keysmith_usage_agg_expiry (period, period_start);

-- Batches whose roll-up increments were added (refusals, and requests kept
-- without a raw record): a batch written again adds them once. Swept with
-- the raw records. Like every Keysmith table, in a NO PAD binary collation
-- (found as the exact-identities migration finds it; a collation cannot be
-- a parameter, so the statement is prepared).
SET @keysmith_collation = COALESCE(
    (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
     WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')
     ORDER BY COLLATION_NAME LIMIT 1),
    'utf8mb4_0900_bin_or_utf8mb4_nopad_bin');
SET @keysmith_create = CONCAT(
    'CREATE TABLE IF NOT EXISTS keysmith_usage_batches (',
    ' id BINARY(16) PRIMARY KEY, written_at DATETIME(6) NOT NULL,',
    ' KEY keysmith_usage_batches_time (written_at)',
    ') ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = ', @keysmith_collation);
PREPARE keysmith_create FROM @keysmith_create;
EXECUTE keysmith_create;
DEALLOCATE PREPARE keysmith_create;
