-- Credits: a prepaid number of uses, per key lineage (the key that replaces
-- another in a rotation spends from the same row). Idempotent, like the
-- schema file.

CREATE TABLE IF NOT EXISTS keysmith_credits (
    lineage_id    UUID PRIMARY KEY REFERENCES keysmith_keys (id) ON DELETE CASCADE,
    app_id        TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    remaining     BIGINT NOT NULL CHECK (remaining >= 0),
    -- A refill sets `remaining` to `refill_amount` at the start of each
    -- UTC day or month; `refilled_at` is the start of the current one.
    refill_amount BIGINT CHECK (refill_amount > 0),
    refill_every  TEXT CHECK (refill_every IN ('day', 'month')),
    refilled_at   TIMESTAMPTZ
);
