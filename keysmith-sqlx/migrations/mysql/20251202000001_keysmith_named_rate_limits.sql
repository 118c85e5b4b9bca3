-- Named rate limits: a policy holds a list of limits (each with a name,
-- requests, a window in microseconds and an optional burst) in one JSON
-- column, and says whose budget they count (`key`: each key's lineage, or
-- `owner`: all keys of an owner). A policy's single limit becomes the limit
-- named `default`. MySQL cannot add a column only if it is missing, so this
-- file relies on the migration history (it runs once).

ALTER TABLE keysmith_policies
    ADD COLUMN rate_limits JSON,
    ADD COLUMN limit_by VARCHAR(8) NOT NULL DEFAULT 'key';

UPDATE keysmith_policies SET rate_limits = CASE
    WHEN rate_limit_requests IS NULL OR rate_limit_window_us IS NULL THEN JSON_ARRAY()
    ELSE JSON_ARRAY(JSON_OBJECT(
        'name', 'default', 'requests', rate_limit_requests,
        'window_us', rate_limit_window_us, 'burst', rate_limit_burst))
END;

ALTER TABLE keysmith_policies
    MODIFY COLUMN rate_limits JSON NOT NULL,
    DROP COLUMN rate_limit_requests,
    DROP COLUMN rate_limit_window_us,
    DROP COLUMN rate_limit_burst;
