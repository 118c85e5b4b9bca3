-- Exact identities and names. The earlier files made text `utf8mb4_bin`, a
-- PAD SPACE collation: it compares bytes but ignores trailing spaces, so
-- `'acme' = 'acme '` held and a lookup for tenant `acme ` found acme's rows.
-- Every Keysmith table now uses a NO PAD binary collation, which compares
-- every byte: `utf8mb4_0900_bin` on MySQL 8, `utf8mb4_nopad_bin` on MariaDB.
-- Converting a table changes each of its text columns and its default, so a
-- column added later by `ALTER TABLE … ADD COLUMN` compares exactly too (a
-- new table must name the collation itself, found as below).
--
-- No unique key can break: names that NO PAD tells apart were one name under
-- PAD SPACE, so no two rows collide. Each table is rebuilt once (the usage
-- table's time grows with its rows). Idempotent, like the schema file. A
-- server with neither collation stops here with "Unknown collation".

SET @keysmith_collation = COALESCE(
    (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
     WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')
     ORDER BY COLLATION_NAME LIMIT 1),
    'utf8mb4_0900_bin_or_utf8mb4_nopad_bin');

-- One statement per table: PREPARE takes one, and a collation cannot be a
-- parameter.
SET @keysmith_to = CONCAT(' CONVERT TO CHARACTER SET utf8mb4 COLLATE ', @keysmith_collation);
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_policies', @keysmith_to);      PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_keys', @keysmith_to);          PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_key_scopes', @keysmith_to);    PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_scopes', @keysmith_to);        PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_usage', @keysmith_to);         PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_usage_agg', @keysmith_to);     PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_rotations', @keysmith_to);     PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_credits', @keysmith_to);       PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
SET @keysmith_convert = CONCAT('ALTER TABLE keysmith_owner_credits', @keysmith_to); PREPARE keysmith_convert FROM @keysmith_convert; EXECUTE keysmith_convert;
DEALLOCATE PREPARE keysmith_convert;
