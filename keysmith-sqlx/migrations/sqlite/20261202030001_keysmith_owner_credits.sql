-- Credits an owner's keys share: spent by every key of the owner under a
-- policy with `limit_by: owner` (owner ids are unique per tenant). An owner
-- is not a row of its own, so nothing cascades here: removing the credits
-- is the application's call. Idempotent, like the schema file.

CREATE TABLE IF NOT EXISTS keysmith_owner_credits (
    app_id        TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    owner_id      TEXT NOT NULL,
    remaining     BIGINT NOT NULL CHECK (remaining >= 0),
    -- A refill sets `remaining` to `refill_amount` at the start of each
    -- UTC day or month; `refilled_at` is the start of the current one.
    refill_amount BIGINT CHECK (refill_amount > 0),
    refill_every  TEXT CHECK (refill_every IN ('day', 'month')),
    refilled_at   INTEGER,
    PRIMARY KEY (app_id, tenant_id, owner_id)
);
