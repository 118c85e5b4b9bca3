-- Credits an owner's keys share: spent by every key of the owner under a
-- policy with `limit_by: owner` (owner ids are unique per tenant). An owner
-- is not a row of its own, so nothing cascades here: removing the credits
-- is the application's call. Idempotent, like the schema file.
--
-- Three VARCHAR(255) columns fit InnoDB's 3072-byte key (3060 bytes in
-- utf8mb4).

CREATE TABLE IF NOT EXISTS keysmith_owner_credits (
    app_id        VARCHAR(255) NOT NULL,
    tenant_id     VARCHAR(255) NOT NULL,
    owner_id      VARCHAR(255) NOT NULL,
    remaining     BIGINT NOT NULL CHECK (remaining >= 0),
    -- A refill sets `remaining` to `refill_amount` at the start of each
    -- UTC day or month; `refilled_at` is the start of the current one.
    refill_amount BIGINT CHECK (refill_amount > 0),
    refill_every  VARCHAR(8) CHECK (refill_every IN ('day', 'month')),
    refilled_at   DATETIME(6),
    PRIMARY KEY (app_id, tenant_id, owner_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
