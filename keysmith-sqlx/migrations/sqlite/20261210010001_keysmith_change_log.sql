-- The change log: changes whose publish on the change feed failed, written
-- by the engine that made them and read by every engine of the fleet once
-- per heartbeat interval, so that an instance cut off from the feed alone
-- still tells the others. A change is kept as the feed carries it (JSON of
-- ids and key hashes, never a secret). `seq` orders the reads and is never
-- reused (AUTOINCREMENT), even once every row was deleted; the engines
-- delete rows older than their retention by `logged_at` (microseconds since
-- the Unix epoch), in bounded batches.
CREATE TABLE IF NOT EXISTS keysmith_change_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    logged_at INTEGER NOT NULL,
    payload   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keysmith_change_log_time ON keysmith_change_log (logged_at);
