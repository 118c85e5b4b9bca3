-- Key owners: the application's id for the user or customer a key belongs
-- to (at most 255 characters, which the engine enforces). MySQL cannot add
-- a column only if it is missing (MariaDB can, MySQL 8 cannot), so this file
-- relies on the migration history (it runs once).
--
-- The index has no `id`: three VARCHAR(255) columns fill InnoDB's 3072-byte
-- key, and InnoDB appends the primary key to every secondary index anyway.
-- It serves listings by owner and the count of an owner's live keys under a
-- policy that caps it.

ALTER TABLE keysmith_keys
    ADD COLUMN owner_id VARCHAR(255),
    ADD KEY keysmith_keys_owner (app_id, tenant_id, owner_id);

-- How many live keys one owner may hold under a policy (none: no limit).
ALTER TABLE keysmith_policies ADD COLUMN max_active_keys_per_owner BIGINT;
