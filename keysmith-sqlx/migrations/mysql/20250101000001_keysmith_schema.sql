-- Keysmith schema for MySQL 8 and MariaDB 10.11. Every statement is
-- idempotent, so the file can run again safely even where the migration
-- history was lost; indexes are declared in their tables because MySQL has
-- no CREATE INDEX IF NOT EXISTS.
--
-- Ids are UUIDs as BINARY(16), times are UTC in DATETIME(6) (microseconds),
-- lists (IP networks, origins, scopes) are JSON arrays. Text compares by its
-- bytes (utf8mb4_bin), so names and hashes are case-sensitive as in the other
-- backends. Indexed text is VARCHAR(255): three such columns fit InnoDB's
-- 3072-byte key.

CREATE TABLE IF NOT EXISTS keysmith_policies (
    id                   BINARY(16) PRIMARY KEY,
    app_id               VARCHAR(255) NOT NULL,
    tenant_id            VARCHAR(255) NOT NULL,
    name                 VARCHAR(255) NOT NULL,
    rate_limit_requests  BIGINT,
    rate_limit_window_us BIGINT,
    rate_limit_burst     BIGINT,
    allowed_ips          JSON NOT NULL,
    allowed_origins      JSON NOT NULL,
    allowed_scopes       JSON NOT NULL,
    max_key_age_us       BIGINT,
    quota                JSON,
    rotation_grace_us    BIGINT,
    metadata             JSON NOT NULL,
    created_at           DATETIME(6) NOT NULL,
    updated_at           DATETIME(6) NOT NULL,
    CONSTRAINT keysmith_policies_tenant_name UNIQUE (app_id, tenant_id, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_keys (
    id               BINARY(16) PRIMARY KEY,
    app_id           VARCHAR(255) NOT NULL,
    tenant_id        VARCHAR(255) NOT NULL,
    hash             CHAR(64) NOT NULL,
    name             TEXT NOT NULL,
    hint             VARCHAR(255) NOT NULL,
    prefix           VARCHAR(64) NOT NULL,
    environment      VARCHAR(16) NOT NULL CHECK (environment IN ('live', 'test', 'dev')),
    state            VARCHAR(16) NOT NULL CHECK (state IN ('active', 'rotated', 'expired', 'revoked', 'suspended')),
    -- Only terminal keys can still name a policy when it is deleted.
    policy_id        BINARY(16),
    expires_at       DATETIME(6),
    grace_expires_at DATETIME(6),
    revoked_reason   TEXT,
    last_used_at     DATETIME(6),
    created_at       DATETIME(6) NOT NULL,
    updated_at       DATETIME(6) NOT NULL,
    metadata         JSON NOT NULL,
    -- The credential the key belongs to across rotations (the id of the
    -- first key of its chain): rate limits and quotas count per lineage.
    lineage_id       BINARY(16) NOT NULL,
    -- Validation: one lookup by hash.
    UNIQUE KEY keysmith_keys_hash (hash),
    -- Listings by tenant, with or without a state filter, in id order.
    KEY keysmith_keys_tenant_state (app_id, tenant_id, state, id),
    KEY keysmith_keys_tenant (app_id, tenant_id, id),
    -- The sweeper.
    KEY keysmith_keys_expiring (state, expires_at),
    KEY keysmith_keys_grace (state, grace_expires_at),
    -- Quota reads: a lineage's keys.
    KEY keysmith_keys_lineage (lineage_id),
    -- "Is this policy in use" and the ON DELETE action (the index is the
    -- foreign key's).
    CONSTRAINT keysmith_keys_policy FOREIGN KEY (policy_id) REFERENCES keysmith_policies (id) ON DELETE SET NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_key_scopes (
    key_id   BINARY(16) NOT NULL,
    position INTEGER NOT NULL,
    scope    TEXT NOT NULL,
    PRIMARY KEY (key_id, position),
    CONSTRAINT keysmith_key_scopes_key FOREIGN KEY (key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_scopes (
    id          BINARY(16) PRIMARY KEY,
    app_id      VARCHAR(255) NOT NULL,
    tenant_id   VARCHAR(255) NOT NULL,
    name        VARCHAR(255) NOT NULL,
    description TEXT NOT NULL,
    created_at  DATETIME(6) NOT NULL,
    CONSTRAINT keysmith_scopes_tenant_name UNIQUE (app_id, tenant_id, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_usage (
    id          BINARY(16) PRIMARY KEY,
    key_id      BINARY(16) NOT NULL,
    app_id      VARCHAR(255) NOT NULL,
    tenant_id   VARCHAR(255) NOT NULL,
    endpoint    TEXT NOT NULL,
    method      VARCHAR(32) NOT NULL,
    status      INTEGER NOT NULL,
    ip          VARCHAR(45),
    user_agent  TEXT,
    latency_us  BIGINT NOT NULL,
    occurred_at DATETIME(6) NOT NULL,
    -- A key's records in a time range.
    KEY keysmith_usage_key_time (key_id, occurred_at, id),
    CONSTRAINT keysmith_usage_key FOREIGN KEY (key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_usage_agg (
    key_id       BINARY(16) NOT NULL,
    period       VARCHAR(8) NOT NULL CHECK (period IN ('day', 'month')),
    period_start DATETIME(6) NOT NULL,
    app_id       VARCHAR(255) NOT NULL,
    tenant_id    VARCHAR(255) NOT NULL,
    requests     BIGINT NOT NULL DEFAULT 0,
    errors       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, period_start),
    -- A tenant's totals per period.
    KEY keysmith_usage_agg_tenant (app_id, tenant_id, period, period_start),
    CONSTRAINT keysmith_usage_agg_key FOREIGN KEY (key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS keysmith_rotations (
    id               BINARY(16) PRIMARY KEY,
    key_id           BINARY(16) NOT NULL,
    new_key_id       BINARY(16) NOT NULL,
    app_id           VARCHAR(255) NOT NULL,
    tenant_id        VARCHAR(255) NOT NULL,
    old_hash         CHAR(64) NOT NULL,
    new_hash         CHAR(64) NOT NULL,
    reason           VARCHAR(32) NOT NULL,
    grace_ttl_us     BIGINT NOT NULL,
    grace_expires_at DATETIME(6) NOT NULL,
    created_at       DATETIME(6) NOT NULL,
    KEY keysmith_rotations_key (key_id),
    KEY keysmith_rotations_new_key (new_key_id),
    CONSTRAINT keysmith_rotations_old FOREIGN KEY (key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    CONSTRAINT keysmith_rotations_new FOREIGN KEY (new_key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
