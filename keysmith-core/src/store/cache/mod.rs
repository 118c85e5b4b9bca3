//! A read-through cache for validation's reads: the lookup by hash (found
//! and not found) with the key's policy, policies, and owners known to have
//! no credits. Writes never pass through it: the engine applies every
//! [`Change`] it commits (and every one its change feed reports) with
//! [`CachedStore::apply_change`].

mod config;
mod tier;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

pub use config::{CacheConfig, CacheStats};
use tier::{Entry, Hashing, Tier, TierKey, TierValue};

use super::{KeyStore, PolicyStore, Store, StoredKey};
use crate::feed::Change;
use crate::limit::Subject;
use crate::{CreditSpend, KeyHash, KeyId, Policy, PolicyId, Result, Tenant};

/// Serves validation's reads from memory, in front of any store `S`: the
/// key lookup by hash (including "no such key", so a flood of made-up keys
/// does not reach the database) with the key's policy, policies, and owners
/// known to have no credits (so that a key of an owner without credits
/// under a policy with `limit_by: owner` costs no store call either). On a
/// warm cache, validation does no store I/O, and keeps validating such keys
/// while the store is down.
///
/// It wraps reads only. An engine built
/// [`with_cache`](crate::EngineBuilder::with_cache) owns one and keeps it
/// fresh: every change the engine commits is applied to it
/// ([`apply_change`](Self::apply_change)) before the call that made it
/// returns, as is every change its [change feed](crate::feed) reports from
/// other engines. So once a change made through the engine has returned, no
/// validation on it answers the old state: a lookup that read the store
/// before the change is not cached (a write that races a fill wins).
///
/// Only the absence of owner credits is cached: an owner with a balance
/// spends it in the store on every request, exactly, as without the cache.
/// [`spend_owner_credits`](Self::spend_owner_credits) for a remembered
/// owner answers [`CreditSpend::Unlimited`] (what the store answers for an
/// owner without credits) without asking the store; a store answer of
/// `Unlimited` is what fills the entry.
///
/// **Staleness bound.** Changes made elsewhere and not reported to it (by
/// an instance without a shared feed, or SQL by hand) are seen here at most
/// the positive TTL later (30 s by default): a key revoked elsewhere can
/// validate here for up to that long, and an owner given credits elsewhere
/// spends nothing here for up to that long. A key created elsewhere is
/// found at once unless its exact hash was looked up and missed within the
/// negative TTL, which needs its secret. A cached key's `last_used_at` is
/// the last use this engine queued for writing, or the store's.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use keysmith_core::store::CacheConfig;
/// use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext};
///
/// let config = CacheConfig::default().with_positive_ttl(Duration::from_secs(10));
/// let engine = Engine::builder(MemoryStore::new()).with_cache(config).build()?;
///
/// let acme = engine.tenant("my-app", "acme");
/// let created = acme.create_key(NewKey::new("ci")).await?;
/// let ctx = RequestContext::new();
/// assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok()); // from the store
/// assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok()); // from the cache
/// acme.revoke_key(created.key.id, "done").await?; // drops the cached key
/// assert!(engine.validate(created.raw.expose(), &ctx).await.is_err());
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
pub struct CachedStore<S: ?Sized = dyn Store> {
    inner: Arc<S>,
    config: CacheConfig,
    keys: Tier<KeyHash, KeyLookup>,
    /// Which hash a key id has, to find the entry a change makes stale.
    hashes: Cache<KeyId, KeyHash, Hashing>,
    policies: Tier<PolicyId, Arc<Policy>>,
    /// Owners found to have no credits, by [`Subject::storage_key`] (unique
    /// per tenant and owner).
    owners: Tier<String, ()>,
    /// Bumped by every invalidation: a lookup that raced one does not keep
    /// what it read (it may predate the change).
    generation: AtomicU64,
    /// Bumped by every policy invalidation: a key's remembered policy
    /// ([`KeyLookup::policy`]) of an older epoch is not used.
    policy_epoch: AtomicU64,
    /// Set while a change feed that should keep this cache fresh is down:
    /// found entries then live the outage TTL.
    outage: AtomicBool,
}

/// A cached lookup by hash: the key found (or not), and the key's policy
/// once a validation resolved it, so that the next validation finds both
/// with one probe.
#[derive(Clone)]
struct KeyLookup {
    found: Option<StoredKey>,
    /// The found key's lineage, beside it so that finding a lineage's
    /// entries reads no key: a scan then touches the table alone, 2 to 6
    /// times faster over 100 000 entries than through each `Arc<Key>`.
    lineage: Option<KeyId>,
    policy: Option<PolicyMemo>,
}

/// Validation's cached lookup: the key found (or not) and, when cached,
/// its policy with the key's scopes narrowed to it.
pub(crate) type KeyAndPolicy = (Option<StoredKey>, Option<(Arc<Policy>, Option<Arc<[String]>>)>);

/// A key's policy as the policy table held it: valid while no policy was
/// invalidated since (`epoch`) and until the policy entry's own expiry.
#[derive(Clone)]
struct PolicyMemo {
    policy: Arc<Policy>,
    /// The key's scopes narrowed to the policy's
    /// ([`scope::narrow`](crate::scope::narrow)): decided once per key and
    /// policy, and kept with the policy only on the key it was decided for.
    narrowed: Option<Arc<[String]>>,
    epoch: u64,
    expires_at: u64,
}

impl<S: fmt::Debug + ?Sized> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("cached_keys", &self.keys.entry_count())
            .field("cached_policies", &self.policies.entry_count())
            .field("cached_owners", &self.owners.entry_count())
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore + PolicyStore + ?Sized> CachedStore<S> {
    /// A cache with the default [`CacheConfig`] in front of `inner`.
    #[must_use]
    pub fn new(inner: Arc<S>) -> Self {
        Self::with_config(inner, CacheConfig::default())
    }

    /// A cache configured by `config` in front of `inner`.
    #[must_use]
    pub fn with_config(inner: Arc<S>, config: CacheConfig) -> Self {
        let keys = Tier::new(config.max_keys, Arc::clone(&config.clock));
        let hashes = Cache::builder()
            .max_capacity(config.max_keys)
            .time_to_live(config.positive_ttl.max(Duration::from_secs(1)))
            .build_with_hasher(Hashing::default());
        let policies = Tier::new(config.max_policies, Arc::clone(&config.clock));
        let owners = Tier::new(config.max_keys, Arc::clone(&config.clock));
        Self {
            inner,
            config,
            keys,
            hashes,
            policies,
            owners,
            generation: AtomicU64::new(0),
            policy_epoch: AtomicU64::new(0),
            outage: AtomicBool::new(false),
        }
    }

    /// The store behind the cache.
    #[must_use]
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Forgets everything (after changing the database by hand, say).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.policy_epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate_all();
        self.policies.invalidate_all();
        self.owners.invalidate_all();
    }

    /// Drops what `change` makes stale. The engine calls this for every
    /// change it commits and every change its change feed reports; call it
    /// yourself when you carry changes to a cache you built by hand.
    pub async fn apply_change(&self, change: &Change) {
        match change {
            Change::Key { tenant, key_id, hash } => {
                // Without the hash, the id index or the store finds it.
                match hash {
                    Some(hash) => self.forget_hash(hash),
                    None => self.forget_key(tenant, *key_id).await,
                }
            }
            Change::Rotated { old_hash, new_hash, .. } => {
                self.forget_hash(old_hash);
                self.forget_hash(new_hash);
            }
            Change::Lineage { tenant, lineage_id } => self.forget_lineage(tenant, *lineage_id),
            Change::Policy { policy_id, .. } => self.forget_policy(*policy_id),
            Change::Owner { tenant, owner_id } => self.forget_owner(tenant, owner_id),
            // The feed is alive; nothing changed.
            Change::Heartbeat => {}
            // Anything may be stale: keep nothing.
            Change::Unknown => self.invalidate_all(),
        }
    }

    /// How many entries are cached now, and for how long new ones are kept.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            keys: self.keys.len() as u64,
            policies: self.policies.len() as u64,
            owners: self.owners.len() as u64,
            positive_ttl: self.found_ttl(),
        }
    }

    /// The change feed is down (or not yet up): keep found entries only for
    /// the outage TTL, and drop what may have missed a change.
    pub(crate) fn feed_lost(&self) {
        self.outage.store(true, Ordering::SeqCst);
        self.invalidate_all();
    }

    /// The change feed is up again: drop what was cached while changes
    /// could be missed, then go back to the positive TTL.
    pub(crate) fn feed_restored(&self) {
        self.invalidate_all();
        self.outage.store(false, Ordering::SeqCst);
    }

    /// The key whose secret hashes to `hash` (of any tenant), from the cache
    /// or else the store.
    ///
    /// # Errors
    /// The store's, on a miss.
    pub async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        match self.find_key_by_hash_ready(hash) {
            Some(found) => Ok(found),
            None => self.load_key(hash).await,
        }
    }

    /// The cached lookup of `hash` (found or not found) within its TTL;
    /// `None` on a miss.
    #[must_use]
    pub fn find_key_by_hash_ready(&self, hash: &KeyHash) -> Option<Option<StoredKey>> {
        self.fresh(&self.keys, hash).map(|lookup| lookup.found)
    }

    /// Validation's lookup: the key cached for `hash` (`None` on a miss)
    /// and, when cached with it or in the policy table, the key's policy
    /// (`None` inside: ask [`get_policy`](Self::get_policy)). A policy found
    /// in the table is remembered with the key, so that the next lookup is
    /// one probe.
    #[must_use]
    pub fn find_key_and_policy_ready(&self, hash: &KeyHash) -> Option<(Option<StoredKey>, Option<Arc<Policy>>)> {
        self.find_key_and_policy_narrowed_ready(hash).map(|(found, policy)| (found, policy.map(|(policy, _)| policy)))
    }

    /// [`find_key_and_policy_ready`](Self::find_key_and_policy_ready) with
    /// the key's scopes narrowed to its policy's, kept with the policy.
    pub(crate) fn find_key_and_policy_narrowed_ready(&self, hash: &KeyHash) -> Option<KeyAndPolicy> {
        let now = self.config.clock.coarse_nanos();
        let lookup = self.keys.get(hash, now)?;
        let Some(key) = lookup.found.as_ref().map(|stored| &stored.key) else { return Some((None, None)) };
        let Some(policy_id) = key.policy_id else { return Some((lookup.found, None)) };
        let epoch = self.policy_epoch.load(Ordering::SeqCst);
        if let Some(memo) = &lookup.policy
            && memo.epoch == epoch
            && memo.expires_at > now
            && memo.policy.id == policy_id
        {
            let policy = (Arc::clone(&memo.policy), memo.narrowed.clone());
            return Some((lookup.found, Some(policy)));
        }
        let Some(entry) = self.policies.get_entry(&policy_id, now) else { return Some((lookup.found, None)) };
        if entry.value.tenant != key.tenant {
            return Some((lookup.found, None));
        }
        let narrowed = crate::scope::narrow(&key.scopes, &entry.value.allowed_scopes);
        let memo = PolicyMemo {
            policy: Arc::clone(&entry.value),
            narrowed: narrowed.clone(),
            epoch,
            expires_at: entry.expires_at,
        };
        // In place, never re-inserted, and only on the key whose scopes were
        // narrowed (an entry replaced meanwhile holds another `Arc`); a
        // policy changed since `epoch` was read makes the memo unused.
        let key = Arc::clone(key);
        self.keys.update(hash, |cached| {
            if cached.found.as_ref().is_some_and(|stored| Arc::ptr_eq(&stored.key, &key)) {
                cached.policy = Some(memo);
            }
        });
        Some((lookup.found, Some((entry.value, narrowed))))
    }

    /// Asks the store for `hash`, without probing the cache first (the
    /// caller just did), and caches the answer unless a change ran
    /// meanwhile.
    ///
    /// # Errors
    /// The store's.
    pub async fn load_key(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.inner.find_key_by_hash(hash).await?;
        let ttl = if found.is_some() { self.found_ttl() } else { self.config.negative_ttl };
        if let Some(stored) = &found {
            self.hashes.insert(stored.key.id, *hash);
        }
        // A change made while we were reading may not be in what we read:
        // then it is not cached (the answer still goes to this caller, whose
        // lookup began before the change returned).
        let lineage = found.as_ref().map(|stored| stored.key.lineage_id);
        let entry =
            Entry { value: KeyLookup { found: found.clone(), lineage, policy: None }, expires_at: self.expiry(ttl) };
        self.keys.insert_unless_invalidated(*hash, entry, &self.generation, generation);
        Ok(found)
    }

    /// The tenant's policy `id`, from the cache or else the store.
    ///
    /// # Errors
    /// The store's, on a miss.
    pub async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        match self.get_policy_ready(tenant, id) {
            Some(policy) => Ok(policy),
            None => self.load_policy(tenant, id).await,
        }
    }

    /// Asks the store for the tenant's policy `id`, without probing the
    /// cache first (the caller just did), and caches it unless a change ran
    /// meanwhile.
    ///
    /// # Errors
    /// The store's.
    pub async fn load_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.inner.get_policy(tenant, id).await?;
        if let Some(policy) = &found {
            let entry = Entry { value: Arc::clone(policy), expires_at: self.expiry(self.found_ttl()) };
            self.policies.insert_unless_invalidated(id, entry, &self.generation, generation);
        }
        Ok(found)
    }

    /// The tenant's policy `id` if cached (`Some(None)`: it is another
    /// tenant's); `None` on a miss.
    #[must_use]
    pub fn get_policy_ready(&self, tenant: &Tenant, id: PolicyId) -> Option<Option<Arc<Policy>>> {
        // Ids are unique across tenants: another tenant's is not yours.
        self.fresh(&self.policies, &id).map(|policy| Some(policy).filter(|p| p.tenant == *tenant))
    }

    /// Spends `cost` of the owner's credits in the store, unless the owner
    /// is remembered as having none ([`CreditSpend::Unlimited`] at once).
    ///
    /// # Errors
    /// The store's.
    pub async fn spend_owner_credits(
        &self, tenant: &Tenant, owner_id: &str, cost: u64, now: chrono::DateTime<chrono::Utc>,
    ) -> Result<CreditSpend> {
        let (owner, generation) = match self.owner_spend(tenant, owner_id) {
            Ok(remembered) => return Ok(remembered),
            Err(asking) => asking,
        };
        let spent = self.inner.spend_owner_credits(tenant, owner_id, cost, now).await;
        self.spent_by_store(owner, generation, &spent);
        spent
    }

    /// [`spend_owner_credits`](Self::spend_owner_credits) answered at once,
    /// when the owner is remembered or the store answers without I/O.
    pub fn spend_owner_credits_ready(
        &self, tenant: &Tenant, owner_id: &str, cost: u64, now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Result<CreditSpend>> {
        let (owner, generation) = match self.owner_spend(tenant, owner_id) {
            Ok(remembered) => return Some(Ok(remembered)),
            Err(asking) => asking,
        };
        let spent = self.inner.spend_owner_credits_ready(tenant, owner_id, cost, now)?;
        self.spent_by_store(owner, generation, &spent);
        Some(spent)
    }

    /// Key `id` was used at `at` (the engine queued its `last_used_at`
    /// write): the cached key says so too, so that the next validations
    /// know the write is queued without asking the engine's own map. In
    /// place, never re-inserted: a change racing this either removed the
    /// entry already (nothing to update) or removes the updated one.
    pub(crate) fn touched(&self, id: KeyId, at: chrono::DateTime<chrono::Utc>) {
        let Some(hash) = self.hashes.get(&id) else { return };
        self.keys.update(&hash, |lookup| {
            if let Some(stored) = &mut lookup.found
                && stored.key.id == id
                && stored.key.last_used_at.is_none_or(|last| last < at)
            {
                Arc::make_mut(&mut stored.key).last_used_at = Some(at);
            }
        });
    }

    fn found_ttl(&self) -> Duration {
        if self.outage.load(Ordering::SeqCst) { self.config.outage_ttl() } else { self.config.positive_ttl }
    }

    /// When an entry stored now with `ttl` goes stale; a TTL too large to
    /// add is stale at once, as before any time arithmetic could overflow.
    fn expiry(&self, ttl: Duration) -> u64 {
        let now = self.config.clock.coarse_nanos();
        u64::try_from(ttl.as_nanos()).ok().and_then(|ttl| now.checked_add(ttl)).unwrap_or(now)
    }

    /// What `tier` holds for `key`, unless it has gone stale.
    fn fresh<K: TierKey, V: TierValue>(&self, tier: &Tier<K, V>, key: &K) -> Option<V> {
        tier.get(key, self.config.clock.coarse_nanos())
    }

    fn forget_hash(&self, hash: &KeyHash) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate(hash);
    }

    /// Drops the cached lookup of key `id`, after a change to it. The
    /// generation is bumped even when the hash cannot be found, so a lookup
    /// that read before the change never caches what it read.
    async fn forget_key(&self, tenant: &Tenant, id: KeyId) {
        let hash = match self.hashes.get(&id) {
            Some(hash) => Some(hash),
            // The id index may have lost the entry while the lookup is
            // still cached: ask the store (writes are rare, this is cheap).
            None => self.inner.get_key(tenant, id).await.ok().flatten().map(|stored| stored.hash),
        };
        match hash {
            Some(hash) => self.forget_hash(&hash),
            None => {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Drops every cached key of the lineage, after a change to what its
    /// keys share (credits). The cache keeps no index by lineage (one would
    /// have to follow every insertion, expiry and eviction): the keys table
    /// is scanned under its shards' read locks, which hits share, so
    /// validations go on meanwhile. Lineage changes are management writes
    /// (credits set or topped up), and a scan costs a few milliseconds per
    /// 100 000 cached keys.
    ///
    /// A lookup that read before the change and inserts during the scan is
    /// either refused by the generation (bumped first) or inserted before
    /// the scan reaches its shard, whose lock it holds while inserting.
    fn forget_lineage(&self, tenant: &Tenant, lineage: KeyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let stale: Vec<KeyHash> = self
            .keys
            .front
            .iter()
            .filter(|entry| {
                entry.value.lineage == Some(lineage)
                    && entry.value.found.as_ref().is_some_and(|stored| stored.key.tenant == *tenant)
            })
            .map(|entry| *entry.key())
            .collect();
        for hash in &stale {
            self.keys.invalidate(hash);
        }
    }

    fn forget_policy(&self, id: PolicyId) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.policy_epoch.fetch_add(1, Ordering::SeqCst);
        self.policies.invalidate(&id);
    }

    /// After a change to the owner's credits: the next spend asks the store,
    /// and a spend that read before the change does not remember what it
    /// read.
    fn forget_owner(&self, tenant: &Tenant, owner_id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.owners.invalidate(&owner_key(tenant, owner_id));
    }

    /// A spend of the owner's credits: `Ok` with the answer when the owner
    /// is remembered as having none, else `Err` with its cache key and the
    /// generation to hand [`spent_by_store`](Self::spent_by_store) once the
    /// store answered.
    fn owner_spend(&self, tenant: &Tenant, owner_id: &str) -> std::result::Result<CreditSpend, (String, u64)> {
        let owner = owner_key(tenant, owner_id);
        if self.fresh(&self.owners, &owner).is_some() {
            return Ok(CreditSpend::Unlimited);
        }
        Err((owner, self.generation.load(Ordering::SeqCst)))
    }

    /// Remembers that the owner has no credits when the store, asked at
    /// `generation`, answered so, unless its credits changed since.
    fn spent_by_store(&self, owner: String, generation: u64, spent: &Result<CreditSpend>) {
        if matches!(spent, Ok(CreditSpend::Unlimited)) {
            let entry = Entry { value: (), expires_at: self.expiry(self.found_ttl()) };
            self.owners.insert_unless_invalidated(owner, entry, &self.generation, generation);
        }
    }
}

/// The owner cache's key for `owner_id` of `tenant`.
fn owner_key(tenant: &Tenant, owner_id: &str) -> String {
    Subject::Owner { tenant, owner_id }.storage_key()
}
