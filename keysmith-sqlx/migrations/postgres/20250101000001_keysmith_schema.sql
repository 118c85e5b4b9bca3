-- Keysmith schema for PostgreSQL. Every statement is idempotent, so the file
-- can run again safely even where the migration history was lost.

CREATE TABLE IF NOT EXISTS keysmith_policies (
    id                   UUID PRIMARY KEY,
    app_id               TEXT NOT NULL,
    tenant_id            TEXT NOT NULL,
    name                 TEXT NOT NULL,
    rate_limit_requests  BIGINT,
    rate_limit_window_us BIGINT,
    rate_limit_burst     BIGINT,
    allowed_ips          TEXT[] NOT NULL DEFAULT '{}',
    allowed_origins      TEXT[] NOT NULL DEFAULT '{}',
    allowed_scopes       TEXT[] NOT NULL DEFAULT '{}',
    max_key_age_us       BIGINT,
    quota                JSONB,
    rotation_grace_us    BIGINT,
    metadata             JSONB NOT NULL DEFAULT '{}',
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    CONSTRAINT keysmith_policies_tenant_name UNIQUE (app_id, tenant_id, name)
);

CREATE TABLE IF NOT EXISTS keysmith_keys (
    id               UUID PRIMARY KEY,
    app_id           TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    hash             TEXT NOT NULL,
    name             TEXT NOT NULL,
    hint             TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    environment      TEXT NOT NULL CHECK (environment IN ('live', 'test', 'dev')),
    state            TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'expired', 'revoked', 'suspended')),
    -- Only terminal keys can still name a policy when it is deleted.
    policy_id        UUID REFERENCES keysmith_policies (id) ON DELETE SET NULL,
    expires_at       TIMESTAMPTZ,
    grace_expires_at TIMESTAMPTZ,
    revoked_reason   TEXT,
    last_used_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    metadata         JSONB NOT NULL DEFAULT '{}'
);

-- Validation: one lookup by hash.
CREATE UNIQUE INDEX IF NOT EXISTS keysmith_keys_hash ON keysmith_keys (hash);
-- Listings by tenant, with or without a state filter, in id order.
CREATE INDEX IF NOT EXISTS keysmith_keys_tenant_state ON keysmith_keys (app_id, tenant_id, state, id);
CREATE INDEX IF NOT EXISTS keysmith_keys_tenant ON keysmith_keys (app_id, tenant_id, id);
-- "Is this policy in use" and the ON DELETE action.
CREATE INDEX IF NOT EXISTS keysmith_keys_policy ON keysmith_keys (policy_id) WHERE policy_id IS NOT NULL;
-- The sweeper.
CREATE INDEX IF NOT EXISTS keysmith_keys_expiring ON keysmith_keys (expires_at)
    WHERE state = 'active' AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS keysmith_keys_grace ON keysmith_keys (grace_expires_at) WHERE state = 'rotated';

CREATE TABLE IF NOT EXISTS keysmith_key_scopes (
    key_id   UUID NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    scope    TEXT NOT NULL,
    PRIMARY KEY (key_id, position)
);

CREATE TABLE IF NOT EXISTS keysmith_scopes (
    id          UUID PRIMARY KEY,
    app_id      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT keysmith_scopes_tenant_name UNIQUE (app_id, tenant_id, name)
);

CREATE TABLE IF NOT EXISTS keysmith_usage (
    id         UUID PRIMARY KEY,
    key_id     UUID NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    app_id     TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    method     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    ip         INET,
    user_agent TEXT,
    latency_us BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);

-- A key's records in a time range.
CREATE INDEX IF NOT EXISTS keysmith_usage_key_time ON keysmith_usage (key_id, occurred_at, id);

CREATE TABLE IF NOT EXISTS keysmith_usage_agg (
    key_id       UUID NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    period       TEXT NOT NULL CHECK (period IN ('day', 'month')),
    period_start TIMESTAMPTZ NOT NULL,
    app_id       TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    requests     BIGINT NOT NULL DEFAULT 0,
    errors       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, period_start)
);

-- A tenant's totals per period.
CREATE INDEX IF NOT EXISTS keysmith_usage_agg_tenant ON keysmith_usage_agg (app_id, tenant_id, period, period_start);

CREATE TABLE IF NOT EXISTS keysmith_rotations (
    id               UUID PRIMARY KEY,
    key_id           UUID NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    new_key_id       UUID NOT NULL REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    app_id           TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    old_hash         TEXT NOT NULL,
    new_hash         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    grace_ttl_us     BIGINT NOT NULL,
    grace_expires_at TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS keysmith_rotations_key ON keysmith_rotations (key_id);
CREATE INDEX IF NOT EXISTS keysmith_rotations_new_key ON keysmith_rotations (new_key_id);
