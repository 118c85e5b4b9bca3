//! Keys: creation (with the owner's limit), lookups and listings, state
//! changes, rotation and the key side of credits.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::store::{ImportOutcome, KeyFilter, KeyStore, RotationWrite, StoredKey, Transition};
use keysmith_core::{CreditSpend, Credits, Error, Key, KeyHash, KeyId, KeyState, Result, Tenant};
use sqlx::Transaction;
use sqlx::types::Json;

use super::{
    BindScoped as _, KEY_COLUMNS, KEYS_FROM, SqlStore, begin, credits, import, keys, push_tenant, select_keys,
};
use crate::common::{
    check_transition, corrupt, duration_to_micros, is_foreign_key_violation, key_insert_error, limit_offset,
    named_write_error, parse_column, store_error,
};
use crate::dialect::{Arg as _, Dialect, Exec as _, RowsAffected as _, Sql, statement};
use crate::rows::{self, Columns as _};

/// The key `id` of `tenant`, or of any tenant when `tenant` is `None`.
pub(super) async fn key_on<DB: Dialect>(
    conn: &mut DB::Connection, tenant: Option<&Tenant>, id: KeyId,
) -> Result<Option<DB::Row>> {
    let mut qb = select_keys::<DB>();
    qb.push(" WHERE k.id = ").push_arg(id.uuid());
    if let Some(tenant) = tenant {
        push_tenant::<DB>(&mut qb, "k.", tenant);
    }
    let (sql, args) = qb.finish()?;
    sqlx::query_with::<DB, _>(&sql, args).fetch_optional(conn.exec()).await.map_err(store_error)
}

/// Reads back the key `id` that `tx` changed, then commits.
async fn commit_changed<DB: Dialect>(mut tx: Transaction<'static, DB>, id: KeyId) -> Result<Key> {
    let row = key_on::<DB>(&mut tx, None, id).await?;
    tx.commit().await.map_err(store_error)?;
    row.as_ref().map_or_else(|| Err(Error::store("a changed key vanished")), rows::key::<DB>)
}

/// Inserts a key and its scopes on `conn` (inside the caller's transaction).
pub(super) async fn insert_key_on<DB: Dialect>(conn: &mut DB::Connection, stored: &StoredKey) -> Result<()> {
    let key = &*stored.key;
    let policy_id = key.policy_id.map(|id| id.uuid());
    // The policy must be the tenant's: checked in the statement itself,
    // and the foreign key keeps the policy from vanishing before commit.
    let inserted = sqlx::query(statement!(
        DB,
        "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, \
         state, policy_id, expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, \
         updated_at, metadata, lineage_id, owner_id) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM (SELECT 1) AS one \
         WHERE ? IS NULL OR EXISTS (SELECT 1 FROM keysmith_policies p \
             WHERE p.id = ? AND p.app_id = ? AND p.tenant_id = ?)"
    ))
    .bind_scoped(key.id.uuid(), &key.tenant)
    .arg(stored.hash.to_hex())
    .arg(&key.name)
    .arg(&key.hint)
    .arg(&key.prefix)
    .arg(key.environment.as_str())
    .arg(key.state.as_str())
    .arg(policy_id)
    .arg(key.expires_at.map(DB::time))
    .arg(key.grace_expires_at.map(DB::time))
    .arg(&key.revoked_reason)
    .arg(key.last_used_at.map(DB::time))
    .arg(DB::time(key.created_at))
    .arg(DB::time(key.updated_at))
    .arg(Json(&key.metadata))
    .arg(key.lineage_id.uuid())
    .arg(&key.owner_id)
    .arg(policy_id)
    .arg(policy_id)
    .arg(&key.tenant.app_id)
    .arg(&key.tenant.tenant_id)
    .execute(conn.exec())
    .await
    .map_err(|e| key_insert_error(e, key.id, key.policy_id))?;

    if inserted.rows_affected() == 0 {
        // No row: the policy is not the tenant's, unless the key is
        // taken anyway (reported first, like every store does).
        let taken = sqlx::query(statement!(DB, "SELECT id FROM keysmith_keys WHERE id = ? OR hash = ?"))
            .arg(key.id.uuid())
            .arg(stored.hash.to_hex())
            .fetch_optional(conn.exec())
            .await
            .map_err(store_error)?;
        return Err(if taken.is_some() {
            Error::AlreadyExists { entity: "key", name: key.id.to_string() }
        } else {
            Error::NotFound { entity: "policy", id: key.policy_id.map(|id| id.to_string()).unwrap_or_default() }
        });
    }
    insert_scopes_on::<DB>(conn, key.id, &key.scopes).await
}

/// Refuses a new live key of an owner who already holds as many
/// live keys under the key's policy as it allows. The policy row
/// stays locked until commit, so concurrent creations under that
/// policy count one after another.
async fn check_owner_limit_on<DB: Dialect>(conn: &mut DB::Connection, key: &Key) -> Result<()> {
    let (Some(owner_id), Some(policy_id)) = (&key.owner_id, key.policy_id) else {
        return Ok(());
    };
    if !key.state.counts_toward_owner_limit() {
        return Ok(());
    }
    let row = sqlx::query(statement!(
        DB,
        "SELECT max_active_keys_per_owner FROM keysmith_policies \
         WHERE id = ? AND app_id = ? AND tenant_id = ?",
        DB::LOCK_ROWS
    ))
    .bind_scoped(policy_id.uuid(), &key.tenant)
    .fetch_optional(conn.exec())
    .await
    .map_err(store_error)?;
    // No such policy: the insert reports it.
    let Some(limit) = row.map(|row| DB::opt_big(&row, "max_active_keys_per_owner")).transpose()?.flatten() else {
        return Ok(());
    };
    let held: i64 = sqlx::query(statement!(
        DB,
        "SELECT COUNT(*) AS held FROM keysmith_keys WHERE app_id = ? AND tenant_id = ? AND owner_id = ? \
         AND policy_id = ? AND state IN ('active', 'suspended') AND (expires_at IS NULL OR expires_at > ?)"
    ))
    .arg(&key.tenant.app_id)
    .arg(&key.tenant.tenant_id)
    .arg(owner_id)
    .arg(policy_id.uuid())
    .arg(DB::time(key.created_at))
    .fetch_one(conn.exec())
    .await
    .map_err(store_error)
    .and_then(|row| DB::big(&row, "held"))?;
    if held >= limit {
        return Err(Error::OwnerKeyLimit {
            owner_id: owner_id.clone(),
            policy_id,
            limit: u32::try_from(limit).map_err(|e| corrupt("policy max_active_keys_per_owner", e))?,
        });
    }
    Ok(())
}

pub(super) async fn insert_scopes_on<DB: Dialect>(
    conn: &mut DB::Connection, id: KeyId, scopes: &[String],
) -> Result<()> {
    for (chunk, first) in scopes.chunks(DB::ROWS_PER_INSERT).zip((0..).step_by(DB::ROWS_PER_INSERT)) {
        let mut qb = Sql::<DB>::new("INSERT INTO keysmith_key_scopes (key_id, position, scope) ");
        qb.push_values(chunk.iter().zip(first..), |mut row, (scope, position): (_, i32)| {
            row.push_arg(id.uuid()).push_arg(position).push_arg(scope);
        });
        let (sql, args) = qb.finish()?;
        sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await.map_err(store_error)?;
    }
    Ok(())
}

/// Locks the key `id` of `tenant` by its primary key until commit
/// and checks that it can move from one of `from` to `to`.
///
/// The row is locked before the conditional `UPDATE`: InnoDB may
/// run that `UPDATE` through a secondary index (`state, …`) and
/// lock its entry before the row, while a racing change holding
/// the row waits for that entry, and the two deadlock. Waiting
/// for the row first puts every change of one key in one order.
async fn lock_for_transition<DB: Dialect>(
    conn: &mut DB::Connection, tenant: &Tenant, id: KeyId, from: &[KeyState], to: KeyState,
) -> Result<()> {
    let row = sqlx::query(statement!(
        DB,
        "SELECT state FROM keysmith_keys WHERE id = ? AND app_id = ? AND tenant_id = ?",
        DB::LOCK_ROWS
    ))
    .bind_scoped(id.uuid(), tenant)
    .fetch_optional(conn.exec())
    .await
    .map_err(store_error)?;
    let current = row.map(|row| parse_column("key state", &DB::text(&row, "state")?)).transpose()?;
    check_transition(id, current, from, to)
}

#[async_trait]
impl<DB: Dialect> KeyStore for SqlStore<DB> {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        let mut tx = begin(self).await?;
        if let Err(error) = check_owner_limit_on::<DB>(&mut tx, &key.key).await {
            // At once, not when the connection is next used: the
            // policy row stays locked until the transaction ends.
            tx.rollback().await.map_err(store_error)?;
            return Err(error);
        }
        insert_key_on::<DB>(&mut tx, key).await?;
        // A new lineage; a rotation's key shares the credits stored already.
        if let Some(credits) = &key.key.credits {
            let holder = credits::Holder::Lineage(&key.key.tenant, key.key.lineage_id.uuid());
            credits::insert_credits_on::<DB>(&mut tx, holder, credits).await?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn import_keys(&self, tenant: &Tenant, keys: &[StoredKey], dry_run: bool) -> Result<Vec<ImportOutcome>> {
        let mut tx = begin(self).await?;
        let outcomes = match import::import_keys_on::<DB>(&mut tx, tenant, keys).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tx.rollback().await.map_err(store_error)?;
                return Err(error);
            }
        };
        if dry_run {
            tx.rollback().await.map_err(store_error)?;
        } else {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(outcomes)
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        let row = sqlx::query(statement!(
            DB,
            "SELECT ",
            KEY_COLUMNS,
            ", ",
            DB::SCOPES,
            " AS scopes FROM ",
            KEYS_FROM,
            " WHERE k.hash = ?"
        ))
        .arg(hash.to_hex())
        .fetch_optional(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        row.as_ref().map(rows::stored_key::<DB>).transpose()
    }

    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        let mut conn = self.conn().await?;
        key_on::<DB>(&mut conn, Some(tenant), id).await?.as_ref().map(rows::stored_key::<DB>).transpose()
    }

    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        let rows = keys(self, |qb| {
            qb.push(" WHERE k.app_id = ").push_arg(tenant.app_id.clone());
            qb.push(" AND k.tenant_id = ").push_arg(tenant.tenant_id.clone());
            if let Some(state) = filter.state {
                qb.push(" AND k.state = ").push_arg(state.as_str());
            }
            if let Some(environment) = filter.environment {
                qb.push(" AND k.environment = ").push_arg(environment.as_str());
            }
            if let Some(policy_id) = filter.policy_id {
                qb.push(" AND k.policy_id = ").push_arg(policy_id.uuid());
            }
            if let Some(owner_id) = &filter.owner_id {
                qb.push(" AND k.owner_id = ").push_arg(owner_id.clone());
            }
            let (limit, offset) = limit_offset(filter.page);
            qb.push(" ORDER BY k.id LIMIT ").push_arg(limit).push(" OFFSET ").push_arg(offset);
        })
        .await?;
        rows.iter().map(rows::key::<DB>).collect()
    }

    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        let mut tx = begin(self).await?;
        lock_for_transition::<DB>(&mut tx, tenant, id, transition.from, transition.to).await?;
        let mut qb = Sql::<DB>::new("UPDATE keysmith_keys SET state = ");
        qb.push_arg(transition.to.as_str()).push(", updated_at = ").push_arg(DB::time(transition.at));
        if transition.to != KeyState::Expired {
            // Revoked and suspended keys keep why; a reactivated key forgets it.
            qb.push(", revoked_reason = ").push_arg(transition.reason.clone());
        }
        qb.push(" WHERE id = ").push_arg(id.uuid());
        push_tenant::<DB>(&mut qb, "", tenant);
        // Still compare-and-set: the lock is what orders racing changes.
        qb.push(" AND state IN (");
        let mut states = qb.separated(", ");
        for state in transition.from {
            states.push_arg(state.as_str());
        }
        qb.push(")");
        let (sql, args) = qb.finish()?;
        if sqlx::query_with::<DB, _>(&sql, args).execute(tx.exec()).await.map_err(store_error)?.rows_affected() == 0 {
            return Err(Error::store(format!("key {id} changed state while locked")));
        }
        commit_changed::<DB>(tx, id).await
    }

    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        let record = &rotation.record;
        if rotation.new_key.key.tenant != *tenant || record.tenant != *tenant {
            return Err(Error::InvalidInput { field: "tenant", reason: "a rotation stays within one tenant".into() });
        }
        let mut tx = begin(self).await?;
        lock_for_transition::<DB>(&mut tx, tenant, record.key_id, &[KeyState::Active], KeyState::Rotated).await?;
        let rotated = sqlx::query(statement!(
            DB,
            "UPDATE keysmith_keys SET state = 'rotated', grace_expires_at = ?, updated_at = ? \
             WHERE id = ? AND app_id = ? AND tenant_id = ? AND state = 'active'"
        ))
        .arg(DB::time(record.grace_expires_at))
        .arg(DB::time(record.created_at))
        .bind_scoped(record.key_id.uuid(), tenant)
        .execute(tx.exec())
        .await
        .map_err(store_error)?;
        if rotated.rows_affected() == 0 {
            return Err(Error::store(format!("key {} changed state while locked", record.key_id)));
        }
        insert_key_on::<DB>(&mut tx, &rotation.new_key).await?;
        sqlx::query(statement!(
            DB,
            "INSERT INTO keysmith_rotations (id, key_id, new_key_id, app_id, tenant_id, old_hash, \
             new_hash, reason, grace_ttl_us, grace_expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .arg(record.id.uuid())
        .arg(record.key_id.uuid())
        .bind_scoped(record.new_key_id.uuid(), &record.tenant)
        .arg(record.old_hash.to_hex())
        .arg(record.new_hash.to_hex())
        .arg(record.reason.as_str())
        .arg(duration_to_micros("grace", record.grace_ttl)?)
        .arg(DB::time(record.grace_expires_at))
        .arg(DB::time(record.created_at))
        .execute(tx.exec())
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                Error::NotFound { entity: "key", id: record.new_key_id.to_string() }
            } else {
                named_write_error(e, "rotation", &record.id.to_string())
            }
        })?;
        commit_changed::<DB>(tx, record.key_id).await
    }

    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        let mut tx = begin(self).await?;
        let updated = sqlx::query(statement!(
            DB,
            "UPDATE keysmith_keys SET updated_at = ? WHERE id = ? AND app_id = ? AND tenant_id = ?"
        ))
        .arg(DB::time(at))
        .bind_scoped(id.uuid(), tenant)
        .execute(tx.exec())
        .await
        .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "key", id: id.to_string() });
        }
        sqlx::query(statement!(DB, "DELETE FROM keysmith_key_scopes WHERE key_id = ?"))
            .arg(id.uuid())
            .execute(tx.exec())
            .await
            .map_err(store_error)?;
        insert_scopes_on::<DB>(&mut tx, id, scopes).await?;
        commit_changed::<DB>(tx, id).await
    }

    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(statement!(
            DB,
            "UPDATE keysmith_keys SET last_used_at = ? \
             WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"
        ))
        .arg(DB::time(at))
        .arg(id.uuid())
        .arg(DB::time(at))
        .execute(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key> {
        let mut tx = begin(self).await?;
        let lineage = credits::lineage_on::<DB>(&mut tx, tenant, id).await?;
        credits::replace_credits_on::<DB>(&mut tx, credits::Holder::Lineage(tenant, lineage), credits).await?;
        commit_changed::<DB>(tx, id).await
    }

    async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key> {
        let mut tx = begin(self).await?;
        let lineage = credits::lineage_on::<DB>(&mut tx, tenant, id).await?;
        credits::add_credits_on::<DB>(&mut tx, credits::Holder::Lineage(tenant, lineage), amount, now).await?;
        commit_changed::<DB>(tx, id).await
    }

    async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
        let mut conn = self.conn().await?;
        credits::spend_credits_on::<DB>(
            &mut conn,
            credits::Holder::Lineage(&key.tenant, key.lineage_id.uuid()),
            cost,
            now,
        )
        .await
    }

    async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()> {
        credits::refund_credits_on::<DB>(
            &mut *self.conn().await?,
            credits::Holder::Lineage(&key.tenant, key.lineage_id.uuid()),
            cost,
        )
        .await
    }

    async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>> {
        let mut conn = self.conn().await?;
        credits::credits_on::<DB>(&mut conn, credits::Holder::Owner(tenant, owner_id)).await
    }

    async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()> {
        let mut tx = begin(self).await?;
        credits::replace_credits_on::<DB>(&mut tx, credits::Holder::Owner(tenant, owner_id), credits).await?;
        tx.commit().await.map_err(store_error)
    }

    async fn add_owner_credits(
        &self, tenant: &Tenant, owner_id: &str, amount: u64, now: DateTime<Utc>,
    ) -> Result<Credits> {
        let holder = credits::Holder::Owner(tenant, owner_id);
        let mut tx = begin(self).await?;
        credits::add_credits_on::<DB>(&mut tx, holder, amount, now).await?;
        let credits = credits::credits_on::<DB>(&mut tx, holder)
            .await?
            .ok_or_else(|| Error::store("topped-up credits vanished"))?;
        tx.commit().await.map_err(store_error)?;
        Ok(credits)
    }

    async fn spend_owner_credits(
        &self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>,
    ) -> Result<CreditSpend> {
        let holder = credits::Holder::Owner(tenant, owner_id);
        let mut conn = self.conn().await?;
        // An owner without credits is what `CachedStore` remembers,
        // so no read ahead of the spend: a balance costs three
        // statements, as a lineage's does.
        credits::spend_credits_on::<DB>(&mut conn, holder, cost, now).await
    }

    async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()> {
        credits::refund_credits_on::<DB>(&mut *self.conn().await?, credits::Holder::Owner(tenant, owner_id), cost).await
    }

    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        let rows = keys(self, |qb| {
            qb.push(
                " LEFT JOIN keysmith_policies p ON p.id = k.policy_id WHERE (k.state = 'active' AND (k.expires_at <= ",
            );
            qb.push_arg(DB::time(now)).push(" OR (p.max_key_age_us IS NOT NULL AND ");
            DB::push_age_micros(qb, now);
            qb.push(" >= p.max_key_age_us))) OR (k.state = 'rotated' AND k.grace_expires_at <= ");
            qb.push_arg(DB::time(now)).push(") ORDER BY k.id LIMIT ").push_arg(i64::from(limit));
        })
        .await?;
        rows.iter().map(rows::key::<DB>).collect()
    }
}
