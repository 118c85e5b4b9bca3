-- Key owners: the application's id for the user or customer a key belongs
-- to. SQLite cannot add a column only if it is missing, so this file relies
-- on the migration history (it runs once).

ALTER TABLE keysmith_keys ADD COLUMN owner_id TEXT;

-- Listings by owner, and the count of an owner's live keys under a policy
-- that caps it.
CREATE INDEX IF NOT EXISTS keysmith_keys_owner ON keysmith_keys (app_id, tenant_id, owner_id, id)
    WHERE owner_id IS NOT NULL;

-- How many live keys one owner may hold under a policy (none: no limit).
ALTER TABLE keysmith_policies ADD COLUMN max_active_keys_per_owner BIGINT;
