//! PostgreSQL: [`PgStore`] and its migrations.
//!
//! Every state change is one conditional `UPDATE … WHERE state = ANY(…)`;
//! multi-row writes (a key with its scopes, a rotation, a usage batch with
//! its aggregates) are one transaction or one statement.

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
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Connection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::common::{
    Missed, PolicyColumns, TRANSITION_ATTEMPTS, corrupt, duration_to_micros, is_foreign_key_violation,
    key_insert_error, limit_offset, micros_to_duration, missed_transition, named_write_error, parse_column, parse_hash,
    parse_list, rate_limit_from, state_names, store_error, to_u64,
};

/// The PostgreSQL schema, embedded (`migrations/postgres`).
///
/// [`Store::migrate`] runs it and tolerates the application's own sqlx
/// migrations in the same `_sqlx_migrations` history. Running
/// `MIGRATOR.run(&pool)` yourself works on a database whose history holds
/// only Keysmith's versions (sqlx refuses versions it does not know of,
/// unless a migrator is told to ignore them).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// A store in PostgreSQL (12 or later).
///
/// ```no_run
/// # async fn run() -> Result<(), keysmith_core::Error> {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, Store};
/// use keysmith_sqlx::PgStore;
///
/// let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// store.migrate().await?;
/// let engine = Engine::builder(Arc::new(store)).build()?;
/// # Ok(())
/// # }
/// ```
///
/// A lost connection surfaces as [`Error::Store`] (validation fails, it
/// never passes); the pool opens new connections when the server is back.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` with a pool of up to 10 connections that waits at
    /// most 5 seconds for a connection. Does not migrate.
    ///
    /// # Errors
    /// [`Error::Store`] if the URL is invalid or the server cannot be
    /// reached, saying why (connection refused, authentication failed, no
    /// such database…) rather than only that the pool timed out.
    pub async fn connect(url: &str) -> Result<Self> {
        const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
        let options: PgConnectOptions = url.parse().map_err(store_error)?;
        // One direct connection first: a pool retries a failing connection
        // until its timeout and then reports only the timeout.
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(connection)) => connection.close().await.map_err(store_error)?,
            Ok(Err(error)) => return Err(store_error(error)),
            Err(_) => {
                return Err(Error::store(format!(
                    "no answer from the PostgreSQL server within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(Self::new(pool))
    }

    /// A store on an existing pool (its settings are yours).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for health checks or the application's own queries.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The key columns, with the key's scopes in order, of `keysmith_keys k`.
macro_rules! key_columns {
    () => {
        "k.id, k.lineage_id, k.app_id, k.tenant_id, k.hash, k.name, k.hint, k.prefix, k.environment, k.state, k.policy_id, \
         k.expires_at, k.grace_expires_at, k.revoked_reason, k.last_used_at, k.created_at, k.updated_at, k.metadata, \
         ARRAY(SELECT s.scope FROM keysmith_key_scopes s WHERE s.key_id = k.id ORDER BY s.position) AS scopes"
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
    lineage_id: Uuid,
    app_id: String,
    tenant_id: String,
    hash: String,
    name: String,
    hint: String,
    prefix: String,
    environment: String,
    state: String,
    policy_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    grace_expires_at: Option<DateTime<Utc>>,
    revoked_reason: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    metadata: Json<Map<String, Value>>,
    scopes: Vec<String>,
}

impl KeyRow {
    fn into_stored(self) -> Result<StoredKey> {
        let hash = parse_hash(&self.hash)?;
        Ok(StoredKey { key: Arc::new(self.into_key()?), hash })
    }

    fn into_key(self) -> Result<Key> {
        Ok(Key {
            id: KeyId::from_uuid(self.id),
            lineage_id: KeyId::from_uuid(self.lineage_id),
            name: self.name,
            hint: self.hint,
            prefix: self.prefix,
            environment: parse_column("key environment", &self.environment)?,
            state: parse_column("key state", &self.state)?,
            scopes: self.scopes,
            tenant: Tenant::new(self.app_id, self.tenant_id),
            policy_id: self.policy_id.map(PolicyId::from_uuid),
            expires_at: self.expires_at,
            grace_expires_at: self.grace_expires_at,
            revoked_reason: self.revoked_reason,
            last_used_at: self.last_used_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
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
    allowed_ips: Vec<String>,
    allowed_origins: Vec<String>,
    allowed_scopes: Vec<String>,
    max_key_age_us: Option<i64>,
    quota: Option<Json<Quota>>,
    rotation_grace_us: Option<i64>,
    metadata: Json<Map<String, Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl PolicyRow {
    fn into_policy(self) -> Result<Policy> {
        Ok(Policy {
            id: PolicyId::from_uuid(self.id),
            tenant: Tenant::new(self.app_id, self.tenant_id),
            name: self.name,
            rate_limit: rate_limit_from(self.rate_limit_requests, self.rate_limit_window_us, self.rate_limit_burst)?,
            allowed_ips: parse_list("policy allowed_ips", &self.allowed_ips)?,
            allowed_origins: self.allowed_origins,
            allowed_scopes: self.allowed_scopes,
            max_key_age: self.max_key_age_us.map(|us| micros_to_duration("policy max_key_age", us)).transpose()?,
            quota: self.quota.map(|q| q.0),
            rotation_grace: self
                .rotation_grace_us
                .map(|us| micros_to_duration("policy rotation_grace", us))
                .transpose()?,
            metadata: self.metadata.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
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
    status: i32,
    ip: Option<String>,
    user_agent: Option<String>,
    latency_us: i64,
    occurred_at: DateTime<Utc>,
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
            timestamp: self.occurred_at,
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
    grace_expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
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
            grace_expires_at: self.grace_expires_at,
            created_at: self.created_at,
        })
    }
}

/// Inserts a key and its scopes on `conn` (inside the caller's transaction).
async fn insert_key_on(conn: &mut PgConnection, stored: &StoredKey) -> Result<()> {
    let key = &*stored.key;
    // The policy must be the tenant's: checked in the statement itself, and
    // the foreign key keeps the policy from vanishing before commit.
    let inserted = sqlx::query(
        "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, state, policy_id, \
         expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, updated_at, metadata, lineage_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 \
         WHERE $10::uuid IS NULL OR EXISTS (SELECT 1 FROM keysmith_policies p \
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
    .bind(key.expires_at)
    .bind(key.grace_expires_at)
    .bind(&key.revoked_reason)
    .bind(key.last_used_at)
    .bind(key.created_at)
    .bind(key.updated_at)
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

async fn insert_scopes_on(conn: &mut PgConnection, id: KeyId, scopes: &[String]) -> Result<()> {
    if scopes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO keysmith_key_scopes (key_id, position, scope) \
         SELECT $1, t.ord - 1, t.scope FROM UNNEST($2::text[]) WITH ORDINALITY AS t(scope, ord)",
    )
    .bind(id.uuid())
    .bind(scopes)
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn key_state_on(conn: &mut PgConnection, tenant: &Tenant, id: KeyId) -> Result<Option<KeyState>> {
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

fn push_range(qb: &mut QueryBuilder<'_, Postgres>, column: &str, range: TimeRange) {
    if let Some(from) = range.from {
        qb.push(format_args!(" AND {column} >= ")).push_bind(from);
    }
    if let Some(to) = range.to {
        qb.push(format_args!(" AND {column} < ")).push_bind(to);
    }
}

#[async_trait]
impl KeyStore for PgStore {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        insert_key_on(&mut tx, key).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        let row: Option<KeyRow> =
            sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM keysmith_keys k WHERE k.hash = $1"))
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
            " FROM keysmith_keys k WHERE k.id = $1 AND k.app_id = $2 AND k.tenant_id = $3"
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
        let mut qb = QueryBuilder::new(concat!("SELECT ", key_columns!(), " FROM keysmith_keys k WHERE k.app_id = "));
        qb.push_bind(&tenant.app_id).push(" AND k.tenant_id = ").push_bind(&tenant.tenant_id);
        if let Some(state) = filter.state {
            qb.push(" AND k.state = ").push_bind(state.as_str());
        }
        if let Some(environment) = filter.environment {
            qb.push(" AND k.environment = ").push_bind(environment.as_str());
        }
        if let Some(policy_id) = filter.policy_id {
            qb.push(" AND k.policy_id = ").push_bind(policy_id.uuid());
        }
        let (limit, offset) = limit_offset(filter.page);
        qb.push(" ORDER BY k.id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows: Vec<KeyRow> = qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        for _ in 0..TRANSITION_ATTEMPTS {
            let row: Option<KeyRow> = sqlx::query_as(concat!(
                "UPDATE keysmith_keys AS k SET state = $5, updated_at = $6, \
                 revoked_reason = CASE WHEN $5 = 'revoked' THEN $7 ELSE k.revoked_reason END \
                 WHERE k.id = $1 AND k.app_id = $2 AND k.tenant_id = $3 AND k.state = ANY($4) \
                 RETURNING ",
                key_columns!()
            ))
            .bind(id.uuid())
            .bind(&tenant.app_id)
            .bind(&tenant.tenant_id)
            .bind(state_names(transition.from))
            .bind(transition.to.as_str())
            .bind(transition.at)
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
        for _ in 0..TRANSITION_ATTEMPTS {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            let old: Option<KeyRow> = sqlx::query_as(concat!(
                "UPDATE keysmith_keys AS k SET state = 'rotated', grace_expires_at = $4, updated_at = $5 \
                 WHERE k.id = $1 AND k.app_id = $2 AND k.tenant_id = $3 AND k.state = 'active' \
                 RETURNING ",
                key_columns!()
            ))
            .bind(record.key_id.uuid())
            .bind(&tenant.app_id)
            .bind(&tenant.tenant_id)
            .bind(record.grace_expires_at)
            .bind(record.created_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            let Some(old) = old else {
                let current = key_state_on(&mut tx, tenant, record.key_id).await?;
                match missed_transition(record.key_id, current, &[KeyState::Active], KeyState::Rotated) {
                    Missed::Retry => continue,
                    Missed::Fail(error) => return Err(error),
                }
            };
            if rotation.new_key.key.tenant != *tenant || record.tenant != *tenant {
                return Err(Error::InvalidInput {
                    field: "tenant",
                    reason: "a rotation stays within one tenant".into(),
                });
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
            .bind(record.grace_expires_at)
            .bind(record.created_at)
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
            return old.into_key();
        }
        Err(Error::store(format!("key {} kept changing state during a rotation", record.key_id)))
    }

    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let updated =
            sqlx::query("UPDATE keysmith_keys SET updated_at = $4 WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
                .bind(id.uuid())
                .bind(&tenant.app_id)
                .bind(&tenant.tenant_id)
                .bind(at)
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
        let row: KeyRow = sqlx::query_as(concat!("SELECT ", key_columns!(), " FROM keysmith_keys k WHERE k.id = $1"))
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
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        // The age is compared in exact numeric seconds, so a huge maximum
        // age never overflows a timestamp (it is simply never reached).
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keysmith_keys k LEFT JOIN keysmith_policies p ON p.id = k.policy_id \
             WHERE (k.state = 'active' AND (k.expires_at <= $1 OR (p.max_key_age_us IS NOT NULL \
                 AND (EXTRACT(EPOCH FROM $1::timestamptz) - EXTRACT(EPOCH FROM k.created_at)) * 1000000 \
                     >= p.max_key_age_us))) \
                OR (k.state = 'rotated' AND k.grace_expires_at <= $1) \
             ORDER BY k.id LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(KeyRow::into_key).collect()
    }
}

#[async_trait]
impl PolicyStore for PgStore {
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
        .bind(&c.allowed_ips)
        .bind(&policy.allowed_origins)
        .bind(&policy.allowed_scopes)
        .bind(c.max_key_age_us)
        .bind(policy.quota.as_ref().map(Json))
        .bind(c.rotation_grace_us)
        .bind(Json(&policy.metadata))
        .bind(policy.created_at)
        .bind(policy.updated_at)
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
        .bind(&c.allowed_ips)
        .bind(&policy.allowed_origins)
        .bind(&policy.allowed_scopes)
        .bind(c.max_key_age_us)
        .bind(policy.quota.as_ref().map(Json))
        .bind(c.rotation_grace_us)
        .bind(Json(&policy.metadata))
        .bind(policy.created_at)
        .bind(policy.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| named_write_error(e, "policy", &policy.name))?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "policy", id: policy.id.to_string() });
        }
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Locking the row first makes the check atomic: a key insert that
        // names the policy holds a share lock on it until it commits (so it
        // is visible to the check below) or waits for this transaction (and
        // then fails on the foreign key).
        let found: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM keysmith_policies WHERE id = $1 AND app_id = $2 AND tenant_id = $3 FOR UPDATE",
        )
        .bind(id.uuid())
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if found.is_none() {
            return Err(Error::NotFound { entity: "policy", id: id.to_string() });
        }
        let in_use: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM keysmith_keys \
             WHERE policy_id = $1 AND state NOT IN ('expired', 'revoked'))",
        )
        .bind(id.uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        if in_use {
            return Err(Error::PolicyInUse { policy_id: id });
        }
        sqlx::query("DELETE FROM keysmith_policies WHERE id = $1")
            .bind(id.uuid())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl ScopeStore for PgStore {
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
        .bind(scope.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| named_write_error(e, "scope", &scope.name))?;
        Ok(())
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        let rows: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, name, description, created_at FROM keysmith_scopes \
             WHERE app_id = $1 AND tenant_id = $2 ORDER BY name COLLATE \"C\"",
        )
        .bind(&tenant.app_id)
        .bind(&tenant.tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, name, description, created_at)| Scope {
                id: ScopeId::from_uuid(id),
                tenant: tenant.clone(),
                name,
                description,
                created_at,
            })
            .collect())
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

/// Columns of a usage batch, one array per column, for `UNNEST`.
#[derive(Default)]
struct UsageColumns {
    id: Vec<Uuid>,
    key_id: Vec<Uuid>,
    app_id: Vec<String>,
    tenant_id: Vec<String>,
    endpoint: Vec<String>,
    method: Vec<String>,
    status: Vec<i32>,
    ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    latency_us: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl UsageColumns {
    fn of(records: &[UsageRecord]) -> Result<Self> {
        let mut c = Self::default();
        for r in records {
            c.id.push(r.id.uuid());
            c.key_id.push(r.key_id.uuid());
            c.app_id.push(r.tenant.app_id.clone());
            c.tenant_id.push(r.tenant.tenant_id.clone());
            c.endpoint.push(r.endpoint.clone());
            c.method.push(r.method.clone());
            c.status.push(i32::from(r.status));
            c.ip.push(r.ip.map(|ip| ip.to_string()));
            c.user_agent.push(r.user_agent.clone());
            c.latency_us.push(duration_to_micros("latency", r.latency)?);
            c.occurred_at.push(r.timestamp);
        }
        Ok(c)
    }
}

#[async_trait]
impl UsageStore for PgStore {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let c = UsageColumns::of(records)?;
        // One statement, so one atomic write: the records go in by id (a
        // replayed batch inserts nothing), and only the rows actually
        // inserted are added to the day and month aggregates.
        sqlx::query(
            "WITH input AS ( \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int4[], $8::text[], $9::text[], $10::int8[], $11::timestamptz[]) \
                 AS t(id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, \
                     occurred_at) \
             ), inserted AS ( \
                 INSERT INTO keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, \
                     user_agent, latency_us, occurred_at) \
                 SELECT id, key_id, app_id, tenant_id, endpoint, method, status, ip::inet, user_agent, \
                     latency_us, occurred_at FROM input \
                 ON CONFLICT (id) DO NOTHING \
                 RETURNING key_id, app_id, tenant_id, status, occurred_at \
             ), periods AS ( \
                 SELECT key_id, app_id, tenant_id, status, 'day' AS period, \
                     date_trunc('day', occurred_at, 'UTC') AS period_start FROM inserted \
                 UNION ALL \
                 SELECT key_id, app_id, tenant_id, status, 'month', \
                     date_trunc('month', occurred_at, 'UTC') FROM inserted \
             ) \
             INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, requests, errors) \
             SELECT key_id, period, period_start, min(app_id), min(tenant_id), count(*), \
                 count(*) FILTER (WHERE status >= 400) \
             FROM periods GROUP BY key_id, period, period_start \
             ON CONFLICT (key_id, period, period_start) DO UPDATE \
             SET requests = keysmith_usage_agg.requests + excluded.requests, \
                 errors = keysmith_usage_agg.errors + excluded.errors",
        )
        .bind(c.id)
        .bind(c.key_id)
        .bind(c.app_id)
        .bind(c.tenant_id)
        .bind(c.endpoint)
        .bind(c.method)
        .bind(c.status)
        .bind(c.ip)
        .bind(c.user_agent)
        .bind(c.latency_us)
        .bind(c.occurred_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                Error::NotFound { entity: "key", id: "a key of the usage batch".to_owned() }
            } else {
                store_error(e)
            }
        })?;
        Ok(())
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT id, key_id, app_id, tenant_id, endpoint, method, status, host(ip) AS ip, user_agent, \
             latency_us, occurred_at FROM keysmith_usage WHERE key_id = ",
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
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT app_id, tenant_id, period_start, requests, errors FROM keysmith_usage_agg WHERE key_id = ",
        );
        qb.push_bind(key_id.uuid());
        qb.push(" AND app_id = ").push_bind(&tenant.app_id).push(" AND tenant_id = ").push_bind(&tenant.tenant_id);
        qb.push(" AND period = ").push_bind(period.as_str());
        push_range(&mut qb, "period_start", range);
        qb.push(" ORDER BY period_start");
        let rows: Vec<(String, String, DateTime<Utc>, i64, i64)> =
            qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter()
            .map(|(app_id, tenant_id, period_start, requests, errors)| {
                Ok(UsageAggregate {
                    key_id,
                    tenant: Tenant::new(app_id, tenant_id),
                    period,
                    period_start,
                    requests: to_u64("usage requests", requests)?,
                    errors: to_u64("usage errors", errors)?,
                })
            })
            .collect()
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT period_start, SUM(requests)::BIGINT, SUM(errors)::BIGINT FROM keysmith_usage_agg WHERE app_id = ",
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
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT a.period_start, SUM(a.requests)::BIGINT, SUM(a.errors)::BIGINT FROM keysmith_usage_agg a \
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

impl PgStore {
    /// Runs a `SELECT period_start, requests, errors` query of `period` totals.
    async fn fetch_totals(&self, mut qb: QueryBuilder<'_, Postgres>, period: Period) -> Result<Vec<UsageTotal>> {
        let rows: Vec<(DateTime<Utc>, i64, i64)> =
            qb.build_query_as().fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter()
            .map(|(period_start, requests, errors)| {
                Ok(UsageTotal {
                    period,
                    period_start,
                    requests: to_u64("usage requests", requests)?,
                    errors: to_u64("usage errors", errors)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl RotationStore for PgStore {
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
impl Store for PgStore {
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

impl From<PgPool> for PgStore {
    fn from(pool: PgPool) -> Self {
        Self::new(pool)
    }
}
