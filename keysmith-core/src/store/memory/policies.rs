//! Policies.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Page, PolicyStore};
use crate::{Error, Policy, PolicyId, Result, Tenant};

use super::MemoryStore;

#[async_trait]
impl PolicyStore for MemoryStore {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        let mut tables = self.write()?;
        let taken = tables.policies.values().any(|p| p.tenant == policy.tenant && p.name == policy.name);
        if taken || tables.policies.contains_key(&policy.id) {
            return Err(Error::AlreadyExists { entity: "policy", name: policy.name.clone() });
        }
        tables.policies.insert(policy.id, Arc::new(policy.clone()));
        Ok(())
    }

    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        self.read().map(|tables| tables.policy(tenant, id))
    }

    fn get_policy_ready(&self, tenant: &Tenant, id: PolicyId) -> Option<Result<Option<Arc<Policy>>>> {
        Some(self.read().map(|tables| tables.policy(tenant, id)))
    }

    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        let tables = self.read()?;
        let mut policies: Vec<&Arc<Policy>> = tables.policies.values().filter(|p| p.tenant == *tenant).collect();
        // In id order (creation order), as the SQL stores list them.
        policies.sort_unstable_by_key(|p| p.id);
        Ok(page.apply(policies.into_iter().map(|p| Policy::clone(p))))
    }

    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        let mut tables = self.write()?;
        if tables.policies.get(&policy.id).is_none_or(|p| p.tenant != policy.tenant) {
            return Err(Error::not_found("policy", policy.id));
        }
        let taken =
            tables.policies.values().any(|p| p.id != policy.id && p.tenant == policy.tenant && p.name == policy.name);
        if taken {
            return Err(Error::AlreadyExists { entity: "policy", name: policy.name.clone() });
        }
        tables.policies.insert(policy.id, Arc::new(policy.clone()));
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        let mut tables = self.write()?;
        if tables.policies.get(&id).is_none_or(|p| p.tenant != *tenant) {
            return Err(Error::not_found("policy", id));
        }
        if tables.keys.values().any(|s| s.key.policy_id == Some(id) && !s.key.is_terminal()) {
            return Err(Error::PolicyInUse { policy_id: id });
        }
        tables.policies.remove(&id);
        // Terminal keys forget the policy, as the SQL stores' ON DELETE SET NULL does.
        for stored in tables.keys.values_mut() {
            if stored.key.policy_id == Some(id) {
                Arc::make_mut(&mut stored.key).policy_id = None;
            }
        }
        Ok(())
    }
}
