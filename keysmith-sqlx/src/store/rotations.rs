//! Rotation records (a rotation itself is a key change, in `keys`).

use async_trait::async_trait;
use keysmith_core::store::RotationStore;
use keysmith_core::{KeyId, Result, RotationRecord, Tenant};

use super::SqlStore;
use crate::common::store_error;
use crate::dialect::{Arg as _, Dialect, Exec as _, statement};
use crate::rows;

#[async_trait]
impl<DB: Dialect> RotationStore for SqlStore<DB> {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        let rows = sqlx::query(statement!(
            DB,
            "SELECT id, key_id, new_key_id, app_id, tenant_id, old_hash, new_hash, reason, grace_ttl_us, \
             grace_expires_at, created_at FROM keysmith_rotations \
             WHERE app_id = ? AND tenant_id = ? AND (key_id = ? OR new_key_id = ?) ORDER BY id"
        ))
        .arg(&tenant.app_id)
        .arg(&tenant.tenant_id)
        .arg(key_id.uuid())
        .arg(key_id.uuid())
        .fetch_all(self.conn().await?.exec())
        .await
        .map_err(store_error)?;
        rows.iter().map(rows::rotation::<DB>).collect()
    }
}
