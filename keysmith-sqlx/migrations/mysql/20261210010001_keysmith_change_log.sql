-- The change log: changes whose publish on the change feed failed, written
-- by the engine that made them and read by every engine of the fleet once
-- per heartbeat interval, so that an instance cut off from the feed alone
-- still tells the others. A change is kept as the feed carries it (JSON of
-- ids and key hashes, never a secret). `seq` orders the reads (InnoDB keeps
-- its counter across restarts from MySQL 8.0 and MariaDB 10.2.4); the
-- engines delete rows older than their retention by `logged_at`, in bounded
-- batches. Like every Keysmith table, in a NO PAD binary collation (found as
-- the exact-identities migration finds it; a collation cannot be a
-- parameter, so the statement is prepared).
SET @keysmith_collation = COALESCE(
    (SELECT COLLATION_NAME FROM information_schema.COLLATIONS
     WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')
     ORDER BY COLLATION_NAME LIMIT 1),
    'utf8mb4_0900_bin_or_utf8mb4_nopad_bin');
SET @keysmith_create = CONCAT(
    'CREATE TABLE IF NOT EXISTS keysmith_change_log (',
    ' seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, logged_at DATETIME(6) NOT NULL, payload TEXT NOT NULL,',
    ' KEY keysmith_change_log_time (logged_at)',
    ') ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = ', @keysmith_collation);
PREPARE keysmith_create FROM @keysmith_create;
EXECUTE keysmith_create;
DEALLOCATE PREPARE keysmith_create;
