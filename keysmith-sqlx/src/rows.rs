//! Rows read back into entities, written once for every backend: the
//! decoders are generic over [`Columns`], which reads each kind of column
//! through the backend's [`Reads`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use keysmith_core::store::StoredKey;
use keysmith_core::{
    Credits, Key, KeyId, Policy, PolicyId, Refill, Result, RotationId, RotationRecord, Tenant, UsageId, UsageRecord,
};

use crate::common::{corrupt, micros_to_duration, parse_column, parse_hash, parse_list, rate_limits_from, to_u64};
use crate::dialect::{Dialect, Reads, Stored as _};

/// Reads one column of a row, by kind; `column` names it in errors.
pub(crate) trait Columns: Dialect {
    fn text(row: &Self::Row, column: &str) -> Result<String> {
        get::<Self, _>(row, column)
    }
    fn opt_text(row: &Self::Row, column: &str) -> Result<Option<String>> {
        get::<Self, _>(row, column)
    }
    fn uuid(row: &Self::Row, column: &str) -> Result<Uuid> {
        get::<Self, _>(row, column)
    }
    fn opt_uuid(row: &Self::Row, column: &str) -> Result<Option<Uuid>> {
        get::<Self, _>(row, column)
    }
    fn int(row: &Self::Row, column: &str) -> Result<i32> {
        get::<Self, _>(row, column)
    }
    fn big(row: &Self::Row, column: &str) -> Result<i64> {
        get::<Self, _>(row, column)
    }
    fn opt_big(row: &Self::Row, column: &str) -> Result<Option<i64>> {
        get::<Self, _>(row, column)
    }
    /// A JSON column; `None` for `NULL`.
    fn json<T>(row: &Self::Row, column: &str) -> Result<Option<T>>
    where
        Self: Reads<Option<Json<T>>>,
    {
        Ok(get::<Self, Option<Json<T>>>(row, column)?.map(|json| json.0))
    }
    /// A time, as [`Dialect::Time`] stores it.
    fn at(row: &Self::Row, column: &str) -> Result<DateTime<Utc>> {
        get::<Self, Self::Time>(row, column)?.load(column)
    }
    fn opt_at(row: &Self::Row, column: &str) -> Result<Option<DateTime<Utc>>> {
        get::<Self, Option<Self::Time>>(row, column)?.map(|t| t.load(column)).transpose()
    }
    /// A list of strings, as [`Dialect::List`] stores it.
    fn list(row: &Self::Row, column: &str) -> Result<Vec<String>> {
        get::<Self, Self::List>(row, column)?.load(column)
    }
    /// A key's scopes, as [`Dialect::SCOPES`] reads them.
    fn scopes(row: &Self::Row, column: &str) -> Result<Vec<String>> {
        get::<Self, Self::Scopes>(row, column)?.load(column)
    }
}

impl<DB: Dialect> Columns for DB {}

/// One column of `row` as `T`, without sqlx's check of the column type where
/// the backend asks so (the decoder still checks what it reads).
fn get<DB: Dialect + Reads<T>, T>(row: &DB::Row, column: &str) -> Result<T> {
    DB::read(row, column, DB::UNCHECKED_COLUMNS)
}

/// Integer microseconds as a duration.
fn micros<DB: Columns>(row: &DB::Row, column: &str) -> Result<Duration> {
    micros_to_duration(column, DB::big(row, column)?)
}

fn opt_micros<DB: Columns>(row: &DB::Row, column: &str) -> Result<Option<Duration>> {
    DB::opt_big(row, column)?.map(|us| micros_to_duration(column, us)).transpose()
}

/// A JSON column that is never `NULL`.
fn json<DB: Columns + Reads<Option<Json<T>>>, T>(row: &DB::Row, column: &str) -> Result<T> {
    DB::json(row, column)?.ok_or_else(|| corrupt(column, "NULL"))
}

/// The row's `app_id` and `tenant_id`.
pub(crate) fn tenant<DB: Columns>(row: &DB::Row) -> Result<Tenant> {
    Ok(Tenant::new(DB::text(row, "app_id")?, DB::text(row, "tenant_id")?))
}

/// A key row with its hash.
pub(crate) fn stored_key<DB: Columns>(row: &DB::Row) -> Result<StoredKey> {
    Ok(StoredKey { hash: parse_hash(&DB::text(row, "hash")?)?, key: Arc::new(key::<DB>(row)?) })
}

/// A key row (the key columns, its scopes and its lineage's credits).
pub(crate) fn key<DB: Columns>(row: &DB::Row) -> Result<Key> {
    let id = DB::uuid(row, "id")?;
    Ok(Key {
        id: KeyId::from_uuid(id),
        // Nullable only in SQLite, which cannot add a `NOT NULL` column; the
        // migration fills it in every row.
        lineage_id: KeyId::from_uuid(DB::opt_uuid(row, "lineage_id")?.unwrap_or(id)),
        name: DB::text(row, "name")?,
        hint: DB::text(row, "hint")?,
        prefix: DB::text(row, "prefix")?,
        environment: parse_column("key environment", &DB::text(row, "environment")?)?,
        state: parse_column("key state", &DB::text(row, "state")?)?,
        scopes: DB::scopes(row, "scopes")?,
        tenant: tenant::<DB>(row)?,
        owner_id: DB::opt_text(row, "owner_id")?,
        credits: credits::<DB>(row)?,
        policy_id: DB::opt_uuid(row, "policy_id")?.map(PolicyId::from_uuid),
        expires_at: DB::opt_at(row, "expires_at")?,
        grace_expires_at: DB::opt_at(row, "grace_expires_at")?,
        revoked_reason: DB::opt_text(row, "revoked_reason")?,
        last_used_at: DB::opt_at(row, "last_used_at")?,
        created_at: DB::at(row, "created_at")?,
        updated_at: DB::at(row, "updated_at")?,
        metadata: json::<DB, _>(row, "metadata")?,
    })
}

/// The `credits_*` columns of `row`: `None` for a lineage (or owner) without credits.
pub(crate) fn credits<DB: Columns>(row: &DB::Row) -> Result<Option<Credits>> {
    let Some(remaining) = DB::opt_big(row, "credits_remaining")? else {
        return Ok(None);
    };
    let amount = DB::opt_big(row, "credits_refill_amount")?;
    let every = DB::opt_text(row, "credits_refill_every")?;
    let refill = match (amount, every) {
        (Some(amount), Some(every)) => Some(Refill {
            amount: to_u64("credits refill amount", amount)?,
            every: parse_column("credits refill period", &every)?,
        }),
        _ => None,
    };
    Ok(Some(Credits {
        remaining: to_u64("credits remaining", remaining)?,
        refill,
        refilled_at: DB::opt_at(row, "credits_refilled_at")?,
    }))
}

/// A policy row.
pub(crate) fn policy<DB: Columns>(row: &DB::Row) -> Result<Policy> {
    Ok(Policy {
        id: PolicyId::from_uuid(DB::uuid(row, "id")?),
        tenant: tenant::<DB>(row)?,
        name: DB::text(row, "name")?,
        rate_limits: rate_limits_from(DB::json(row, "rate_limits")?)?,
        limit_by: parse_column("policy limit_by", &DB::text(row, "limit_by")?)?,
        allowed_ips: parse_list("policy allowed_ips", &DB::list(row, "allowed_ips")?)?,
        allowed_origins: DB::list(row, "allowed_origins")?,
        allowed_scopes: DB::list(row, "allowed_scopes")?,
        max_key_age: opt_micros::<DB>(row, "max_key_age_us")?,
        quota: DB::json(row, "quota")?,
        rotation_grace: opt_micros::<DB>(row, "rotation_grace_us")?,
        max_active_keys_per_owner: DB::opt_big(row, "max_active_keys_per_owner")?
            .map(|n| u32::try_from(n).map_err(|e| corrupt("policy max_active_keys_per_owner", e)))
            .transpose()?,
        metadata: json::<DB, _>(row, "metadata")?,
        created_at: DB::at(row, "created_at")?,
        updated_at: DB::at(row, "updated_at")?,
    })
}

/// A usage record row.
pub(crate) fn usage<DB: Columns>(row: &DB::Row) -> Result<UsageRecord> {
    Ok(UsageRecord {
        id: UsageId::from_uuid(DB::uuid(row, "id")?),
        key_id: KeyId::from_uuid(DB::uuid(row, "key_id")?),
        tenant: tenant::<DB>(row)?.into(),
        endpoint: DB::text(row, "endpoint")?.into(),
        method: DB::text(row, "method")?.into(),
        status: u16::try_from(DB::int(row, "status")?).map_err(|e| corrupt("usage status", e))?,
        ip: DB::opt_text(row, "ip")?.map(|ip| parse_column("usage ip", &ip)).transpose()?,
        user_agent: DB::opt_text(row, "user_agent")?.map(Into::into),
        latency: micros::<DB>(row, "latency_us")?,
        timestamp: DB::at(row, "occurred_at")?,
    })
}

/// A rotation record row.
pub(crate) fn rotation<DB: Columns>(row: &DB::Row) -> Result<RotationRecord> {
    Ok(RotationRecord {
        id: RotationId::from_uuid(DB::uuid(row, "id")?),
        key_id: KeyId::from_uuid(DB::uuid(row, "key_id")?),
        new_key_id: KeyId::from_uuid(DB::uuid(row, "new_key_id")?),
        tenant: tenant::<DB>(row)?,
        old_hash: parse_hash(&DB::text(row, "old_hash")?)?,
        new_hash: parse_hash(&DB::text(row, "new_hash")?)?,
        reason: parse_column("rotation reason", &DB::text(row, "reason")?)?,
        grace_ttl: micros::<DB>(row, "grace_ttl_us")?,
        grace_expires_at: DB::at(row, "grace_expires_at")?,
        created_at: DB::at(row, "created_at")?,
    })
}

/// The counts of a roll-up row ([`COUNT_COLUMNS`](crate::usage::COUNT_COLUMNS)).
pub(crate) fn usage_counts<DB: Columns>(row: &DB::Row) -> Result<keysmith_core::usage::UsageCounts> {
    let mut values = [0u64; 15];
    for (value, column) in values.iter_mut().zip(crate::usage::COUNT_COLUMNS) {
        *value = to_u64(column, DB::big(row, column)?)?;
    }
    Ok(crate::usage::counts_of(values))
}
