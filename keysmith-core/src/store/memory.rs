//! An in-process store: complete, tenant-filtered, and atomic (one lock
//! guards every table, so multi-table writes are all or nothing).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ImportOutcome, KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, Store, StoredKey,
    TimeRange, Transition, UsageStore, UsageTotal,
};
use crate::usage::{UsageBatch, UsageCounts, UsageDelta, fold_rollups};
use crate::{
    CreditSpend, Credits, Error, Key, KeyHash, KeyId, KeyState, Period, Policy, PolicyId, Result, RotationRecord,
    Scope, ScopeId, Tenant, UsageAggregate, UsageRecord,
};

/// Keeps everything in memory; for tests, demos and single-process apps
/// that can lose their keys on restart.
///
/// Usage roll-ups (hourly, daily and monthly) are kept until
/// [`Engine::sweep`](crate::Engine::sweep) deletes expired ones (hourly
/// roll-ups, by its [`UsageRetention`](crate::usage::UsageRetention)); of
/// the individual usage records only the most recent are kept, 10 000 by
/// default ([`with_usage_retention`](Self::with_usage_retention)), and the
/// sweeper deletes older ones too, so a long-running process does not grow
/// without bound. A replayed batch counts once as long as its records are
/// still retained.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, MemoryStore};
///
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// # Ok::<(), keysmith_core::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    tables: RwLock<Tables>,
    /// Usage has its own lock, so writing a batch never holds up validation.
    usage: RwLock<UsageTables>,
    closed: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct Tables {
    /// Keys by hash: validation's lookup is one probe.
    keys: HashMap<KeyHash, StoredKey, foldhash::fast::RandomState>,
    /// Management finds keys by id through this index.
    by_id: HashMap<KeyId, KeyHash, foldhash::fast::RandomState>,
    /// The keys of each lineage, for quota counts.
    lineages: HashMap<KeyId, Vec<KeyId>, foldhash::fast::RandomState>,
    /// The keys of each owner, for quota counts under `limit_by: owner`.
    owners: HashMap<(Tenant, String), Vec<KeyId>, foldhash::fast::RandomState>,
    /// Credits by lineage; every key of the lineage carries a copy.
    credits: HashMap<KeyId, Credits, foldhash::fast::RandomState>,
    /// Credits shared by an owner's keys, by tenant and owner id (two
    /// levels, so that a request's lookup borrows its ids).
    owner_credits: HashMap<Tenant, HashMap<String, Credits, foldhash::fast::RandomState>, foldhash::fast::RandomState>,
    policies: HashMap<PolicyId, Arc<Policy>, foldhash::fast::RandomState>,
    scopes: BTreeMap<ScopeId, Scope>,
    rotations: Vec<RotationRecord>,
}

#[derive(Debug)]
struct UsageTables {
    /// The most recent records, in the order they were written.
    records: VecDeque<UsageRecord>,
    /// The ids in `records`, so a replayed record counts once.
    ids: HashSet<crate::UsageId, foldhash::fast::RandomState>,
    /// How many records `records` keeps.
    retention: usize,
    aggregates: HashMap<(KeyId, Period, DateTime<Utc>), UsageAggregate, foldhash::fast::RandomState>,
    /// The batches whose deltas were added, with their latest hour, so a
    /// replayed batch adds them once; swept with the raw records.
    batches: HashMap<crate::UsageId, DateTime<Utc>, foldhash::fast::RandomState>,
}

impl UsageTables {
    fn new(retention: usize) -> Self {
        Self {
            records: VecDeque::new(),
            ids: HashSet::default(),
            retention,
            aggregates: HashMap::default(),
            batches: HashMap::default(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_usage_retention(MemoryStore::DEFAULT_USAGE_RETENTION)
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many individual usage records [`new`](Self::new) keeps.
    pub const DEFAULT_USAGE_RETENTION: usize = 10_000;

    /// An empty store that keeps the `records` most recent usage records
    /// (roll-ups are always kept whole).
    #[must_use]
    pub fn with_usage_retention(records: usize) -> Self {
        Self {
            tables: RwLock::default(),
            usage: RwLock::new(UsageTables::new(records)),
            closed: AtomicBool::new(false),
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Tables>> {
        self.check_open()?;
        Ok(self.tables.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Tables>> {
        self.check_open()?;
        Ok(self.tables.write().unwrap_or_else(PoisonError::into_inner))
    }

    fn read_usage(&self) -> Result<RwLockReadGuard<'_, UsageTables>> {
        self.check_open()?;
        Ok(self.usage.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write_usage(&self) -> Result<RwLockWriteGuard<'_, UsageTables>> {
        self.check_open()?;
        Ok(self.usage.write().unwrap_or_else(PoisonError::into_inner))
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::store("the memory store is closed"));
        }
        Ok(())
    }
}

impl Tables {
    fn policy(&self, tenant: &Tenant, id: PolicyId) -> Option<Arc<Policy>> {
        self.policies.get(&id).filter(|p| p.tenant == *tenant).cloned()
    }

    fn tenant_key(&self, tenant: &Tenant, id: KeyId) -> Option<&StoredKey> {
        self.by_id.get(&id).and_then(|hash| self.keys.get(hash)).filter(|stored| stored.key.tenant == *tenant)
    }

    fn update_key(&mut self, tenant: &Tenant, id: KeyId, change: impl FnOnce(&mut Key) -> Result<()>) -> Result<Key> {
        let stored = self.tenant_key(tenant, id).ok_or_else(|| Error::not_found("key", id))?;
        let mut key = Key::clone(&stored.key);
        change(&mut key)?;
        let hash = stored.hash;
        self.keys.insert(hash, StoredKey { key: Arc::new(key.clone()), hash });
        Ok(key)
    }

    fn check_policy(&self, tenant: &Tenant, id: Option<PolicyId>) -> Result<()> {
        match id {
            Some(id) if self.policies.get(&id).is_none_or(|p| p.tenant != *tenant) => {
                Err(Error::not_found("policy", id))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a new live key of an owner who holds as many live keys under
    /// the key's policy as it allows (under the write lock: atomic).
    fn check_owner_limit(&self, key: &Key) -> Result<()> {
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
            .map(|stored| &*stored.key)
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
    fn insert_key(&mut self, stored: &StoredKey) -> Result<()> {
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
        self.keys.insert(stored.hash, stored.clone());
        self.store_credits(lineage, credits);
        Ok(())
    }

    /// Stores the lineage's credits and the copy every key of it carries.
    fn store_credits(&mut self, lineage: KeyId, credits: Option<Credits>) {
        match credits {
            Some(credits) => self.credits.insert(lineage, credits),
            None => self.credits.remove(&lineage),
        };
        for id in self.lineages.get(&lineage).into_iter().flatten() {
            if let Some(stored) = self.by_id.get(id).and_then(|hash| self.keys.get_mut(hash))
                && stored.key.credits != credits
            {
                Arc::make_mut(&mut stored.key).credits = credits;
            }
        }
    }

    /// The lineage of the tenant's key `id`.
    fn lineage_of(&self, tenant: &Tenant, id: KeyId) -> Result<KeyId> {
        self.tenant_key(tenant, id).map(|stored| stored.key.lineage_id).ok_or_else(|| Error::not_found("key", id))
    }

    fn key_copy(&self, tenant: &Tenant, id: KeyId) -> Result<Key> {
        self.tenant_key(tenant, id).map(|stored| Key::clone(&stored.key)).ok_or_else(|| Error::not_found("key", id))
    }

    fn spend_credits(&mut self, key: &Key, cost: u64, now: DateTime<Utc>) -> CreditSpend {
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

    fn refund_credits(&mut self, key: &Key, cost: u64) {
        if let Some(credits) = self.credits.get(&key.lineage_id).copied() {
            self.store_credits(key.lineage_id, Some(refunded(credits, cost)));
        }
    }

    fn owner_credits_mut(&mut self, tenant: &Tenant, owner_id: &str) -> Option<&mut Credits> {
        self.owner_credits.get_mut(tenant)?.get_mut(owner_id)
    }

    fn spend_owner_credits(&mut self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>) -> CreditSpend {
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

    fn refund_owner_credits(&mut self, tenant: &Tenant, owner_id: &str, cost: u64) {
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
        for stored in keys {
            if stored.key.tenant != *tenant {
                return Err(Error::invalid("tenant", "an imported key belongs to another tenant than the import"));
            }
            let outcome = match batch.keys.get(&stored.hash) {
                Some(held) if held.key.tenant == *tenant => ImportOutcome::AlreadyImported,
                Some(_) => ImportOutcome::HashTaken,
                None => match batch.check_owner_limit(&stored.key) {
                    Err(Error::OwnerKeyLimit { limit, .. }) => ImportOutcome::OwnerKeyLimit { limit },
                    Err(error) => return Err(error),
                    Ok(()) => {
                        batch.insert_key(stored)?;
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
        self.read().map(|tables| tables.keys.get(hash).cloned())
    }

    fn find_key_by_hash_ready(&self, hash: &KeyHash) -> Option<Result<Option<StoredKey>>> {
        Some(self.read().map(|tables| tables.keys.get(hash).cloned()))
    }

    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        Ok(self.read()?.tenant_key(tenant, id).cloned())
    }

    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        let tables = self.read()?;
        let mut keys: Vec<&Key> = tables
            .keys
            .values()
            .map(|stored| &*stored.key)
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
        if let Some(stored) = tables.by_id.get(&id).and_then(|hash| tables.keys.get_mut(hash))
            && stored.key.last_used_at.is_none_or(|last| last < at)
        {
            Arc::make_mut(&mut stored.key).last_used_at = Some(at);
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
        &self,
        tenant: &Tenant,
        owner_id: &str,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<Credits> {
        let mut tables = self.write()?;
        let stored = tables
            .owner_credits_mut(tenant, owner_id)
            .ok_or_else(|| Error::invalid("credits", "the owner has no credits to add to; set them first"))?;
        *stored = topped_up(stored.as_of(now), amount)?;
        Ok(*stored)
    }

    async fn spend_owner_credits(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Result<CreditSpend> {
        Ok(self.write()?.spend_owner_credits(tenant, owner_id, cost, now))
    }

    fn spend_owner_credits_ready(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        cost: u64,
        now: DateTime<Utc>,
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
            .map(|stored| &*stored.key)
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

#[async_trait]
impl ScopeStore for MemoryStore {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        let mut tables = self.write()?;
        if tables.scopes.values().any(|s| s.tenant == scope.tenant && s.name == scope.name) {
            return Err(Error::AlreadyExists { entity: "scope", name: scope.name.clone() });
        }
        tables.scopes.insert(scope.id, scope.clone());
        Ok(())
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        let mut scopes: Vec<Scope> = self.read()?.scopes.values().filter(|s| s.tenant == *tenant).cloned().collect();
        scopes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scopes)
    }

    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        let mut tables = self.write()?;
        if tables.scopes.get(&id).is_none_or(|s| s.tenant != *tenant) {
            return Err(Error::not_found("scope", id));
        }
        tables.scopes.remove(&id);
        Ok(())
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn write_usage(&self, batch: &UsageBatch<'_>) -> Result<()> {
        let mut guard = self.write_usage()?;
        let tables = &mut *guard;
        let mut fresh = Vec::with_capacity(batch.records.len());
        for record in batch.records {
            // Idempotent per record id, like the SQL stores: a replayed batch counts once.
            if !tables.ids.insert(record.id) {
                continue;
            }
            tables.records.push_back(record.clone());
            while tables.records.len() > tables.retention {
                if let Some(oldest) = tables.records.pop_front() {
                    tables.ids.remove(&oldest.id);
                }
            }
            fresh.push(record);
        }
        // Deltas count once per batch id.
        let deltas: &[UsageDelta] = if batch.deltas.is_empty() {
            &[]
        } else {
            let written = batch.deltas.iter().map(|d| d.hour).max().unwrap_or_default();
            match tables.batches.entry(batch.id) {
                std::collections::hash_map::Entry::Occupied(_) => &[],
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(written);
                    batch.deltas
                }
            }
        };
        for ((key_id, period, start), tenant, counts) in fold_rollups(fresh, deltas) {
            tables
                .aggregates
                .entry((key_id, period, start))
                .or_insert_with(|| UsageAggregate::empty(key_id, tenant.tenant().clone(), period, start))
                .add(&counts);
        }
        Ok(())
    }

    async fn delete_usage_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut guard = self.write_usage()?;
        let tables = &mut *guard;
        let mut left = limit;
        let ids = &mut tables.ids;
        let first = crate::UsageId::first_uuid_at(before);
        tables.records.retain(|r| {
            if left > 0 && r.id.uuid() < first {
                left -= 1;
                ids.remove(&r.id);
                false
            } else {
                true
            }
        });
        tables.batches.retain(|_, written| *written >= before);
        Ok(u64::from(limit - left))
    }

    async fn delete_aggregates_before(&self, period: Period, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut guard = self.write_usage()?;
        let mut left = limit;
        guard.aggregates.retain(|(_, p, start), _| {
            if left > 0 && *p == period && *start < before {
                left -= 1;
                false
            } else {
                true
            }
        });
        Ok(u64::from(limit - left))
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        let tables = self.read_usage()?;
        let mut records: Vec<&UsageRecord> = tables
            .records
            .iter()
            .filter(|r| r.key_id == key_id && r.tenant == *tenant && range.contains(r.timestamp))
            .collect();
        // Oldest first, as the SQL stores list them.
        records.sort_unstable_by_key(|r| (r.timestamp, r.id));
        Ok(page.apply(records.into_iter().cloned()))
    }

    async fn usage_aggregates(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let tables = self.read_usage()?;
        let mut aggregates: Vec<UsageAggregate> = tables
            .aggregates
            .values()
            .filter(|a| {
                a.key_id == key_id && a.tenant == *tenant && a.period == period && range.contains(a.period_start)
            })
            .cloned()
            .collect();
        aggregates.sort_unstable_by_key(|a| a.period_start);
        Ok(aggregates)
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        Ok(self.read_usage()?.totals(tenant, period, range, |_| true))
    }

    async fn lineage_usage(
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let members = self.read()?.lineages.get(&lineage).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }

    async fn owner_usage(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let owner = (tenant.clone(), owner_id.to_owned());
        let members = self.read()?.owners.get(&owner).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }
}

impl UsageTables {
    /// The tenant's aggregates of keys that `counted`, summed per period start.
    fn totals(
        &self,
        tenant: &Tenant,
        period: Period,
        range: TimeRange,
        counted: impl Fn(KeyId) -> bool,
    ) -> Vec<UsageTotal> {
        let mut totals: BTreeMap<DateTime<Utc>, UsageCounts> = BTreeMap::new();
        for a in self.aggregates.values() {
            if a.tenant == *tenant && a.period == period && range.contains(a.period_start) && counted(a.key_id) {
                totals.entry(a.period_start).or_default().add(&a.counts());
            }
        }
        totals.into_iter().map(|(start, counts)| UsageTotal::new(period, start, counts)).collect()
    }
}

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

#[async_trait]
impl Store for MemoryStore {
    async fn migrate(&self) -> Result<()> {
        self.check_open()
    }

    async fn ping(&self) -> Result<()> {
        self.check_open()
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::UsageId;

    fn record(tenant: &Tenant, key_id: KeyId, minute: i64) -> UsageRecord {
        UsageRecord {
            id: UsageId::new(),
            key_id,
            tenant: tenant.into(),
            endpoint: "/things".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(1),
            timestamp: DateTime::from_timestamp(1_767_225_600 + minute * 60, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn only_the_most_recent_records_are_kept_but_every_one_is_counted() {
        let store = MemoryStore::with_usage_retention(3);
        let tenant = Tenant::new("app", "acme");
        let key_id = KeyId::new();
        let records: Vec<UsageRecord> = (0..5).map(|minute| record(&tenant, key_id, minute)).collect();
        store.record_batch(&records[..2]).await.unwrap();
        store.record_batch(&records[2..]).await.unwrap();

        let listed = store.list_usage(&tenant, key_id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(listed, records[2..].to_vec(), "the three most recent, oldest first");
        let days = store.usage_aggregates(&tenant, key_id, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 5, "roll-ups count every record");

        // A replayed record that is still retained counts once.
        store.record_batch(&records[4..]).await.unwrap();
        let days = store.usage_aggregates(&tenant, key_id, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 5);
        let listed = store.list_usage(&tenant, key_id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(listed.len(), 3);
    }
}
