//! The change log: changes whose publish failed, for every engine to read.

use chrono::{DateTime, Utc};
use keysmith_core::store::LoggedChanges;
use keysmith_core::{Change, Result};

use super::SqlStore;
use crate::common::{store_error, to_u64};
use crate::dialect::{Arg as _, Dialect, Exec as _, RowsAffected as _, statement};
use crate::rows::Columns as _;

/// Appends `change`, as the feed carries it, logged at `at`.
pub(super) async fn log<DB: Dialect>(store: &SqlStore<DB>, change: &Change, at: DateTime<Utc>) -> Result<()> {
    sqlx::query(statement!(DB, "INSERT INTO keysmith_change_log (logged_at, payload) VALUES (?, ?)"))
        .arg(DB::time(at))
        .arg(change.to_json()?)
        .execute(store.conn().await?.exec())
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The changes after `after` (at most `limit`), or only the latest number.
pub(super) async fn after<DB: Dialect>(store: &SqlStore<DB>, after: Option<u64>, limit: u32) -> Result<LoggedChanges> {
    let Some(after) = after else {
        let row = sqlx::query("SELECT MAX(seq) AS latest FROM keysmith_change_log")
            .fetch_one(store.conn().await?.exec())
            .await
            .map_err(store_error)?;
        let latest = DB::opt_big(&row, "latest")?.map(|seq| to_u64("change log seq", seq)).transpose()?;
        return Ok(LoggedChanges { latest: latest.unwrap_or(0), changes: Vec::new() });
    };
    let rows =
        sqlx::query(statement!(DB, "SELECT seq, payload FROM keysmith_change_log WHERE seq > ? ORDER BY seq LIMIT ?"))
            .arg(i64::try_from(after).unwrap_or(i64::MAX))
            .arg(i64::from(limit))
            .fetch_all(store.conn().await?.exec())
            .await
            .map_err(store_error)?;
    let mut logged = LoggedChanges { latest: after, changes: Vec::with_capacity(rows.len()) };
    for row in &rows {
        let seq = to_u64("change log seq", DB::big(row, "seq")?)?;
        logged.latest = logged.latest.max(seq);
        match Change::from_json(&DB::text(row, "payload")?) {
            Ok(change) => logged.changes.push((seq, change)),
            // Not a change (written by hand?): skipped, as a feed skips a
            // message that is not one.
            Err(error) => {
                tracing::warn!(target: "keysmith::feed", %error, seq, "ignored a change log row that is not a change");
            }
        }
    }
    Ok(logged)
}

/// Deletes at most `limit` changes logged before `before`.
pub(super) async fn delete_before<DB: Dialect>(store: &SqlStore<DB>, before: DateTime<Utc>, limit: u32) -> Result<u64> {
    let delete = || DB::USAGE_SQL.delete_before("keysmith_change_log", "seq", "logged_at", "");
    Ok(sqlx::query(statement!(DB, delete().as_str()))
        .arg(DB::time(before))
        .arg(i64::from(limit))
        .execute(store.conn().await?.exec())
        .await
        .map_err(store_error)?
        .rows_affected())
}
