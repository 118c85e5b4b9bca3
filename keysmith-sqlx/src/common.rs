//! What the backends share besides their store logic: connecting, error
//! mapping and column conversions.

use std::str::FromStr;
use std::time::Duration;

#[cfg(any(feature = "postgres", feature = "mysql"))]
use sqlx::{Connection, Database, Pool};

use keysmith_core::store::Page;
use keysmith_core::{Error, KeyHash, KeyId, KeyState, Policy, PolicyId, RateLimit, Result};

/// Connects a pool of up to 10 connections, which waits at most 5 seconds
/// for one, to the database server `server` (its name for messages) at `url`.
///
/// One direct connection is made first: a pool retries a failing connection
/// until its timeout and then reports only the timeout, where this says why
/// (connection refused, authentication failed, no such database…).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) async fn connect_server<DB: Database>(url: &str, server: &str) -> Result<Pool<DB>> {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    let options: <DB::Connection as Connection>::Options = url.parse().map_err(store_error)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, DB::Connection::connect_with(&options)).await {
        Ok(Ok(connection)) => connection.close().await.map_err(store_error)?,
        Ok(Err(error)) => return Err(store_error(error)),
        Err(_) => {
            return Err(Error::store(format!(
                "no answer from the {server} server within {}s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    }
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(10)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(store_error)
}

/// Any sqlx error, kept as the source: connection loss, timeouts, corrupt rows.
pub(crate) fn store_error(error: sqlx::Error) -> Error {
    Error::store(error)
}

/// True for a unique or primary-key violation.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// True for a foreign-key violation.
pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Maps a failed key insert: a taken id or hash is `AlreadyExists`, a policy
/// that vanished under us `NotFound`.
pub(crate) fn key_insert_error(error: sqlx::Error, id: KeyId, policy_id: Option<PolicyId>) -> Error {
    if is_unique_violation(&error) {
        return Error::AlreadyExists { entity: "key", name: id.to_string() };
    }
    if is_foreign_key_violation(&error)
        && let Some(policy_id) = policy_id
    {
        return Error::NotFound { entity: "policy", id: policy_id.to_string() };
    }
    store_error(error)
}

/// Maps a failed usage insert: a record whose key does not exist is `NotFound`.
pub(crate) fn usage_write_error(error: sqlx::Error) -> Error {
    if is_foreign_key_violation(&error) {
        Error::NotFound { entity: "key", id: "a key of the usage batch".to_owned() }
    } else {
        store_error(error)
    }
}

/// Maps a failed write of a named entity: a unique violation is `AlreadyExists`.
pub(crate) fn named_write_error(error: sqlx::Error, entity: &'static str, name: &str) -> Error {
    if is_unique_violation(&error) {
        Error::AlreadyExists { entity, name: name.to_owned() }
    } else {
        store_error(error)
    }
}

/// A row that cannot be turned back into an entity.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::store(format!("corrupt {what} in the keysmith tables: {detail}"))
}

/// Parses a text column with the entity's own `FromStr`.
pub(crate) fn parse_column<T>(what: &str, value: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| corrupt(what, e))
}

/// Parses a stored hash.
pub(crate) fn parse_hash(value: &str) -> Result<KeyHash> {
    value.parse().map_err(|_| corrupt("key hash", "not 64 hex characters"))
}

/// A duration as whole microseconds.
pub(crate) fn duration_to_micros(field: &'static str, duration: Duration) -> Result<i64> {
    i64::try_from(duration.as_micros())
        .map_err(|_| Error::InvalidInput { field, reason: "is too long to store".to_owned() })
}

/// A stored duration in microseconds.
pub(crate) fn micros_to_duration(what: &str, micros: i64) -> Result<Duration> {
    u64::try_from(micros).map(Duration::from_micros).map_err(|_| corrupt(what, "negative duration"))
}

/// A stored count back as unsigned.
pub(crate) fn to_u64(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(what, "negative count"))
}

/// `LIMIT` and `OFFSET` of a page (the limit capped like every store caps it).
pub(crate) fn limit_offset(page: Page) -> (i64, i64) {
    (i64::from(page.limit.min(Page::MAX_LIMIT)), i64::try_from(page.offset).unwrap_or(i64::MAX))
}

/// Whether a key in `current` state (`None`: no such key) may move from
/// one of `from` to `to`.
pub(crate) fn check_transition(id: KeyId, current: Option<KeyState>, from: &[KeyState], to: KeyState) -> Result<()> {
    match current {
        None => Err(Error::NotFound { entity: "key", id: id.to_string() }),
        Some(state) if from.contains(&state) => Ok(()),
        Some(state) => Err(Error::InvalidTransition { from: state, to }),
    }
}

/// A policy's columns that are not stored as they are.
pub(crate) struct PolicyColumns {
    pub(crate) rate_limits: Vec<StoredRateLimit>,
    pub(crate) allowed_ips: Vec<String>,
    pub(crate) max_key_age_us: Option<i64>,
    pub(crate) rotation_grace_us: Option<i64>,
    pub(crate) max_active_keys_per_owner: Option<i64>,
}

impl PolicyColumns {
    pub(crate) fn of(policy: &Policy) -> Result<Self> {
        Ok(Self {
            rate_limits: policy.rate_limits.iter().map(StoredRateLimit::of).collect::<Result<_>>()?,
            allowed_ips: policy.allowed_ips.iter().map(ToString::to_string).collect(),
            max_key_age_us: policy.max_key_age.map(|d| duration_to_micros("max_key_age", d)).transpose()?,
            rotation_grace_us: policy.rotation_grace.map(|d| duration_to_micros("rotation_grace", d)).transpose()?,
            max_active_keys_per_owner: policy.max_active_keys_per_owner.map(i64::from),
        })
    }
}

/// One of a policy's rate limits as its `rate_limits` JSON column holds
/// it (the window in microseconds, like every stored duration).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredRateLimit {
    name: String,
    requests: u32,
    window_us: i64,
    burst: Option<u32>,
}

impl StoredRateLimit {
    fn of(limit: &RateLimit) -> Result<Self> {
        Ok(Self {
            name: limit.name.clone(),
            requests: limit.requests,
            window_us: duration_to_micros("rate_limits.window", limit.window)?,
            burst: limit.burst,
        })
    }
}

/// The rate limits back from their column (`NULL` only in a row the
/// migration has not reached: no limits).
pub(crate) fn rate_limits_from(stored: Option<Vec<StoredRateLimit>>) -> Result<Vec<RateLimit>> {
    stored
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            Ok(RateLimit {
                name: s.name,
                requests: s.requests,
                window: micros_to_duration("rate limit window", s.window_us)?,
                burst: s.burst,
            })
        })
        .collect()
}

/// Parses every item of a stored list.
pub(crate) fn parse_list<T>(what: &str, values: &[String]) -> Result<Vec<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    values.iter().map(|v| parse_column(what, v)).collect()
}
