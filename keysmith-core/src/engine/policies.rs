//! Policy management for one tenant.

use std::sync::Arc;

use super::TenantEngine;
use crate::Change;
use crate::hooks::Event;
use crate::policy::PolicySpec;
use crate::store::Page;
use crate::{Error, Policy, PolicyId, Result};

impl TenantEngine {
    /// Creates a policy. CIDRs, origins and scope names are checked here, so
    /// a bad one never reaches a request.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad field (or the tenant's ids);
    /// `AlreadyExists` for a taken name.
    pub async fn create_policy(&self, spec: PolicySpec) -> Result<Policy> {
        self.checked()?;
        let now = self.engine.inner.clock.now();
        let policy = build(spec, PolicyId::new(), self, now, now)?;
        self.engine.inner.store.insert_policy(&policy).await?;
        let policy = Arc::new(policy);
        self.engine.emit(|| Event::PolicyCreated { policy: Arc::clone(&policy) }).await;
        Ok(Arc::unwrap_or_clone(policy))
    }

    /// One of the tenant's policies.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such policy.
    pub async fn get_policy(&self, id: PolicyId) -> Result<Policy> {
        let policy = self.engine.inner.store.get_policy(self.checked()?, id).await?;
        policy.map(Arc::unwrap_or_clone).ok_or_else(|| Error::not_found("policy", id))
    }

    /// The tenant's policies, oldest first.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; a store failure.
    pub async fn list_policies(&self, page: Page) -> Result<Vec<Policy>> {
        self.engine.inner.store.list_policies(self.checked()?, page).await
    }

    /// Replaces a policy's settings. Keys under it are held to the new
    /// settings from their next request on.
    ///
    /// # Errors
    /// `NotFound`, `InvalidInput` (also for the tenant's ids), or
    /// `AlreadyExists` for a taken name.
    pub async fn update_policy(&self, id: PolicyId, spec: PolicySpec) -> Result<Policy> {
        let tenant = self.checked()?;
        let current = self.get_policy(id).await?;
        let policy = build(spec, id, self, current.created_at, self.engine.inner.clock.now())?;
        self.engine.inner.store.update_policy(&policy).await?;
        self.engine.publish(|| Change::policy(tenant, id)).await;
        let policy = Arc::new(policy);
        self.engine.emit(|| Event::PolicyUpdated { policy: Arc::clone(&policy) }).await;
        Ok(Arc::unwrap_or_clone(policy))
    }

    /// Deletes a policy that no live key uses.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound`, or `PolicyInUse`
    /// while a key that is not expired or revoked references it.
    pub async fn delete_policy(&self, id: PolicyId) -> Result<()> {
        let tenant = self.checked()?;
        self.engine.inner.store.delete_policy(tenant, id).await?;
        self.engine.publish(|| Change::policy(tenant, id)).await;
        let tenant = tenant.clone();
        self.engine.emit(|| Event::PolicyDeleted { tenant, policy_id: id }).await;
        Ok(())
    }
}

fn build(
    spec: PolicySpec,
    id: PolicyId,
    owner: &TenantEngine,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
) -> Result<Policy> {
    let checked = spec.validate()?;
    Ok(Policy {
        id,
        tenant: owner.tenant.clone(),
        name: checked.name,
        rate_limits: spec.rate_limits,
        limit_by: spec.limit_by,
        allowed_ips: checked.allowed_ips,
        allowed_origins: checked.allowed_origins,
        allowed_scopes: checked.allowed_scopes,
        max_key_age: spec.max_key_age,
        quota: spec.quota,
        rotation_grace: spec.rotation_grace,
        max_active_keys_per_owner: spec.max_active_keys_per_owner,
        metadata: spec.metadata,
        created_at,
        updated_at,
    })
}
