-- Raw usage records without a per-row foreign key. Idempotent, like the
-- schema file (every statement may run again).
--
-- The foreign key from `keysmith_usage.key_id` to `keysmith_keys` was
-- checked row by row (a trigger per record) and alone made ingestion more
-- than twice as slow. The store now checks a batch's keys once per batch
-- (`FOR KEY SHARE`, so a key cannot go before the batch commits; a record of
-- an unknown key still fails the whole batch), and a key deleted by anyone
-- still takes its raw records with it: the cascade becomes a trigger, one
-- statement per `DELETE`. Roll-ups keep their foreign key (one row per key
-- and period, not per request).
DO $$
DECLARE
    fk name;
BEGIN
    FOR fk IN
        SELECT c.conname FROM pg_constraint c
        WHERE c.conrelid = 'keysmith_usage'::regclass AND c.contype = 'f'
          AND c.confrelid = 'keysmith_keys'::regclass
    LOOP
        EXECUTE format('ALTER TABLE keysmith_usage DROP CONSTRAINT %I', fk);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION keysmith_delete_usage_of_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM keysmith_usage u USING keysmith_deleted_keys d WHERE u.key_id = d.id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS keysmith_keys_delete_usage ON keysmith_keys;
CREATE TRIGGER keysmith_keys_delete_usage AFTER DELETE ON keysmith_keys
    REFERENCING OLD TABLE AS keysmith_deleted_keys
    FOR EACH STATEMENT EXECUTE FUNCTION keysmith_delete_usage_of_keys();
