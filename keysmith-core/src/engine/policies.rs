//! Policy management for one tenant.

use std::collections::HashSet;
use std::sync::Arc;

use super::TenantEngine;
use crate::Change;
use crate::hooks::Event;
use crate::policy::PolicySpec;
use crate::store::{KeyFilter, Page};
use crate::{Error, KeyId, KeyState, LimitBy, Policy, PolicyId, Result};

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
    /// A policy that starts limiting by owner must not hold keys of owners
    /// with credits of their own (under `limit_by: owner` an owner's keys
    /// spend the owner's credits): the update is refused while any such key
    /// can still validate. Should one get credits anyway, in a race with
    /// this update, it keeps spending them (see
    /// [`Engine::validate`](crate::Engine::validate)): a key with credits
    /// never passes for free.
    ///
    /// # Errors
    /// `NotFound`, `InvalidInput` (also for the tenant's ids), or
    /// `AlreadyExists` for a taken name;
    /// [`KeysHoldCredits`](Error::KeysHoldCredits), naming the keys, for a
    /// switch to `limit_by: owner` while keys of owners under the policy
    /// hold credits of their own.
    pub async fn update_policy(&self, id: PolicyId, spec: PolicySpec) -> Result<Policy> {
        let tenant = self.checked()?;
        let current = self.get_policy(id).await?;
        let policy = build(spec, id, self, current.created_at, self.engine.inner.clock.now())?;
        if policy.limit_by == LimitBy::Owner && current.limit_by != LimitBy::Owner {
            self.check_no_key_credits(id).await?;
        }
        self.engine.inner.store.update_policy(&policy).await?;
        self.engine.committed(|| Change::policy(tenant, id)).await;
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
        self.engine.committed(|| Change::policy(tenant, id)).await;
        let tenant = tenant.clone();
        self.engine.emit(|| Event::PolicyDeleted { tenant, policy_id: id }).await;
        Ok(())
    }

    /// Refuses to let the policy limit by owner while keys of owners under
    /// it that can still validate hold credits of their own, naming one key
    /// per lineage (its newest), the oldest lineages first.
    async fn check_no_key_credits(&self, policy_id: PolicyId) -> Result<()> {
        let now = self.engine.inner.clock.now();
        let mut lineages = HashSet::new();
        let mut listed: Vec<(KeyId, KeyId)> = Vec::new();
        let mut page = Page::new(Page::MAX_LIMIT, 0);
        loop {
            let filter = KeyFilter { policy_id: Some(policy_id), page, ..KeyFilter::default() };
            let keys = self.engine.inner.store.list_keys(&self.tenant, &filter).await?;
            for key in &keys {
                let retired = key.is_terminal()
                    || (key.state == KeyState::Rotated && key.grace_expires_at.is_none_or(|end| end <= now));
                if retired || key.owner_id.is_none() || key.credits.is_none() {
                    continue;
                }
                if lineages.insert(key.lineage_id) {
                    if listed.len() < Error::LISTED_KEYS {
                        listed.push((key.lineage_id, key.id));
                    }
                } else if let Some(newest) = listed.iter_mut().find(|(lineage, _)| *lineage == key.lineage_id) {
                    // Listed in id order, so this key is the lineage's newer one.
                    newest.1 = key.id;
                }
            }
            if keys.len() < page.limit as usize {
                break;
            }
            page.offset += u64::from(page.limit);
        }
        if lineages.is_empty() {
            return Ok(());
        }
        let key_ids = listed.into_iter().map(|(_, id)| id).collect();
        Err(Error::KeysHoldCredits { policy_id, key_ids, count: lineages.len() as u64 })
    }
}

fn build(
    spec: PolicySpec, id: PolicyId, owner: &TenantEngine, created_at: chrono::DateTime<chrono::Utc>,
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
