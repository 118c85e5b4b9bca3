-- Raw usage records without a per-row foreign key. Relies on the migration
-- history (it runs once): MySQL 8 cannot drop a foreign key only if it
-- exists.
--
-- The foreign key from `keysmith_usage.key_id` to `keysmith_keys` was
-- checked row by row and slowed ingestion down. The store now checks a
-- batch's keys once per batch (`LOCK IN SHARE MODE`, so a key cannot go
-- before the batch commits; a record of an unknown key still fails the
-- whole batch), and a key deleted by anyone still takes its raw records
-- with it: the cascade becomes a trigger. The index on (key_id, …) stays:
-- the trigger and the list of a key's records use it. Roll-ups keep their
-- foreign key (one row per key and period, not per request).
ALTER TABLE keysmith_usage DROP FOREIGN KEY keysmith_usage_key;
DROP TRIGGER IF EXISTS keysmith_keys_delete_usage;
CREATE TRIGGER keysmith_keys_delete_usage AFTER DELETE ON keysmith_keys FOR EACH ROW
    DELETE FROM keysmith_usage WHERE key_id = OLD.id;
