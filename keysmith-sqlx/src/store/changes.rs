//! The change log: changes whose publish failed, for every engine to read.

use chrono::{DateTime, Utc};
use keysmith_core::store::{LoggedChanges, MAX_LOGGED_CHANGE_LEN};
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

/// The rows after `after` (at most `limit`) and the highest number the log
/// holds; only that number with `after` `None`. A payload over
/// [`MAX_LOGGED_CHANGE_LEN`] is not fetched (a row written by hand could be
/// of any size, and every engine reads it).
pub(super) async fn after<DB: Dialect>(store: &SqlStore<DB>, after: Option<u64>, limit: u32) -> Result<LoggedChanges> {
    // Read first: a row the page below finds is numbered at most this, or
    // committed since, and the page never finds fewer rows than it saw.
    let row = sqlx::query("SELECT MAX(seq) AS latest FROM keysmith_change_log")
        .fetch_one(store.conn().await?.exec())
        .await
        .map_err(store_error)?;
    let latest = DB::opt_big(&row, "latest")?.map(|seq| to_u64("change log seq", seq)).transpose()?;
    let Some(after) = after else {
        return Ok(LoggedChanges { latest, changes: Vec::new() });
    };
    // LENGTH counts characters on PostgreSQL and SQLite, bytes on MySQL:
    // either makes a bound.
    let rows = sqlx::query(statement!(
        DB,
        "SELECT seq, CASE WHEN LENGTH(payload) > ? THEN NULL ELSE payload END AS payload \
         FROM keysmith_change_log WHERE seq > ? ORDER BY seq LIMIT ?"
    ))
    .arg(i64::try_from(MAX_LOGGED_CHANGE_LEN).unwrap_or(i64::MAX))
    .arg(i64::try_from(after).unwrap_or(i64::MAX))
    .arg(i64::from(limit))
    .fetch_all(store.conn().await?.exec())
    .await
    .map_err(store_error)?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq = to_u64("change log seq", DB::big(row, "seq")?)?;
        changes.push((seq, LoggedChanges::parse(DB::opt_text(row, "payload")?.as_deref())));
    }
    Ok(LoggedChanges { latest, changes })
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
