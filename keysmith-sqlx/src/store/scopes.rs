//! The scope registry.

use async_trait::async_trait;
use keysmith_core::store::ScopeStore;
use keysmith_core::{Error, Result, Scope, ScopeId, Tenant};

use super::{BindScoped as _, SqlStore};
use crate::common::{named_write_error, store_error};
use crate::dialect::{Arg as _, Dialect, Exec as _, RowsAffected as _, statement};
use crate::rows::Columns as _;

#[async_trait]
impl<DB: Dialect> ScopeStore for SqlStore<DB> {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        sqlx::query(statement!(
            DB,
            "INSERT INTO keysmith_scopes (id, app_id, tenant_id, name, description, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind_scoped(scope.id.uuid(), &scope.tenant)
        .arg(&scope.name)
        .arg(&scope.description)
        .arg(DB::time(scope.created_at))
        .execute(self.conn().await?.exec())
        .await
        .map_err(|e| named_write_error(e, "scope", &scope.name))?;
        Ok(())
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        let rows = sqlx::query(statement!(
            DB,
            "SELECT id, name, description, created_at FROM keysmith_scopes \
             WHERE app_id = ? AND tenant_id = ? ORDER BY ",
            DB::ORDER_BY_NAME
        ))
        .arg(&tenant.app_id)
        .arg(&tenant.tenant_id)
        .fetch_all(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(Scope {
                    id: ScopeId::from_uuid(DB::uuid(row, "id")?),
                    tenant: tenant.clone(),
                    name: DB::text(row, "name")?,
                    description: DB::text(row, "description")?,
                    created_at: DB::at(row, "created_at")?,
                })
            })
            .collect()
    }

    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        let deleted =
            sqlx::query(statement!(DB, "DELETE FROM keysmith_scopes WHERE id = ? AND app_id = ? AND tenant_id = ?"))
                .bind_scoped(id.uuid(), tenant)
                .execute(self.conn().await?.exec())
                .await
                .map_err(store_error)?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound { entity: "scope", id: id.to_string() });
        }
        Ok(())
    }
}
