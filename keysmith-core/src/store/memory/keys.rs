//! Keys and their credits, and the owners' credits.

use std::collections::HashSet;
use std::sync::{Arc, RwLockReadGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ImportOutcome, KeyFilter, KeyStore, RotationWrite, StoredKey, Transition};
use crate::store::{KeyPolicy, KeyWithPolicy};
use crate::{CreditSpend, Credits, Error, Key, KeyHash, KeyId, KeyState, Policy, PolicyId, Result, Tenant};

use super::{KeyEntry, MemoryStore, Tables};

impl Tables {
    pub(super) fn policy(&self, tenant: &Tenant, id: PolicyId) -> Option<Arc<Policy>> {
        self.policies.get(&id).filter(|p| p.tenant == *tenant).cloned()
    }

    /// The policy `key` names, with the key's scopes narrowed to it, as
    /// the key's entry keeps it.
    fn key_policy(&self, key: &Key) -> Option<KeyPolicy> {
        let policy = key.policy_id.and_then(|id| self.policy(&key.tenant, id))?;
        Some(KeyPolicy::new(key, policy))
    }

    pub(super) fn tenant_key(&self, tenant: &Tenant, id: KeyId) -> Option<&StoredKey> {
        self.by_id
            .get(&id)
            .and_then(|hash| self.keys.get(hash))
            .map(|entry| &entry.stored)
            .filter(|stored| stored.key.tenant == *tenant)
    }

    pub(super) fn update_key(
        &mut self, tenant: &Tenant, id: KeyId, change: impl FnOnce(&mut Key) -> Result<()>,
    ) -> Result<Key> {
        let stored = self.tenant_key(tenant, id).ok_or_else(|| Error::not_found("key", id))?;
        let mut key = Key::clone(&stored.key);
        change(&mut key)?;
        let hash = stored.hash;
        let stored = StoredKey { key: Arc::new(key.clone()), hash };
        let policy = self.key_policy(&stored.key);
        self.keys.insert(hash, KeyEntry { stored, policy });
        Ok(key)
    }

    pub(super) fn check_policy(&self, tenant: &Tenant, id: Option<PolicyId>) -> Result<()> {
        match id {
            Some(id) if self.policies.get(&id).is_none_or(|p| p.tenant != *tenant) => {
                Err(Error::not_found("policy", id))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a new live key of an owner who holds as many live keys under
    /// the key's policy as it allows (under the write lock: atomic).
    pub(super) fn check_owner_limit(&self, key: &Key) -> Result<()> {
        let (Some(owner_id), Some(policy_id)) = (&key.owner_id, key.policy_id) else {
            return Ok(());
        };
        let limit = self.policy(&key.tenant, policy_id).and_then(|p| p.max_active_keys_per_owner);
        let Some(limit) = limit.filter(|_| key.state.counts_toward_owner_limit()) else {
            return Ok(());
        };
        let held = self
            .keys
            .values()
            .map(|entry| &*entry.stored.key)
            .filter(|k| {
                k.tenant == key.tenant
                    && k.owner_id.as_ref() == Some(owner_id)
                    && k.policy_id == Some(policy_id)
                    && k.state.counts_toward_owner_limit()
                    && k.expires_at.is_none_or(|at| at > key.created_at)
            })
            .count();
        if held >= limit as usize {
            return Err(Error::OwnerKeyLimit { owner_id: owner_id.clone(), policy_id, limit });
        }
        Ok(())
    }

    /// Inserts a key; the lineage's credits are the ones already stored
    /// (a rotation) or, for a new lineage, the key's own.
    pub(super) fn insert_key(&mut self, stored: &StoredKey) -> Result<()> {
        let key = &stored.key;
        if self.by_id.contains_key(&key.id) || self.keys.contains_key(&stored.hash) {
            return Err(Error::AlreadyExists { entity: "key", name: key.id.to_string() });
        }
        self.check_policy(&key.tenant, key.policy_id)?;
        let lineage = key.lineage_id;
        let credits = match self.lineages.contains_key(&lineage) {
            true => self.credits.get(&lineage).copied(),
            false => key.credits,
        };
        self.by_id.insert(key.id, stored.hash);
        self.lineages.entry(lineage).or_default().push(key.id);
        if let Some(owner_id) = &key.owner_id {
            self.owners.entry((key.tenant.clone(), owner_id.clone())).or_default().push(key.id);
        }
        let policy = self.key_policy(key);
        self.keys.insert(stored.hash, KeyEntry { stored: stored.clone(), policy });
        self.store_credits(lineage, credits);
        Ok(())
    }

    /// Stores the lineage's credits and the copy every key of it carries.
    pub(super) fn store_credits(&mut self, lineage: KeyId, credits: Option<Credits>) {
        match credits {
            Some(credits) => self.credits.insert(lineage, credits),
            None => self.credits.remove(&lineage),
        };
        for id in self.lineages.get(&lineage).into_iter().flatten() {
            if let Some(entry) = self.by_id.get(id).and_then(|hash| self.keys.get_mut(hash))
                && entry.stored.key.credits != credits
            {
                Arc::make_mut(&mut entry.stored.key).credits = credits;
            }
        }
    }

    /// The lineage of the tenant's key `id`.
    pub(super) fn lineage_of(&self, tenant: &Tenant, id: KeyId) -> Result<KeyId> {
        self.tenant_key(tenant, id).map(|stored| stored.key.lineage_id).ok_or_else(|| Error::not_found("key", id))
    }

    pub(super) fn key_copy(&self, tenant: &Tenant, id: KeyId) -> Result<Key> {
        self.tenant_key(tenant, id).map(|stored| Key::clone(&stored.key)).ok_or_else(|| Error::not_found("key", id))
    }

    pub(super) fn spend_credits(&mut self, key: &Key, cost: u64, now: DateTime<Utc>) -> CreditSpend {
        let Some(credits) = self.credits.get(&key.lineage_id).map(|c| c.as_of(now)) else {
            return CreditSpend::Unlimited;
        };
        if credits.remaining < cost {
            self.store_credits(key.lineage_id, Some(credits));
            return CreditSpend::Exhausted(credits);
        }
        let spent = Credits { remaining: credits.remaining - cost, ..credits };
        self.store_credits(key.lineage_id, Some(spent));
        CreditSpend::Spent(spent)
    }

    pub(super) fn refund_credits(&mut self, key: &Key, cost: u64) {
        if let Some(credits) = self.credits.get(&key.lineage_id).copied() {
            self.store_credits(key.lineage_id, Some(refunded(credits, cost)));
        }
    }

    pub(super) fn owner_credits_mut(&mut self, tenant: &Tenant, owner_id: &str) -> Option<&mut Credits> {
        self.owner_credits.get_mut(tenant)?.get_mut(owner_id)
    }

    pub(super) fn spend_owner_credits(
        &mut self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>,
    ) -> CreditSpend {
        let Some(stored) = self.owner_credits_mut(tenant, owner_id) else {
            return CreditSpend::Unlimited;
        };
        let credits = stored.as_of(now);
        if credits.remaining < cost {
            *stored = credits;
            return CreditSpend::Exhausted(credits);
        }
        *stored = Credits { remaining: credits.remaining - cost, ..credits };
        CreditSpend::Spent(*stored)
    }

    pub(super) fn refund_owner_credits(&mut self, tenant: &Tenant, owner_id: &str, cost: u64) {
        if let Some(stored) = self.owner_credits_mut(tenant, owner_id) {
            *stored = refunded(*stored, cost);
        }
    }
}

/// `credits` with `cost` given back, up to [`Credits::MAX`] (never lower
/// than they were).
fn refunded(credits: Credits, cost: u64) -> Credits {
    let remaining = credits.remaining.saturating_add(cost).min(Credits::MAX.max(credits.remaining));
    Credits { remaining, ..credits }
}

/// `credits` topped up by `amount`, or `InvalidInput` past [`Credits::MAX`].
fn topped_up(credits: Credits, amount: u64) -> Result<Credits> {
    let remaining = credits
        .remaining
        .checked_add(amount)
        .filter(|sum| *sum <= Credits::MAX)
        .ok_or_else(|| Error::invalid("amount", format!("credits would pass {}", Credits::MAX)))?;
    Ok(Credits { remaining, ..credits })
}

fn apply_transition(key: &mut Key, transition: &Transition) -> Result<()> {
    if !transition.from.contains(&key.state) {
        return Err(Error::InvalidTransition { from: key.state, to: transition.to });
    }
    key.state = transition.to;
    key.updated_at = transition.at;
    if transition.to != KeyState::Expired {
        // Revoked and suspended keys keep why; a reactivated key forgets it.
        key.revoked_reason.clone_from(&transition.reason);
    }
    Ok(())
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        let mut tables = self.write()?;
        tables.check_owner_limit(&key.key)?;
        tables.insert_key(key)
    }

    async fn import_keys(&self, tenant: &Tenant, keys: &[StoredKey], dry_run: bool) -> Result<Vec<ImportOutcome>> {
        let mut tables = self.write()?;
        // All or nothing: the batch goes into a copy, which replaces the
        // tables only when every key went through (and never in a dry run).
        let mut batch = tables.clone();
        let mut outcomes = Vec::with_capacity(keys.len());
        // The source ids the tenant's keys were imported from.
        let mut held_ids: HashSet<String> = batch
            .keys
            .values()
            .filter(|entry| entry.stored.key.tenant == *tenant)
            .filter_map(|entry| entry.stored.key.external_id().map(str::to_owned))
            .collect();
        for stored in keys {
            if stored.key.tenant != *tenant {
                return Err(Error::invalid("tenant", "an imported key belongs to another tenant than the import"));
            }
            let outcome = match batch.keys.get(&stored.hash) {
                Some(held) if held.stored.key.tenant == *tenant => ImportOutcome::AlreadyImported,
                Some(_) => ImportOutcome::HashTaken,
                None if stored.key.external_id().is_some_and(|id| held_ids.contains(id)) => {
                    ImportOutcome::AlreadyImported
                }
                None => match batch.check_owner_limit(&stored.key) {
                    Err(Error::OwnerKeyLimit { limit, .. }) => ImportOutcome::OwnerKeyLimit { limit },
                    Err(error) => return Err(error),
                    Ok(()) => {
                        batch.insert_key(stored)?;
                        held_ids.extend(stored.key.external_id().map(str::to_owned));
                        ImportOutcome::Imported
                    }
                },
            };
            outcomes.push(outcome);
        }
        if !dry_run {
            *tables = batch;
        }
        Ok(outcomes)
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        self.read().map(|tables| tables.keys.get(hash).map(|entry| entry.stored.clone()))
    }

    fn find_key_by_hash_ready(&self, hash: &KeyHash) -> Option<Result<Option<StoredKey>>> {
        Some(self.read().map(|tables| tables.keys.get(hash).map(|entry| entry.stored.clone())))
    }

    /// One probe for both: validation's lookup of a key under a policy.
    fn find_key_with_policy_ready(&self, hash: &KeyHash) -> Option<Result<KeyWithPolicy>> {
        Some(self.read().map(|tables| match tables.keys.get(hash) {
            Some(entry) => (Some(entry.stored.clone()), entry.policy.clone()),
            None => (None, None),
        }))
    }

    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        Ok(self.read()?.tenant_key(tenant, id).cloned())
    }

    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        let tables = self.read()?;
        let mut keys: Vec<&Key> = tables
            .keys
            .values()
            .map(|entry| &*entry.stored.key)
            .filter(|key| {
                key.tenant == *tenant
                    && filter.state.is_none_or(|s| key.state == s)
                    && filter.environment.is_none_or(|e| key.environment == e)
                    && filter.policy_id.is_none_or(|p| key.policy_id == Some(p))
                    && filter.owner_id.as_ref().is_none_or(|o| key.owner_id.as_ref() == Some(o))
            })
            .collect();
        keys.sort_unstable_by_key(|key| key.id);
        Ok(filter.page.apply(keys.into_iter().cloned()))
    }

    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        self.write()?.update_key(tenant, id, |key| apply_transition(key, transition))
    }

    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        let mut tables = self.write()?;
        let record = &rotation.record;
        let old = tables.tenant_key(tenant, record.key_id).ok_or_else(|| Error::not_found("key", record.key_id))?;
        if old.key.state != KeyState::Active {
            return Err(Error::InvalidTransition { from: old.key.state, to: KeyState::Rotated });
        }
        if rotation.new_key.key.tenant != *tenant || record.tenant != *tenant {
            return Err(Error::invalid("tenant", "a rotation stays within one tenant"));
        }
        tables.insert_key(&rotation.new_key)?;
        let old = tables.update_key(tenant, record.key_id, |key| {
            key.state = KeyState::Rotated;
            key.grace_expires_at = Some(record.grace_expires_at);
            key.updated_at = record.created_at;
            Ok(())
        })?;
        tables.rotations.push(record.clone());
        Ok(old)
    }

    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        self.write()?.update_key(tenant, id, |key| {
            key.scopes = scopes.to_vec();
            key.updated_at = at;
            Ok(())
        })
    }

    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        let mut tables = self.write()?;
        let tables = &mut *tables;
        if let Some(entry) = tables.by_id.get(&id).and_then(|hash| tables.keys.get_mut(hash))
            && entry.stored.key.last_used_at.is_none_or(|last| last < at)
        {
            Arc::make_mut(&mut entry.stored.key).last_used_at = Some(at);
        }
        Ok(())
    }

    async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key> {
        let mut tables = self.write()?;
        let lineage = tables.lineage_of(tenant, id)?;
        tables.store_credits(lineage, credits.copied());
        tables.key_copy(tenant, id)
    }

    async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key> {
        let mut tables = self.write()?;
        let lineage = tables.lineage_of(tenant, id)?;
        let credits = tables
            .credits
            .get(&lineage)
            .map(|c| c.as_of(now))
            .ok_or_else(|| Error::invalid("credits", "the key has no credits to add to; set them first"))?;
        tables.store_credits(lineage, Some(topped_up(credits, amount)?));
        tables.key_copy(tenant, id)
    }

    async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
        Ok(self.write()?.spend_credits(key, cost, now))
    }

    fn spend_credits_ready(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Option<Result<CreditSpend>> {
        Some(self.write().map(|mut tables| tables.spend_credits(key, cost, now)))
    }

    async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()> {
        self.write()?.refund_credits(key, cost);
        Ok(())
    }

    fn refund_credits_ready(&self, key: &Key, cost: u64) -> Option<Result<()>> {
        Some(self.write().map(|mut tables| tables.refund_credits(key, cost)))
    }

    async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>> {
        let tables = self.read()?;
        Ok(tables.owner_credits.get(tenant).and_then(|owners| owners.get(owner_id)).copied())
    }

    async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()> {
        let mut tables = self.write()?;
        match credits {
            Some(credits) => {
                tables.owner_credits.entry(tenant.clone()).or_default().insert(owner_id.to_owned(), *credits);
            }
            None => {
                if let Some(owners) = tables.owner_credits.get_mut(tenant) {
                    owners.remove(owner_id);
                    if owners.is_empty() {
                        tables.owner_credits.remove(tenant);
                    }
                }
            }
        }
        Ok(())
    }

    async fn add_owner_credits(
        &self, tenant: &Tenant, owner_id: &str, amount: u64, now: DateTime<Utc>,
    ) -> Result<Credits> {
        let mut tables = self.write()?;
        let stored = tables
            .owner_credits_mut(tenant, owner_id)
            .ok_or_else(|| Error::invalid("credits", "the owner has no credits to add to; set them first"))?;
        *stored = topped_up(stored.as_of(now), amount)?;
        Ok(*stored)
    }

    async fn spend_owner_credits(
        &self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>,
    ) -> Result<CreditSpend> {
        Ok(self.write()?.spend_owner_credits(tenant, owner_id, cost, now))
    }

    fn spend_owner_credits_ready(
        &self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>,
    ) -> Option<Result<CreditSpend>> {
        // Every request of an owner's key asks: an owner without credits
        // takes only the read lock.
        let has_credits = |tables: RwLockReadGuard<'_, Tables>| {
            tables.owner_credits.get(tenant).is_some_and(|owners| owners.contains_key(owner_id))
        };
        match self.read().map(has_credits) {
            Ok(false) => Some(Ok(CreditSpend::Unlimited)),
            Ok(true) => Some(self.write().map(|mut tables| tables.spend_owner_credits(tenant, owner_id, cost, now))),
            Err(error) => Some(Err(error)),
        }
    }

    async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()> {
        self.write()?.refund_owner_credits(tenant, owner_id, cost);
        Ok(())
    }

    fn refund_owner_credits_ready(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Option<Result<()>> {
        Some(self.write().map(|mut tables| tables.refund_owner_credits(tenant, owner_id, cost)))
    }

    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        let tables = self.read()?;
        let mut due: Vec<&Key> = tables
            .keys
            .values()
            .map(|entry| &*entry.stored.key)
            .filter(|key| match key.state {
                KeyState::Active => {
                    let max_age = key.policy_id.and_then(|id| tables.policies.get(&id)).and_then(|p| p.max_key_age);
                    key.expires_at.is_some_and(|at| at <= now) || crate::key::past_max_age(key, max_age, now)
                }
                KeyState::Rotated => key.grace_expires_at.is_some_and(|at| at <= now),
                _ => false,
            })
            .collect();
        due.sort_unstable_by_key(|key| key.id);
        Ok(due.into_iter().take(limit as usize).cloned().collect())
    }
}
