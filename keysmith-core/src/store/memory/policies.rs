//! Policies.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Page, PolicyStore};
use crate::{Error, Policy, PolicyId, Result, Tenant};

use super::{KeyPolicy, MemoryStore};

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
        let updated = Arc::new(policy.clone());
        tables.policies.insert(policy.id, Arc::clone(&updated));
        // The next validation of every key under it sees the new policy
        // (only the policy's tenant's keys can name it; checked anyway).
        let under = |key: &crate::Key| key.policy_id == Some(policy.id) && key.tenant == policy.tenant;
        for entry in tables.keys.values_mut().filter(|entry| under(&entry.stored.key)) {
            entry.policy = Some(KeyPolicy::new(&entry.stored.key, Arc::clone(&updated)));
        }
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        let mut tables = self.write()?;
        if tables.policies.get(&id).is_none_or(|p| p.tenant != *tenant) {
            return Err(Error::not_found("policy", id));
        }
        if tables.keys.values().any(|e| e.stored.key.policy_id == Some(id) && !e.stored.key.is_terminal()) {
            return Err(Error::PolicyInUse { policy_id: id });
        }
        tables.policies.remove(&id);
        // Terminal keys forget the policy, as the SQL stores' ON DELETE SET NULL does.
        for entry in tables.keys.values_mut() {
            if entry.stored.key.policy_id == Some(id) {
                Arc::make_mut(&mut entry.stored.key).policy_id = None;
                entry.policy = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{Engine, MemoryStore, NewKey, PolicySpec, Refusal, RequestContext, RotationReason, ValidationError};

    fn refusal<T: std::fmt::Debug>(result: Result<T, ValidationError>) -> Refusal {
        let error = result.expect_err("a refusal");
        error.refusal().cloned().unwrap_or_else(|| panic!("expected a refusal, got {error:?}"))
    }

    /// The store keeps each key's policy with the key: every write of the
    /// key or of the policy must leave it current.
    #[tokio::test]
    async fn a_policy_update_is_seen_by_the_next_validation_of_every_key_under_it() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
        let first = acme.create_key(NewKey::new("first").with_policy(policy.id)).await.unwrap();
        let second = acme.create_key(NewKey::new("second").with_policy(policy.id)).await.unwrap();
        let other = acme.create_policy(PolicySpec::new("other")).await.unwrap();
        let elsewhere = acme.create_key(NewKey::new("elsewhere").with_policy(other.id)).await.unwrap();
        let from = |ip: &str| RequestContext::new().with_ip(ip.parse().unwrap());
        for key in [&first, &second, &elsewhere] {
            assert!(engine.validate(key.raw.expose(), &from("192.0.2.1")).await.is_ok());
        }

        acme.update_policy(policy.id, PolicySpec::new("p").with_allowed_ips(["10.0.0.0/8"])).await.unwrap();
        for key in [&first, &second] {
            assert_eq!(refusal(engine.validate(key.raw.expose(), &from("192.0.2.1")).await), Refusal::IpNotAllowed);
            assert!(engine.validate(key.raw.expose(), &from("10.0.0.1")).await.is_ok());
        }
        assert!(engine.validate(elsewhere.raw.expose(), &from("192.0.2.1")).await.is_ok());

        // A key written since (suspended and back, or rotated) keeps it.
        acme.suspend_key(first.key.id).await.unwrap();
        acme.reactivate_key(first.key.id).await.unwrap();
        assert_eq!(refusal(engine.validate(first.raw.expose(), &from("192.0.2.1")).await), Refusal::IpNotAllowed);
        let rotated =
            acme.rotate_key(second.key.id, RotationReason::Scheduled, Some(Duration::from_secs(60))).await.unwrap();
        for raw in [&rotated.raw, &second.raw] {
            assert_eq!(refusal(engine.validate(raw.expose(), &from("192.0.2.1")).await), Refusal::IpNotAllowed);
        }
        acme.update_policy(policy.id, PolicySpec::new("p")).await.unwrap();
        for raw in [&first.raw, &rotated.raw, &second.raw] {
            assert!(engine.validate(raw.expose(), &from("192.0.2.1")).await.is_ok());
        }
    }

    /// The store keeps each key's scopes narrowed to its policy: a change of
    /// the key's scopes or of the policy's allowed scopes narrows anew.
    #[tokio::test]
    async fn the_scopes_kept_narrowed_follow_the_key_and_the_policy() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let allowing = |scopes: &[&str]| PolicySpec::new("p").with_allowed_scopes(scopes.iter().copied());
        let policy = acme.create_policy(allowing(&["read", "write"])).await.unwrap();
        let new = NewKey::new("k").with_scopes(["read", "write"]).with_policy(policy.id);
        let created = acme.create_key(new).await.unwrap();
        let validated = async |scope: &str| {
            let required = [scope];
            engine.validate(created.raw.expose(), &RequestContext::new().with_required_scopes(&required)).await
        };
        let refused = |result| matches!(refusal(result), Refusal::InsufficientScope { .. });
        assert!(validated("read:orders").await.is_ok());

        // The policy narrows `read` to what its allowlist covers.
        acme.update_policy(policy.id, allowing(&["read:users", "write"])).await.unwrap();
        assert!(validated("read:users").await.is_ok());
        assert!(refused(validated("read:orders").await));
        // The key loses `read`: nothing is left of it.
        acme.set_key_scopes(created.key.id, &["write"]).await.unwrap();
        assert!(refused(validated("read:users").await));
        assert!(validated("write").await.is_ok());
        // No allowlist: the key's own scopes.
        acme.update_policy(policy.id, PolicySpec::new("p")).await.unwrap();
        assert!(validated("write:users").await.is_ok());
        assert!(refused(validated("read").await));
    }

    #[tokio::test]
    async fn a_deleted_policy_leaves_its_revoked_keys_without_one() {
        let store = Arc::new(MemoryStore::new());
        let engine = Engine::builder(Arc::clone(&store)).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
        let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
        acme.revoke_key(created.key.id, "done").await.unwrap();
        acme.delete_policy(policy.id).await.unwrap();
        let hash = crate::key::Hasher::hash(&crate::Sha256Hasher, created.raw.expose());
        let (found, policy) = crate::store::KeyStore::find_key_with_policy_ready(&*store, &hash).unwrap().unwrap();
        assert_eq!(found.unwrap().key.policy_id, None);
        assert!(policy.is_none());
        assert_eq!(refusal(engine.validate(created.raw.expose(), &RequestContext::new()).await), Refusal::Revoked);
    }
}
