-- Key lineage: the credential a key belongs to across rotations (the id of
-- the first key of its chain). Rate limits and quotas are counted per
-- lineage. Idempotent, like the schema file.

ALTER TABLE keysmith_keys ADD COLUMN IF NOT EXISTS lineage_id UUID;

-- Existing keys: follow recorded rotations from each chain's first key, so
-- keys already rotated share their predecessor's lineage.
WITH RECURSIVE chain (id, lineage) AS (
    SELECT k.id, k.id FROM keysmith_keys k
    WHERE NOT EXISTS (SELECT 1 FROM keysmith_rotations r WHERE r.new_key_id = k.id)
    UNION
    SELECT r.new_key_id, c.lineage FROM keysmith_rotations r JOIN chain c ON r.key_id = c.id
)
UPDATE keysmith_keys k SET lineage_id = c.lineage FROM chain c WHERE k.id = c.id AND k.lineage_id IS NULL;
UPDATE keysmith_keys SET lineage_id = id WHERE lineage_id IS NULL;

ALTER TABLE keysmith_keys ALTER COLUMN lineage_id SET NOT NULL;

-- Quota reads: a lineage's keys.
CREATE INDEX IF NOT EXISTS keysmith_keys_lineage ON keysmith_keys (lineage_id);
