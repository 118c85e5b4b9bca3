-- Named rate limits: a policy holds a list of limits (each with a name,
-- requests, a window in microseconds and an optional burst) in one JSON
-- column, and says whose budget they count (`key`: each key's lineage, or
-- `owner`: all keys of an owner). A policy's single limit becomes the limit
-- named `default`. Idempotent, like the schema file.

ALTER TABLE keysmith_policies ADD COLUMN IF NOT EXISTS rate_limits JSONB;
ALTER TABLE keysmith_policies ADD COLUMN IF NOT EXISTS limit_by TEXT NOT NULL DEFAULT 'key'
    CHECK (limit_by IN ('key', 'owner'));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'keysmith_policies'
                 AND column_name = 'rate_limit_requests') THEN
        UPDATE keysmith_policies SET rate_limits = CASE
            WHEN rate_limit_requests IS NULL OR rate_limit_window_us IS NULL THEN '[]'::jsonb
            ELSE jsonb_build_array(jsonb_build_object(
                'name', 'default', 'requests', rate_limit_requests,
                'window_us', rate_limit_window_us, 'burst', rate_limit_burst))
        END
        WHERE rate_limits IS NULL;
    END IF;
END $$;

UPDATE keysmith_policies SET rate_limits = '[]'::jsonb WHERE rate_limits IS NULL;
ALTER TABLE keysmith_policies ALTER COLUMN rate_limits SET DEFAULT '[]'::jsonb;
ALTER TABLE keysmith_policies ALTER COLUMN rate_limits SET NOT NULL;

ALTER TABLE keysmith_policies
    DROP COLUMN IF EXISTS rate_limit_requests,
    DROP COLUMN IF EXISTS rate_limit_window_us,
    DROP COLUMN IF EXISTS rate_limit_burst;
