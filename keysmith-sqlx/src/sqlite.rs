//! SQLite: [`SqliteStore`] and its migrations.
//!
//! Every state change is one conditional `UPDATE … WHERE state IN (…)`;
//! multi-row writes (a key with its scopes, a rotation, a usage batch with
//! its aggregates) are one `BEGIN IMMEDIATE` transaction, so they take the
//! write lock up front and never fail half-way on a busy database.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::store::{
    KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, StoredKey, TimeRange, Transition,
    UsageStore, UsageTotal,
};
use keysmith_core::{
    Error, Key, KeyHash, KeyId, KeyState, Period, Policy, PolicyId, Quota, Result, RotationId, RotationRecord, Scope,
    ScopeId, Store, Tenant, UsageAggregate, UsageId, UsageRecord,
};
use serde_json::{Map, Value};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use crate::common::{
    Missed, PolicyColumns, TRANSITION_ATTEMPTS, corrupt, duration_to_micros, is_foreign_key_violation,
    key_insert_error, limit_offset, micros_to_duration, missed_transition, named_write_error, parse_column, parse_hash,
    parse_list, rate_limit_from, state_names, store_error, to_u64,
};

/// The SQLite schema, embedded (`migrations/sqlite`).
///
/// [`Store::migrate`] runs it and tolerates the application's own sqlx
/// migrations in the same `_sqlx_migrations` history. Running
/// `MIGRATOR.run(&pool)` yourself works on a database whose history holds
/// only Keysmith's versions (sqlx refuses versions it does not know of,
/// unless a migrator is told to ignore them).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Usage rows per `INSERT`: 11 values each stays far below SQLite's limit
/// of 32 766 bound variables (3.32 and later).
const USAGE_ROWS_PER_STATEMENT: usize = 1000;

/// Aggregate rows per upsert (7 values each).
const AGGREGATE_ROWS_PER_STATEMENT: usize = 1000;

/// A store in SQLite (3.35 or later; the bundled one by default).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, Store};
/// use keysmith_sqlx::SqliteStore;
///
/// let dir = std::env::temp_dir().join(format!("keysmith-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let url = format!("sqlite://{}", dir.join("keys.db").display());
///
/// let store = SqliteStore::connect(&url).await?; // creates the file
/// store.migrate().await?;
/// store.migrate().await?; // safe on every start
/// let engine = Engine::builder(Arc::new(store)).build()?;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `url` (`sqlite://path/to/file.db`, or
    /// `sqlite::memory:`), creating the file if it is missing, in WAL mode
    /// with foreign keys enforced and a 5-second busy timeout. An in-memory
    /// database lives in one connection that the pool never closes.
    /// Does not migrate.
    ///
    /// # Errors
    /// [`Error::Store`] if the URL is invalid or the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(store_error)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal))
                .await
        }
        .map_err(store_error)?;
        Ok(Self::new(pool))
    }

    /// A store on an existing pool (its settings are yours; keep foreign
    /// keys on).
    #[must_use]
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for health checks or the application's own queries.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)
    }
}

impl From<SqlitePool> for SqliteStore {
    fn from(pool: SqlitePool) -> Self {
        Self::new(pool)
    }
}

/// A time as stored: microseconds since the Unix epoch, UTC.
fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn time(what: &str, micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(what, "time out of range"))
}

fn opt_time(what: &str, micros: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    micros.map(|us| time(what, us)).transpose()
}

/// The key columns, with the key's scopes in order. SQLite has no alias in
/// `UPDATE`, so the table is named in full everywhere.
macro_rules! key_columns {
    () => {
        "keysmith_keys.id, keysmith_keys.lineage_id, keysmith_keys.app_id, keysmith_keys.tenant_id, keysmith_keys.hash, keysmith_keys.name, \
         keysmith_keys.hint, keysmith_keys.prefix, keysmith_keys.environment, keysmith_keys.state, \
         keysmith_keys.policy_id, keysmith_keys.expires_at, keysmith_keys.grace_expires_at, \
         keysmith_keys.revoked_reason, keysmith_keys.last_used_at, keysmith_keys.created_at, \
         keysmith_keys.updated_at, keysmith_keys.metadata, \
         (SELECT json_group_array(scope) FROM (SELECT s.scope FROM keysmith_key_scopes s \
             WHERE s.key_id = keysmith_keys.id ORDER BY s.position)) AS scopes"
    };
}

/// The columns of `keysmith_policies`.
macro_rules! policy_columns {
    () => {
        "id, app_id, tenant_id, name, rate_limit_requests, rate_limit_window_us, rate_limit_burst, allowed_ips, \
         allowed_origins, allowed_scopes, max_key_age_us, quota, rotation_grace_us, metadata, created_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    /// Nullable only because SQLite cannot add a `NOT NULL` column; the
    /// migration fills it in every row.
    lineage_id: Option<Uuid>,
    app_id: String,
    tenant_id: String,
    hash: String,
    name: String,
    hint: String,
    prefix: String,
    environment: String,
    state: String,
    policy_id: Option<Uuid>,
    expires_at: Option<i64>,
    grace_expires_at: Option<i64>,
    revoked_reason: Option<String>,
    last_used_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    metadata: Json<Map<String, Value>>,
    scopes: Json<Vec<String>>,
}

impl KeyRow {
    fn into_stored(self) -> Result<StoredKey> {
        let hash = parse_hash(&self.hash)?;
        Ok(StoredKey { key: Arc::new(self.into_key()?), hash })
    }

    fn into_key(self) -> Result<Key> {
        Ok(Key {
            id: KeyId::from_uuid(self.id),
            lineage_id: KeyId::from_uuid(self.lineage_id.unwrap_or(self.id)),
            name: self.name,
            hint: self.hint,
            prefix: self.prefix,
            environment: parse_column("key environment", &self.environment)?,
            state: parse_column("key state", &self.state)?,
            scopes: self.scopes.0,
            tenant: Tenant::new(self.app_id, self.tenant_id),
            policy_id: self.policy_id.map(PolicyId::from_uuid),
            expires_at: opt_time("key expires_at", self.expires_at)?,
            grace_expires_at: opt_time("key grace_expires_at", self.grace_expires_at)?,
            revoked_reason: self.revoked_reason,
            last_used_at: opt_time("key last_used_at", self.last_used_at)?,
            created_at: time("key created_at", self.created_at)?,
            updated_at: time("key updated_at", self.updated_at)?,
            metadata: self.metadata.0,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    app_id: String,
    tenant_id: String,
    name: String,
    rate_limit_requests: Option<i64>,
    rate_limit_window_us: Option<i64>,
    rate_limit_burst: Option<i64>,
    allowed_ips: Json<Vec<String>>,
    allowed_origins: Json<Vec<String>>,
    allowed_scopes: Json<Vec<String>>,
    max_key_age_us: Option<i64>,
    quota: Option<Json<Quota>>,
    rotation_grace_us: Option<i64>,
    metadata: Json<Map<String, Value>>,
    created_at: i64,
    updated_at: i64,
}

impl PolicyRow {
    fn into_policy(self) -> Result<Policy> {
        Ok(Policy {
            id: PolicyId::from_uuid(self.id),
            tenant: Tenant::new(self.app_id, self.tenant_id),
            name: self.name,
            rate_limit: rate_limit_from(self.rate_limit_requests, self.rate_limit_window_us, self.rate_limit_burst)?,
            allowed_ips: parse_list("policy allowed_ips", &self.allowed_ips.0)?,
            allowed_origins: self.allowed_origins.0,
            allowed_scopes: self.allowed_scopes.0,
            max_key_age: self.max_key_age_us.map(|us| micros_to_duration("policy max_key_age", us)).transpose()?,
            quota: self.quota.map(|q| q.0),
            rotation_grace: self
                .rotation_grace_us
                .map(|us| micros_to_duration("policy rotation_grace", us))
                .transpose()?,
            metadata: self.metadata.0,
            created_at: time("policy created_at", self.created_at)?,
            updated_at: time("policy updated_at", self.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    id: Uuid,
    key_id: Uuid,
    app_id: String,
    tenant_id: String,
    endpoint: String,
    method: String,
    status: i64,
    ip: Option<String>,
    user_agent: Option<String>,
    latency_us: i64,
    occurred_at: i64,
}

impl UsageRow {
    fn into_record(self) -> Result<UsageRecord> {
        Ok(UsageRecord {
            id: UsageId::from_uuid(self.id),
            key_id: KeyId::from_uuid(self.key_id),
            tenant: Tenant::new(self.app_id, self.tenant_id),
            endpoint: self.endpoint,
            method: self.method,
            status: u16::try_from(self.status).map_err(|e| corrupt("usage status", e))?,
            ip: self.ip.as_deref().map(|ip| parse_column("usage ip", ip)).transpose()?,
            user_agent: self.user_agent,
            latency: micros_to_duration("usage latency", self.latency_us)?,
            timestamp: time("usage time", self.occurred_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RotationRow {
    id: Uuid,
    key_id: Uuid,
    new_key_id: Uuid,
    app_id: String,
    tenant_id: String,
    old_hash: String,
    new_hash: String,
    reason: String,
    grace_ttl_us: i64,
    grace_expires_at: i64,
    created_at: i64,
}

impl RotationRow {
    fn into_record(self) -> Result<RotationRecord> {
        Ok(RotationRecord {
            id: RotationId::from_uuid(self.id),
            key_id: KeyId::from_uuid(self.key_id),
            new_key_id: KeyId::from_uuid(self.new_key_id),
            tenant: Tenant::new(self.app_id, self.tenant_id),
            old_hash: parse_hash(&self.old_hash)?,
            new_hash: parse_hash(&self.new_hash)?,
            reason: parse_column("rotation reason", &self.reason)?,
            grace_ttl: micros_to_duration("rotation grace_ttl", self.grace_ttl_us)?,
            grace_expires_at: time("rotation grace_expires_at", self.grace_expires_at)?,
            created_at: time("rotation created_at", self.created_at)?,
        })
    }
}

/// Inserts a key and its scopes on `conn` (inside the caller's transaction).
async fn insert_key_on(conn: &mut SqliteConnection, stored: &StoredKey) -> Result<()> {
    let key = &*stored.key;
    // The policy must be the tenant's: checked in the statement itself.
    let inserted = sqlx::query(
        "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, state, policy_id, \
         expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, updated_at, metadata, lineage_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
         WHERE $10 IS NULL OR EXISTS (SELECT 1 FROM keysmith_policies p \
             WHERE p.id = $10 AND p.app_id = $2 AND p.tenant_id = $3)",
    )
    .bind(key.id.uuid())
    .bind(&key.tenant.app_id)
    .bind(&key.tenant.tenant_id)
    .bind(stored.hash.to_hex())
    .bind(&key.name)
    .bind(&key.hint)
    .bind(&key.prefix)
    .bind(key.environment.as_str())
    .bind(key.state.as_str())
    .bind(key.policy_id.map(|id| id.uuid()))
    .bind(key.expires_at.map(micros))
    .bind(key.grace_expires_at.map(micros))
    .bind(&key.revoked_reason)
    .bind(key.last_used_at.map(micros))
    .bind(micros(key.created_at))
    .bind(micros(key.updated_at))
    .bind(Json(&key.metadata))
    .bind(key.lineage_id.uuid())
    .execute(&mut *conn)
    .await
    .map_err(|e| key_insert_error(e, key.id, key.policy_id))?;

    if inserted.rows_affected() == 0 {
        // No row: the policy is not the tenant's, unless the key is taken
        // anyway (reported first, like every store does).
        let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keysmith_keys WHERE id = $1 OR hash = $2)")
            .bind(key.id.uuid())
            .bind(stored.hash.to_hex())
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        return Err(if taken {
            Error::AlreadyExists { entity: "key", name: key.id.to_string() }
        } else {
            Error::NotFound { entity: "policy", id: key.policy_id.map(|id| id.to_string()).unwrap_or_default() }
        });
    }
    insert_scopes_on(conn, key.id, &key.scopes).await
}

async fn insert_scopes_on(conn: &mut SqliteConnection, id: KeyId, scopes: &[String]) -> Result<()> {
    if scopes.is_empty() {
        return Ok(());
    }
    // One statement whatever the number of scopes: the list goes in as JSON.
    sqlx::query(
        "INSERT INTO keysmith_key_scopes (key_id, position, scope) SELECT $1, j.key, j.value FROM json_each($2) j",
    )
    .bind(id.uuid())
    .bind(Json(scopes))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn key_state_on(conn: &mut SqliteConnection, tenant: &Tenant, id: KeyId) -> Result<Option<KeyState>> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM keysmith_keys WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
            .bind(id.uuid())
            .bind(&tenant.app_id)
            .bind(&tenant.tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
    state.as_deref().map(|s| parse_column("key state", s)).transpose()
}

fn push_range(qb: &mut QueryBuilder<'_, Sqlite>, column: &str, range: TimeRange) {
    if let Some(from) = range.from {
        qb.push(format_args!(" AND {column} >= ")).push_bind(micros(from));
    }
    if let Some(to) = range.to {
        qb.push(format_args!(" AND {column} < ")).push_bind(micros(to));
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        let row: Option<KeyRow> =
            sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM keysmith_keys WHERE hash = $1"))
                .bind(hash.to_hex())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        row.map(KeyRow::into_stored).transpose()
    }

    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keysmith_keys WHERE keysmith_keys.id = $1 AND app_id = $2 AND tenant_id = $3"
        ))
        .bind(id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.map(KeyRow::into_stored).transpose()
    }

    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        let mut qb = QueryBuilder::new(concat!("SELECT ", key_columns!(), " FROM keysmith_keys WHERE app_id = "));
        qb.push_bind(&tenant.app_id).push(" AND tenant_id = ").push_bind(&tenant.tenant_id);
        if let Some(state) = filter.state {
            qb.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(environment) = filter.environment {
            qb.push(" AND environment = ").push_bind(environment.as_str());
        }
        if let Some(policy_id) = filter.policy_id {
            qb.push(" AND policy_id = ").push_bind(policy_id.uuid());
        }
        let (limit, offset) = limit_offset(filter.page);
        qb.push(" ORDER BY keysmith_keys.id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows: Vec<KeyRow> = qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        let from = serde_json::to_string(&state_names(transition.from)).map_err(Error::store)?;
        for _ in 0..TRANSITION_ATTEMPTS {
            let row: Option<KeyRow> = sqlx::query_as(concat!(
                "UPDATE keysmith_keys SET state = $5, updated_at = $6, \
                 revoked_reason = CASE WHEN $5 = 'revoked' THEN $7 ELSE revoked_reason END \
                 WHERE keysmith_keys.id = $1 AND app_id = $2 AND tenant_id = $3 \
                     AND state IN (SELECT value FROM json_each($4)) \
                 RETURNING ",
                key_columns!()
            ))
            .bind(id.uuid())
            .bind(&tenant.app_id)
            .bind(&tenant.tenant_id)
            .bind(&from)
            .bind(transition.to.as_str())
            .bind(micros(transition.at))
            .bind(&transition.reason)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
            if let Some(row) = row {
                return row.into_key();
            }
            let mut conn = self.pool.acquire().await.map_err(store_error)?;
            let current = key_state_on(&mut conn, tenant, id).await?;
            match missed_transition(id, current, transition.from, transition.to) {
                Missed::Retry => {}
                Missed::Fail(error) => return Err(error),
            }
        }
        Err(Error::store(format!("key {id} kept changing state during a transition")))
    }

    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        let record = &rotation.record;
        // The write lock is taken by BEGIN IMMEDIATE, so the state read after
        // a missed compare-and-set is the state that made it miss.
        let mut tx = self.begin().await?;
        let old: Option<KeyRow> = sqlx::query_as(concat!(
            "UPDATE keysmith_keys SET state = 'rotated', grace_expires_at = $4, updated_at = $5 \
             WHERE keysmith_keys.id = $1 AND app_id = $2 AND tenant_id = $3 AND state = 'active' \
             RETURNING ",
            key_columns!()
        ))
        .bind(record.key_id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .bind(micros(record.grace_expires_at))
        .bind(micros(record.created_at))
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(old) = old else {
            let current = key_state_on(&mut tx, tenant, record.key_id).await?;
            return Err(match missed_transition(record.key_id, current, &[KeyState::Active], KeyState::Rotated) {
                Missed::Fail(error) => error,
                Missed::Retry => Error::store("the rotated key is active yet its update matched no row"),
            });
        };
        if rotation.new_key.key.tenant != *tenant || record.tenant != *tenant {
            return Err(Error::InvalidInput { field: "tenant", reason: "a rotation stays within one tenant".into() });
        }
        insert_key_on(&mut tx, &rotation.new_key).await?;
        sqlx::query(
            "INSERT INTO keysmith_rotations (id, key_id, new_key_id, app_id, tenant_id, old_hash, new_hash, \
             reason, grace_ttl_us, grace_expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(record.id.uuid())
        .bind(record.key_id.uuid())
        .bind(record.new_key_id.uuid())
        .bind(&record.tenant.app_id)
        .bind(&record.tenant.tenant_id)
        .bind(record.old_hash.to_hex())
        .bind(record.new_hash.to_hex())
        .bind(record.reason.as_str())
        .bind(duration_to_micros("grace", record.grace_ttl)?)
        .bind(micros(record.grace_expires_at))
        .bind(micros(record.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                Error::NotFound { entity: "key", id: record.new_key_id.to_string() }
            } else {
                named_write_error(e, "rotation", &record.id.to_string())
            }
        })?;
        tx.commit().await.map_err(store_error)?;
        old.into_key()
    }

    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        let mut tx = self.begin().await?;
        let updated =
            sqlx::query("UPDATE keysmith_keys SET updated_at = $4 WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
                .bind(id.uuid())
                .bind(&tenant.app_id)
                .bind(&tenant.tenant_id)
                .bind(micros(at))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "key", id: id.to_string() });
        }
        sqlx::query("DELETE FROM keysmith_key_scopes WHERE key_id = $1")
            .bind(id.uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_scopes_on(&mut tx, id, scopes).await?;
        let row: KeyRow =
            sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM keysmith_keys WHERE keysmith_keys.id = $1"))
                .bind(id.uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        row.into_key()
    }

    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE keysmith_keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id.uuid())
        .bind(micros(at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keysmith_keys LEFT JOIN keysmith_policies p ON p.id = keysmith_keys.policy_id \
             WHERE (keysmith_keys.state = 'active' AND (keysmith_keys.expires_at <= $1 \
                 OR (p.max_key_age_us IS NOT NULL AND $1 - keysmith_keys.created_at >= p.max_key_age_us))) \
                OR (keysmith_keys.state = 'rotated' AND keysmith_keys.grace_expires_at <= $1) \
             ORDER BY keysmith_keys.id LIMIT $2"
        ))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(KeyRow::into_key).collect()
    }
}

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        let c = PolicyColumns::of(policy)?;
        sqlx::query(
            "INSERT INTO keysmith_policies (id, app_id, tenant_id, name, rate_limit_requests, rate_limit_window_us, \
             rate_limit_burst, allowed_ips, allowed_origins, allowed_scopes, max_key_age_us, quota, \
             rotation_grace_us, metadata, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(policy.id.uuid())
        .bind(&policy.tenant.app_id)
        .bind(&policy.tenant.tenant_id)
        .bind(&policy.name)
        .bind(c.rate_limit_requests)
        .bind(c.rate_limit_window_us)
        .bind(c.rate_limit_burst)
        .bind(Json(&c.allowed_ips))
        .bind(Json(&policy.allowed_origins))
        .bind(Json(&policy.allowed_scopes))
        .bind(c.max_key_age_us)
        .bind(policy.quota.as_ref().map(Json))
        .bind(c.rotation_grace_us)
        .bind(Json(&policy.metadata))
        .bind(micros(policy.created_at))
        .bind(micros(policy.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|e| named_write_error(e, "policy", &policy.name))?;
        Ok(())
    }

    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM keysmith_policies WHERE id = $1 AND app_id = $2 AND tenant_id = $3"
        ))
        .bind(id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(row.map(PolicyRow::into_policy).transpose()?.map(Arc::new))
    }

    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        let (limit, offset) = limit_offset(page);
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM keysmith_policies WHERE app_id = $1 AND tenant_id = $2 ORDER BY id LIMIT $3 OFFSET $4"
        ))
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(PolicyRow::into_policy).collect()
    }

    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        let c = PolicyColumns::of(policy)?;
        let updated = sqlx::query(
            "UPDATE keysmith_policies SET name = $4, rate_limit_requests = $5, rate_limit_window_us = $6, \
             rate_limit_burst = $7, allowed_ips = $8, allowed_origins = $9, allowed_scopes = $10, \
             max_key_age_us = $11, quota = $12, rotation_grace_us = $13, metadata = $14, created_at = $15, \
             updated_at = $16 \
             WHERE id = $1 AND app_id = $2 AND tenant_id = $3",
        )
        .bind(policy.id.uuid())
        .bind(&policy.tenant.app_id)
        .bind(&policy.tenant.tenant_id)
        .bind(&policy.name)
        .bind(c.rate_limit_requests)
        .bind(c.rate_limit_window_us)
        .bind(c.rate_limit_burst)
        .bind(Json(&c.allowed_ips))
        .bind(Json(&policy.allowed_origins))
        .bind(Json(&policy.allowed_scopes))
        .bind(c.max_key_age_us)
        .bind(policy.quota.as_ref().map(Json))
        .bind(c.rotation_grace_us)
        .bind(Json(&policy.metadata))
        .bind(micros(policy.created_at))
        .bind(micros(policy.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|e| named_write_error(e, "policy", &policy.name))?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "policy", id: policy.id.to_string() });
        }
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        // One statement holds SQLite's write lock throughout, so the check
        // and the delete are atomic.
        let deleted = sqlx::query(
            "DELETE FROM keysmith_policies WHERE id = $1 AND app_id = $2 AND tenant_id = $3 \
             AND NOT EXISTS (SELECT 1 FROM keysmith_keys \
                 WHERE policy_id = $1 AND state NOT IN ('expired', 'revoked'))",
        )
        .bind(id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        if deleted.rows_affected() == 1 {
            return Ok(());
        }
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM keysmith_policies WHERE id = $1 AND app_id = $2 AND tenant_id = $3)",
        )
        .bind(id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Err(if exists {
            Error::PolicyInUse { policy_id: id }
        } else {
            Error::NotFound { entity: "policy", id: id.to_string() }
        })
    }
}

#[async_trait]
impl ScopeStore for SqliteStore {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        sqlx::query(
            "INSERT INTO keysmith_scopes (id, app_id, tenant_id, name, description, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(scope.id.uuid())
        .bind(&scope.tenant.app_id)
        .bind(&scope.tenant.tenant_id)
        .bind(&scope.name)
        .bind(&scope.description)
        .bind(micros(scope.created_at))
        .execute(&self.pool)
        .await
        .map_err(|e| named_write_error(e, "scope", &scope.name))?;
        Ok(())
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        let rows: Vec<(Uuid, String, String, i64)> = sqlx::query_as(
            "SELECT id, name, description, created_at FROM keysmith_scopes \
             WHERE app_id = $1 AND tenant_id = $2 ORDER BY name",
        )
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter()
            .map(|(id, name, description, created_at)| {
                Ok(Scope {
                    id: ScopeId::from_uuid(id),
                    tenant: tenant.clone(),
                    name,
                    description,
                    created_at: time("scope created_at", created_at)?,
                })
            })
            .collect()
    }

    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM keysmith_scopes WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
            .bind(id.uuid())
            .bind(&tenant.app_id)
            .bind(&tenant.tenant_id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "scope", id: id.to_string() });
        }
        Ok(())
    }
}

/// One aggregate row's increment.
struct AggregateDelta<'a> {
    tenant: &'a Tenant,
    requests: i64,
    errors: i64,
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // Records go in by id: a replayed batch inserts nothing, and only the
        // rows actually inserted are added to the aggregates.
        let mut inserted: HashSet<Uuid> = HashSet::with_capacity(records.len());
        for chunk in records.chunks(USAGE_ROWS_PER_STATEMENT) {
            let mut rows = Vec::with_capacity(chunk.len());
            for r in chunk {
                rows.push((r, duration_to_micros("latency", r.latency)?));
            }
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, \
                 user_agent, latency_us, occurred_at) ",
            );
            qb.push_values(rows, |mut b, (r, latency_us)| {
                b.push_bind(r.id.uuid())
                    .push_bind(r.key_id.uuid())
                    .push_bind(&r.tenant.app_id)
                    .push_bind(&r.tenant.tenant_id)
                    .push_bind(&r.endpoint)
                    .push_bind(&r.method)
                    .push_bind(i64::from(r.status))
                    .push_bind(r.ip.map(|ip| ip.to_string()))
                    .push_bind(&r.user_agent)
                    .push_bind(latency_us)
                    .push_bind(micros(r.timestamp));
            });
            qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
            let ids: Vec<Uuid> = qb.build_query_scalar().fetch_all(&mut *tx).await.map_err(|e| {
                if is_foreign_key_violation(&e) {
                    Error::NotFound { entity: "key", id: "a key of the usage batch".to_owned() }
                } else {
                    store_error(e)
                }
            })?;
            inserted.extend(ids);
        }

        let mut deltas: HashMap<(Uuid, Period, i64), AggregateDelta<'_>> = HashMap::new();
        for r in records {
            // `remove` counts a record id repeated inside the batch once.
            if !inserted.remove(&r.id.uuid()) {
                continue;
            }
            for period in [Period::Day, Period::Month] {
                let start = micros(period.start_of(r.timestamp));
                let delta = deltas.entry((r.key_id.uuid(), period, start)).or_insert(AggregateDelta {
                    tenant: &r.tenant,
                    requests: 0,
                    errors: 0,
                });
                delta.requests += 1;
                delta.errors += i64::from(r.is_error());
            }
        }
        let deltas: Vec<_> = deltas.into_iter().collect();
        for chunk in deltas.chunks(AGGREGATE_ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, requests, errors) ",
            );
            qb.push_values(chunk, |mut b, ((key_id, period, start), delta)| {
                b.push_bind(*key_id)
                    .push_bind(period.as_str())
                    .push_bind(*start)
                    .push_bind(&delta.tenant.app_id)
                    .push_bind(&delta.tenant.tenant_id)
                    .push_bind(delta.requests)
                    .push_bind(delta.errors);
            });
            qb.push(
                " ON CONFLICT (key_id, period, period_start) DO UPDATE \
                 SET requests = keysmith_usage_agg.requests + excluded.requests, \
                     errors = keysmith_usage_agg.errors + excluded.errors",
            );
            qb.build().execute(&mut *tx).await.map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, \
             occurred_at FROM keysmith_usage WHERE key_id = ",
        );
        qb.push_bind(key_id.uuid());
        qb.push(" AND app_id = ").push_bind(&tenant.app_id).push(" AND tenant_id = ").push_bind(&tenant.tenant_id);
        push_range(&mut qb, "occurred_at", range);
        let (limit, offset) = limit_offset(page);
        qb.push(" ORDER BY occurred_at, id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows: Vec<UsageRow> = qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter().map(UsageRow::into_record).collect()
    }

    async fn usage_aggregates(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT app_id, tenant_id, period_start, requests, errors FROM keysmith_usage_agg WHERE key_id = ",
        );
        qb.push_bind(key_id.uuid());
        qb.push(" AND app_id = ").push_bind(&tenant.app_id).push(" AND tenant_id = ").push_bind(&tenant.tenant_id);
        qb.push(" AND period = ").push_bind(period.as_str());
        push_range(&mut qb, "period_start", range);
        qb.push(" ORDER BY period_start");
        let rows: Vec<(String, String, i64, i64, i64)> =
            qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter()
            .map(|(app_id, tenant_id, period_start, requests, errors)| {
                Ok(UsageAggregate {
                    key_id,
                    tenant: Tenant::new(app_id, tenant_id),
                    period,
                    period_start: time("usage period_start", period_start)?,
                    requests: to_u64("usage requests", requests)?,
                    errors: to_u64("usage errors", errors)?,
                })
            })
            .collect()
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT period_start, SUM(requests), SUM(errors) FROM keysmith_usage_agg WHERE app_id = ",
        );
        qb.push_bind(&tenant.app_id).push(" AND tenant_id = ").push_bind(&tenant.tenant_id);
        qb.push(" AND period = ").push_bind(period.as_str());
        push_range(&mut qb, "period_start", range);
        qb.push(" GROUP BY period_start ORDER BY period_start");
        self.fetch_totals(qb, period).await
    }

    async fn lineage_usage(
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT a.period_start, SUM(a.requests), SUM(a.errors) FROM keysmith_usage_agg a \
             JOIN keysmith_keys k ON k.id = a.key_id WHERE k.lineage_id = ",
        );
        qb.push_bind(lineage.uuid());
        qb.push(" AND a.app_id = ").push_bind(&tenant.app_id).push(" AND a.tenant_id = ").push_bind(&tenant.tenant_id);
        qb.push(" AND a.period = ").push_bind(period.as_str());
        push_range(&mut qb, "a.period_start", range);
        qb.push(" GROUP BY a.period_start ORDER BY a.period_start");
        self.fetch_totals(qb, period).await
    }
}

impl SqliteStore {
    /// Runs a `SELECT period_start, requests, errors` query of `period` totals.
    async fn fetch_totals(&self, mut qb: QueryBuilder<'_, Sqlite>, period: Period) -> Result<Vec<UsageTotal>> {
        let rows: Vec<(i64, i64, i64)> = qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter()
            .map(|(period_start, requests, errors)| {
                Ok(UsageTotal {
                    period,
                    period_start: time("usage period_start", period_start)?,
                    requests: to_u64("usage requests", requests)?,
                    errors: to_u64("usage errors", errors)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl RotationStore for SqliteStore {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        let rows: Vec<RotationRow> = sqlx::query_as(
            "SELECT id, key_id, new_key_id, app_id, tenant_id, old_hash, new_hash, reason, grace_ttl_us, \
             grace_expires_at, created_at FROM keysmith_rotations \
             WHERE app_id = $1 AND tenant_id = $2 AND (key_id = $3 OR new_key_id = $3) ORDER BY id",
        )
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .bind(key_id.uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(RotationRow::into_record).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        // The application's own migrations may live in the same history table.
        let migrator = Migrator { migrations: MIGRATOR.migrations.clone(), ignore_missing: true, ..Migrator::DEFAULT };
        migrator.run(&self.pool).await.map_err(Error::store)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(store_error)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
