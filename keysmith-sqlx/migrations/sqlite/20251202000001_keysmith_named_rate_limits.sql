-- Named rate limits: a policy holds a list of limits (each with a name,
-- requests, a window in microseconds and an optional burst) in one JSON
-- column, and says whose budget they count (`key`: each key's lineage, or
-- `owner`: all keys of an owner). A policy's single limit becomes the limit
-- named `default`. SQLite cannot add a column only if it is missing, so this
-- file relies on the migration history (it runs once).

ALTER TABLE keysmith_policies ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keysmith_policies ADD COLUMN limit_by TEXT NOT NULL DEFAULT 'key'
    CHECK (limit_by IN ('key', 'owner'));

UPDATE keysmith_policies SET rate_limits = json_array(json_object(
    'name', 'default', 'requests', rate_limit_requests,
    'window_us', rate_limit_window_us, 'burst', rate_limit_burst))
WHERE rate_limit_requests IS NOT NULL AND rate_limit_window_us IS NOT NULL;

ALTER TABLE keysmith_policies DROP COLUMN rate_limit_requests;
ALTER TABLE keysmith_policies DROP COLUMN rate_limit_window_us;
ALTER TABLE keysmith_policies DROP COLUMN rate_limit_burst;
