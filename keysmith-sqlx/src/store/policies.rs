//! Policies: their rows, and deleting one only while no live key uses it.

use std::sync::Arc;

use async_trait::async_trait;
use keysmith_core::store::{Page, PolicyStore};
use keysmith_core::{Error, Policy, PolicyId, Result, Tenant};
use sqlx::types::Json;

use super::{BindScoped as _, SqlStore, begin};
use crate::common::{PolicyColumns, limit_offset, named_write_error, store_error};
use crate::dialect::{Arg as _, Dialect, Exec as _, RowsAffected as _, Statement, Stored as _, statement};
use crate::rows;

/// The columns of `keysmith_policies`.
const POLICY_COLUMNS: &str = "id, app_id, tenant_id, name, rate_limits, limit_by, \
    allowed_ips, allowed_origins, allowed_scopes, \
    max_key_age_us, quota, rotation_grace_us, metadata, created_at, updated_at, \
    max_active_keys_per_owner";

/// Binds a policy's columns from `name` to `updated_at`, in table order.
fn bind_policy<'q, DB: Dialect>(
    query: Statement<'q, DB>, policy: &'q Policy, c: &'q PolicyColumns,
) -> Statement<'q, DB> {
    query
        .arg(&policy.name)
        .arg(Json(&c.rate_limits))
        .arg(policy.limit_by.as_str())
        .arg(<DB as Dialect>::List::store(c.allowed_ips.clone()))
        .arg(<DB as Dialect>::List::store(policy.allowed_origins.clone()))
        .arg(<DB as Dialect>::List::store(policy.allowed_scopes.clone()))
        .arg(c.max_key_age_us)
        .arg(policy.quota.as_ref().map(Json))
        .arg(c.rotation_grace_us)
        .arg(Json(&policy.metadata))
        .arg(DB::time(policy.created_at))
        .arg(DB::time(policy.updated_at))
        .arg(c.max_active_keys_per_owner)
}

#[async_trait]
impl<DB: Dialect> PolicyStore for SqlStore<DB> {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        let c = PolicyColumns::of(policy)?;
        let insert = sqlx::query(statement!(
            DB,
            "INSERT INTO keysmith_policies (",
            POLICY_COLUMNS,
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind_scoped(policy.id.uuid(), &policy.tenant);
        bind_policy::<DB>(insert, policy, &c)
            .execute(self.conn().await?.exec())
            .await
            .map_err(|e| named_write_error(e, "policy", &policy.name))?;
        Ok(())
    }

    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        let row = sqlx::query(statement!(
            DB,
            "SELECT ",
            POLICY_COLUMNS,
            " FROM keysmith_policies WHERE id = ? AND app_id = ? AND tenant_id = ?"
        ))
        .bind_scoped(id.uuid(), tenant)
        .fetch_optional(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        Ok(row.as_ref().map(rows::policy::<DB>).transpose()?.map(Arc::new))
    }

    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        let (limit, offset) = limit_offset(page);
        let rows = sqlx::query(statement!(
            DB,
            "SELECT ",
            POLICY_COLUMNS,
            " FROM keysmith_policies WHERE app_id = ? AND tenant_id = ? ORDER BY id LIMIT ? OFFSET ?"
        ))
        .arg(&tenant.app_id)
        .arg(&tenant.tenant_id)
        .arg(limit)
        .arg(offset)
        .fetch_all(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        rows.iter().map(rows::policy::<DB>).collect()
    }

    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        let c = PolicyColumns::of(policy)?;
        let update = sqlx::query(statement!(
            DB,
            "UPDATE keysmith_policies SET name = ?, rate_limits = ?, limit_by = ?, allowed_ips = ?, allowed_origins = ?, allowed_scopes = ?, \
             max_key_age_us = ?, quota = ?, rotation_grace_us = ?, metadata = ?, created_at = ?, \
             updated_at = ?, max_active_keys_per_owner = ? WHERE id = ? AND app_id = ? AND tenant_id = ?"
        ));
        let updated = bind_policy::<DB>(update, policy, &c)
            .bind_scoped(policy.id.uuid(), &policy.tenant)
            .execute(self.conn().await?.exec())
            .await
            .map_err(|e| named_write_error(e, "policy", &policy.name))?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "policy", id: policy.id.to_string() });
        }
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        let mut tx = begin(self).await?;
        // Locking the row first makes the check atomic: a key insert that
        // names the policy holds a share lock on it until it commits (so it
        // is visible to the check below) or waits for this transaction (and
        // then fails on the foreign key). SQLite's transaction holds the
        // write lock from its start.
        let found = sqlx::query(statement!(
            DB,
            "SELECT id FROM keysmith_policies WHERE id = ? AND app_id = ? AND tenant_id = ?",
            DB::LOCK_ROWS
        ))
        .bind_scoped(id.uuid(), tenant)
        .fetch_optional(tx.exec())
        .await
        .map_err(store_error)?;
        if found.is_none() {
            return Err(Error::NotFound { entity: "policy", id: id.to_string() });
        }
        let in_use = sqlx::query(statement!(
            DB,
            "SELECT id FROM keysmith_keys WHERE policy_id = ? AND state NOT IN ('expired', 'revoked') \
             LIMIT 1",
            DB::LOCK_ROWS
        ))
        .arg(id.uuid())
        .fetch_optional(tx.exec())
        .await
        .map_err(store_error)?;
        if in_use.is_some() {
            return Err(Error::PolicyInUse { policy_id: id });
        }
        sqlx::query(statement!(DB, "DELETE FROM keysmith_policies WHERE id = ?"))
            .arg(id.uuid())
            .execute(tx.exec())
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }
}
