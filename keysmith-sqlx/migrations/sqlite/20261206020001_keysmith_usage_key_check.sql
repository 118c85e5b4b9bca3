-- Raw usage records without a per-row foreign key. The table swap below
-- relies on the migration history (it runs once).
--
-- The foreign key from `keysmith_usage.key_id` to `keysmith_keys` was
-- checked row by row. The store now checks a batch's keys once per batch
-- (inside its write transaction: a record of an unknown key still fails the
-- whole batch), and a key deleted by anyone still takes its raw records
-- with it: the cascade becomes a trigger. SQLite cannot drop a foreign key,
-- so the table is rebuilt: copied into the new shape, then swapped in.
-- Roll-ups keep their foreign key (one row per key and period).
CREATE TABLE IF NOT EXISTS keysmith_usage_v2 (
    id         BLOB PRIMARY KEY,
    key_id     BLOB NOT NULL,
    app_id     TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    method     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    latency_us BIGINT NOT NULL,
    occurred_at INTEGER NOT NULL
);
INSERT OR IGNORE INTO keysmith_usage_v2
        (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, occurred_at)
    SELECT id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, occurred_at
    FROM keysmith_usage;
DROP TABLE keysmith_usage;
ALTER TABLE keysmith_usage_v2 RENAME TO keysmith_usage;

-- A key's records in a time range.
CREATE INDEX IF NOT EXISTS keysmith_usage_key_time ON keysmith_usage (key_id, occurred_at, id);

CREATE TRIGGER IF NOT EXISTS keysmith_keys_delete_usage AFTER DELETE ON keysmith_keys FOR EACH ROW
BEGIN
    DELETE FROM keysmith_usage WHERE key_id = OLD.id;
END;
