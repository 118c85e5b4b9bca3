//! Rotation records.

use async_trait::async_trait;

use super::RotationStore;
use crate::{KeyId, Result, RotationRecord, Tenant};

use super::MemoryStore;

#[async_trait]
impl RotationStore for MemoryStore {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        Ok(self
            .read()?
            .rotations
            .iter()
            .filter(|r| r.tenant == *tenant && (r.key_id == key_id || r.new_key_id == key_id))
            .cloned()
            .collect())
    }
}
