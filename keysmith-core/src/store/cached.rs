//! A cache in front of any store for the validation path: the lookup by
//! hash (found and not found), policies, and owners known to have no
//! credits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use super::{
    KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, Store, StoredKey, TimeRange,
    Transition, UsageStore, UsageTotal,
};
use crate::feed::Change;
use crate::limit::Subject;
use crate::{
    Clock, CreditSpend, Credits, Error, Key, KeyHash, KeyId, Period, Policy, PolicyId, Result, RotationRecord, Scope,
    ScopeId, SystemClock, Tenant, UsageAggregate, UsageRecord,
};

/// How much [`CachedStore`] keeps, and for how long.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    max_keys: u64,
    max_policies: u64,
    positive_ttl: Duration,
    negative_ttl: Duration,
    outage_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl Default for CacheConfig {
    /// 100 000 key lookups, 10 000 policies, found keys and policies for 30
    /// seconds (1 second while a change feed is down), unknown hashes for 5
    /// seconds, on the system clock.
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_policies: 10_000,
            positive_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            outage_ttl: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
        }
    }
}

impl CacheConfig {
    /// At most this many hash lookups (found or not) are kept, and as many
    /// owners known to have no credits.
    #[must_use]
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    /// At most this many policies are kept.
    #[must_use]
    pub fn with_max_policies(mut self, max: u64) -> Self {
        self.max_policies = max;
        self
    }

    /// How long a found key or policy, or an owner found to have no
    /// credits, is served from the cache. This bounds how stale a change
    /// made by another instance can look here.
    #[must_use]
    pub fn with_positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long "no key has this hash" is served from the cache.
    #[must_use]
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How long a found key or policy is served from the cache of an engine
    /// with a [change feed](crate::feed) while it is not subscribed (before
    /// the first subscription and during feed outages): the bound on how
    /// stale another instance's change can look here then. Default 1 second;
    /// a longer positive TTL is not shortened, a shorter one is kept.
    #[must_use]
    pub fn with_outage_ttl(mut self, ttl: Duration) -> Self {
        self.outage_ttl = ttl;
        self
    }

    /// The clock that ages entries (a [`ManualClock`](crate::ManualClock) in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a found key or policy is served from the cache.
    #[must_use]
    pub fn positive_ttl(&self) -> Duration {
        self.positive_ttl
    }

    /// How long an unknown hash is served from the cache.
    #[must_use]
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// How long a found key or policy is served while a change feed is down.
    #[must_use]
    pub fn outage_ttl(&self) -> Duration {
        self.outage_ttl.min(self.positive_ttl)
    }
}

/// What a [`CachedStore`] holds now; see [`CachedStore::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Cached hash lookups (found or not).
    pub keys: u64,
    /// Cached policies.
    pub policies: u64,
    /// Owners remembered as having no credits.
    pub owners: u64,
    /// How long a found key or policy cached now is served: the positive
    /// TTL, or the outage TTL while a change feed is down.
    pub positive_ttl: Duration,
}

/// A [`Store`] that serves validation's reads from memory: the key lookup by
/// hash (including "no such key", so a flood of made-up keys does not reach
/// the database), policies, and owners known to have no credits (so that a
/// key of an owner without credits under a policy with `limit_by: owner`
/// costs no store call either). On a warm cache, validation does no store
/// I/O, and keeps validating such keys while the store is down. Everything
/// else goes straight to the inner store.
///
/// Only the absence of owner credits is cached: an owner with a balance
/// spends it in the store on every request, exactly, as without the cache.
/// [`spend_owner_credits`](KeyStore::spend_owner_credits) for a remembered
/// owner answers [`CreditSpend::Unlimited`] (what the store answers for an
/// owner without credits) without asking the store; a store answer of
/// `Unlimited` is what fills the entry.
///
/// Every change made through this store drops what it makes stale: state
/// transitions, rotations (old key and a cached miss for the new one), scope
/// changes, key creation (a cached miss for its hash), policy updates and
/// deletions, a lineage's credits set or topped up (every key of the
/// lineage), owner credits set or topped up. `touch_key` updates the cached
/// key in place. Once a change
/// made through this store has returned, no lookup through it answers the
/// old state: a lookup that read the store before the change is not cached,
/// and a racing `touch_key` never re-inserts the key it saw.
///
/// **Staleness bound.** Changes made elsewhere (another instance, or SQL by
/// hand) are seen here at most the positive TTL later (30 s by default): a
/// key revoked by another instance can validate here for up to that long,
/// and an owner given credits elsewhere spends nothing here for up to that
/// long.
/// A key created elsewhere is found at once unless its exact hash was looked
/// up and missed within the negative TTL, which needs its secret. Lower the
/// positive TTL if revocations must bite faster across instances.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use keysmith_core::store::{CacheConfig, CachedStore};
/// use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext};
///
/// let config = CacheConfig::default().with_positive_ttl(Duration::from_secs(10));
/// let store = CachedStore::with_config(Arc::new(MemoryStore::new()), config);
/// let engine = Engine::builder(Arc::new(store)).build()?;
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
pub struct CachedStore {
    inner: Arc<dyn Store>,
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

/// The caches' hasher: keys are SHA-256 digests and random ids, so a fast
/// non-cryptographic hash (seeded per process) is enough.
type Hashing = foldhash::fast::RandomState;

/// One cached table. moka bounds it (size, TinyLFU admission, expiry) and
/// a read-mostly map in front of it serves the hits: a hit is one probe
/// under a shard's read lock, without moka's bookkeeping for each read,
/// which cost about as much as the rest of a validation. An entry leaves the
/// front map when moka evicts or expires it, or when it is invalidated, so
/// the front never holds more than moka admitted.
struct Tier<K, V> {
    front: Arc<DashMap<K, Entry<V>, Hashing>>,
    back: Cache<K, Entry<V>, Hashing>,
}

trait TierKey: std::hash::Hash + Eq + Clone + Send + Sync + 'static {}
impl<T: std::hash::Hash + Eq + Clone + Send + Sync + 'static> TierKey for T {}
trait TierValue: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> TierValue for T {}

impl<K: TierKey, V: TierValue> Tier<K, V> {
    fn new(capacity: u64, clock: Arc<dyn Clock>) -> Self {
        let front: Arc<DashMap<K, Entry<V>, Hashing>> = Arc::default();
        let evicted = Arc::clone(&front);
        let back = Cache::builder()
            .max_capacity(capacity)
            .expire_after(EntryExpiry(clock))
            .eviction_listener(move |key: Arc<K>, _, cause| {
                // Replaced and explicit removals were done to the front too.
                if matches!(cause, RemovalCause::Expired | RemovalCause::Size) {
                    evicted.remove(&*key);
                }
            })
            .build_with_hasher(Hashing::default());
        Self { front, back }
    }

    /// The value for `key` if it is fresh at `now` (clock nanoseconds); a
    /// stale entry is dropped.
    fn get(&self, key: &K, now: u64) -> Option<V> {
        self.get_entry(key, now).map(|entry| entry.value)
    }

    /// The entry for `key` (value and expiry) if it is fresh at `now`; a
    /// stale entry is dropped.
    fn get_entry(&self, key: &K, now: u64) -> Option<Entry<V>> {
        let found = self.front.get(key).map(|entry| (entry.expires_at > now).then(|| entry.clone()));
        match found {
            Some(Some(entry)) => Some(entry),
            Some(None) => {
                self.invalidate(key);
                None
            }
            None => None,
        }
    }

    /// Inserts what a read of the store found, unless an invalidation has
    /// run since the read began (`generation` is no longer `seen`): the
    /// check and the insert are one step under the front map's lock, which
    /// an invalidation also takes after bumping the generation, so a stale
    /// entry is either never inserted or removed by that invalidation. True
    /// if inserted.
    ///
    /// Front first: if moka then declines or evicts the entry, its listener
    /// takes it out of the front again.
    fn insert_unless_invalidated(&self, key: K, entry: Entry<V>, generation: &AtomicU64, seen: u64) -> bool {
        match self.front.entry(key.clone()) {
            _ if generation.load(Ordering::SeqCst) != seen => return false,
            MapEntry::Occupied(mut occupied) => {
                occupied.insert(entry.clone());
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(entry.clone());
            }
        }
        self.back.insert(key, entry);
        true
    }

    /// Changes the cached value in place, if there is one, under the front
    /// map's lock: an invalidation either runs first (nothing to change) or
    /// removes the changed entry afterwards. Nothing is ever re-inserted.
    fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        if let Some(mut entry) = self.front.get_mut(key) {
            change(&mut entry.value);
        }
    }

    fn invalidate(&self, key: &K) {
        self.front.remove(key);
        self.back.invalidate(key);
    }

    fn invalidate_all(&self) {
        self.front.clear();
        self.back.invalidate_all();
    }

    fn entry_count(&self) -> u64 {
        self.back.entry_count()
    }

    /// Exact, unlike moka's count, which lags behind invalidations.
    fn len(&self) -> usize {
        self.front.len()
    }
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

/// A key's policy as the policy table held it: valid while no policy was
/// invalidated since (`epoch`) and until the policy entry's own expiry.
#[derive(Clone)]
struct PolicyMemo {
    policy: Arc<Policy>,
    epoch: u64,
    expires_at: u64,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// Clock nanoseconds (`Clock::coarse_nanos`): checked on every hit, so
    /// read from the cheapest clock that is good to a few milliseconds.
    expires_at: u64,
}

/// Lets the cache reclaim an entry when its own expiry time passes.
struct EntryExpiry(Arc<dyn Clock>);

impl EntryExpiry {
    fn remaining<V>(&self, entry: &Entry<V>) -> Option<Duration> {
        Some(Duration::from_nanos(entry.expires_at.saturating_sub(self.0.coarse_nanos())))
    }
}

impl<K, V> Expiry<K, Entry<V>> for EntryExpiry {
    fn expire_after_create(&self, _: &K, entry: &Entry<V>, _: Instant) -> Option<Duration> {
        self.remaining(entry)
    }

    fn expire_after_update(&self, _: &K, entry: &Entry<V>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        self.remaining(entry)
    }
}

impl fmt::Debug for CachedStore {
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

impl CachedStore {
    /// A cache with the default [`CacheConfig`] in front of `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self::with_config(inner, CacheConfig::default())
    }

    /// A cache configured by `config` in front of `inner`.
    #[must_use]
    pub fn with_config(inner: Arc<dyn Store>, config: CacheConfig) -> Self {
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
    pub fn inner(&self) -> &Arc<dyn Store> {
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

    /// Drops what `change` (made by another engine, or by this one) makes
    /// stale. An engine with a [change feed](crate::feed) calls this for
    /// every change it receives; call it yourself when you carry changes to
    /// a cache you built by hand.
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

    /// The validation path's lookup: the key cached for `hash` (`None` on a
    /// miss) and, when cached with it or in the policy table, the key's
    /// policy (`None` inside: ask [`PolicyStore::get_policy`]). A policy
    /// found in the table is remembered with the key, so the next lookup
    /// is one probe.
    pub(crate) fn key_and_policy_ready(&self, hash: &KeyHash) -> Option<(Option<StoredKey>, Option<Arc<Policy>>)> {
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
            let policy = Arc::clone(&memo.policy);
            return Some((lookup.found, Some(policy)));
        }
        let Some(entry) = self.policies.get_entry(&policy_id, now) else { return Some((lookup.found, None)) };
        if entry.value.tenant != key.tenant {
            return Some((lookup.found, None));
        }
        let memo = PolicyMemo { policy: Arc::clone(&entry.value), epoch, expires_at: entry.expires_at };
        // In place, never re-inserted (as `touch_key`); a policy changed
        // since `epoch` was read makes the memo unused.
        self.keys.update(hash, |cached| {
            if cached.found.as_ref().is_some_and(|stored| stored.key.policy_id == Some(policy_id)) {
                cached.policy = Some(memo);
            }
        });
        Some((lookup.found, Some(entry.value)))
    }
}

/// The owner cache's key for `owner_id` of `tenant`.
fn owner_key(tenant: &Tenant, owner_id: &str) -> String {
    Subject::Owner { tenant, owner_id }.storage_key()
}

#[async_trait]
impl KeyStore for CachedStore {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        self.inner.insert_key(key).await?;
        self.forget_hash(&key.hash);
        Ok(())
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        if let Some(found) = self.find_key_by_hash_ready(hash) {
            return found;
        }
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

    /// A hit (found or not found) within its TTL; a miss is `None`.
    fn find_key_by_hash_ready(&self, hash: &KeyHash) -> Option<Result<Option<StoredKey>>> {
        self.fresh(&self.keys, hash).map(|lookup| Ok(lookup.found))
    }

    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        self.inner.get_key(tenant, id).await
    }

    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        self.inner.list_keys(tenant, filter).await
    }

    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        let result = self.inner.transition_key(tenant, id, transition).await;
        // A refused transition means the key changed elsewhere: refresh too.
        if matches!(result, Ok(_) | Err(Error::InvalidTransition { .. })) {
            self.forget_key(tenant, id).await;
        }
        result
    }

    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        let result = self.inner.rotate_key(tenant, rotation).await;
        match &result {
            Ok(_) => {
                self.forget_hash(&rotation.record.old_hash);
                self.forget_hash(&rotation.new_key.hash);
            }
            Err(Error::InvalidTransition { .. }) => self.forget_key(tenant, rotation.record.key_id).await,
            Err(_) => {}
        }
        result
    }

    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        let key = self.inner.set_key_scopes(tenant, id, scopes, at).await?;
        self.forget_key(tenant, id).await;
        Ok(key)
    }

    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        self.inner.touch_key(id, at).await?;
        // Only `last_used_at` changed: update the cached key in place rather
        // than send the next validation to the store. In place, never
        // re-inserted: a revocation racing this either removed the entry
        // already (nothing to update) or removes the updated one.
        if let Some(hash) = self.hashes.get(&id) {
            self.keys.update(&hash, |value| {
                if let Some(stored) = &mut value.found
                    && stored.key.id == id
                    && stored.key.last_used_at.is_none_or(|last| last < at)
                {
                    Arc::make_mut(&mut stored.key).last_used_at = Some(at);
                }
            });
        }
        Ok(())
    }

    async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key> {
        let key = self.inner.set_credits(tenant, id, credits).await?;
        // Every key of the lineage now has (or lacks) credits, and validation
        // asks the store to spend only for keys that have them: drop them all.
        self.forget_lineage(tenant, key.lineage_id);
        Ok(key)
    }

    async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key> {
        let key = self.inner.add_credits(tenant, id, amount, now).await?;
        self.forget_lineage(tenant, key.lineage_id);
        Ok(key)
    }

    async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
        self.inner.spend_credits(key, cost, now).await
    }

    fn spend_credits_ready(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Option<Result<CreditSpend>> {
        self.inner.spend_credits_ready(key, cost, now)
    }

    async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()> {
        self.inner.refund_credits(key, cost).await
    }

    fn refund_credits_ready(&self, key: &Key, cost: u64) -> Option<Result<()>> {
        self.inner.refund_credits_ready(key, cost)
    }

    async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>> {
        self.inner.owner_credits(tenant, owner_id).await
    }

    // Forgotten whatever the answer: a write that failed may have
    // committed all the same.
    async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()> {
        let result = self.inner.set_owner_credits(tenant, owner_id, credits).await;
        self.forget_owner(tenant, owner_id);
        result
    }

    async fn add_owner_credits(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<Credits> {
        let result = self.inner.add_owner_credits(tenant, owner_id, amount, now).await;
        self.forget_owner(tenant, owner_id);
        result
    }

    async fn spend_owner_credits(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Result<CreditSpend> {
        let (owner, generation) = match self.owner_spend(tenant, owner_id) {
            Ok(remembered) => return Ok(remembered),
            Err(asking) => asking,
        };
        let spent = self.inner.spend_owner_credits(tenant, owner_id, cost, now).await;
        self.spent_by_store(owner, generation, &spent);
        spent
    }

    fn spend_owner_credits_ready(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Option<Result<CreditSpend>> {
        let (owner, generation) = match self.owner_spend(tenant, owner_id) {
            Ok(remembered) => return Some(Ok(remembered)),
            Err(asking) => asking,
        };
        let spent = self.inner.spend_owner_credits_ready(tenant, owner_id, cost, now)?;
        self.spent_by_store(owner, generation, &spent);
        Some(spent)
    }

    async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()> {
        self.inner.refund_owner_credits(tenant, owner_id, cost).await
    }

    fn refund_owner_credits_ready(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Option<Result<()>> {
        self.inner.refund_owner_credits_ready(tenant, owner_id, cost)
    }

    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        self.inner.list_due_keys(now, limit).await
    }
}

#[async_trait]
impl PolicyStore for CachedStore {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        self.inner.insert_policy(policy).await
    }

    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        if let Some(policy) = self.get_policy_ready(tenant, id) {
            return policy;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = self.inner.get_policy(tenant, id).await?;
        if let Some(policy) = &found {
            let entry = Entry { value: Arc::clone(policy), expires_at: self.expiry(self.found_ttl()) };
            self.policies.insert_unless_invalidated(id, entry, &self.generation, generation);
        }
        Ok(found)
    }

    fn get_policy_ready(&self, tenant: &Tenant, id: PolicyId) -> Option<Result<Option<Arc<Policy>>>> {
        // Ids are unique across tenants: another tenant's is not yours.
        self.fresh(&self.policies, &id).map(|policy| Ok(Some(policy).filter(|p| p.tenant == *tenant)))
    }

    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        self.inner.list_policies(tenant, page).await
    }

    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        self.inner.update_policy(policy).await?;
        self.forget_policy(policy.id);
        Ok(())
    }

    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        self.inner.delete_policy(tenant, id).await?;
        self.forget_policy(id);
        Ok(())
    }
}

#[async_trait]
impl ScopeStore for CachedStore {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        self.inner.insert_scope(scope).await
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        self.inner.list_scopes(tenant).await
    }

    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        self.inner.delete_scope(tenant, id).await
    }
}

#[async_trait]
impl UsageStore for CachedStore {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        self.inner.record_batch(records).await
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        self.inner.list_usage(tenant, key_id, range, page).await
    }

    async fn usage_aggregates(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        self.inner.usage_aggregates(tenant, key_id, period, range).await
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        self.inner.tenant_usage(tenant, period, range).await
    }

    async fn lineage_usage(
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        self.inner.lineage_usage(tenant, lineage, period, range).await
    }

    async fn owner_usage(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        self.inner.owner_usage(tenant, owner_id, period, range).await
    }
}

#[async_trait]
impl RotationStore for CachedStore {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        self.inner.list_rotations(tenant, key_id).await
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
        self.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::TimeZone;
    use tokio::sync::Notify;

    use super::*;
    use crate::store::{ProbedStore, StoreOp, StoreProbe};
    use crate::{
        Engine, Environment, Hasher, KeyState, ManualClock, MemoryStore, NewKey, RawKey, Refusal, RequestContext,
        RotationReason, Sha256Hasher, ValidationError,
    };

    const POSITIVE: Duration = Duration::from_secs(30);
    const NEGATIVE: Duration = Duration::from_secs(5);

    /// Lets a test stop a lookup after it has read and before it returns.
    #[derive(Debug, Default)]
    struct Hold {
        read: Notify,
        release: Notify,
    }

    /// Counts the reads the cache is meant to absorb, and can hold one
    /// lookup after it has read.
    #[derive(Debug, Default)]
    struct Spy {
        lookups: AtomicU64,
        policy_reads: AtomicU64,
        owner_spends: AtomicU64,
        /// While set, every call fails as a database that went away would.
        down: AtomicBool,
        hold_next_lookup: Mutex<Option<Arc<Hold>>>,
        /// Holds the next call of this method after the store answered.
        hold_next_call: Mutex<Option<(StoreOp, Arc<Hold>)>>,
    }

    impl Spy {
        fn lookups(&self) -> u64 {
            self.lookups.load(Ordering::SeqCst)
        }

        fn policy_reads(&self) -> u64 {
            self.policy_reads.load(Ordering::SeqCst)
        }

        fn owner_spends(&self) -> u64 {
            self.owner_spends.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl StoreProbe for Spy {
        async fn before(&self, op: StoreOp) -> Result<()> {
            match op {
                StoreOp::FindKeyByHash => self.lookups.fetch_add(1, Ordering::SeqCst),
                StoreOp::GetPolicy => self.policy_reads.fetch_add(1, Ordering::SeqCst),
                StoreOp::SpendOwnerCredits => self.owner_spends.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::store("connection refused"));
            }
            Ok(())
        }

        async fn after(&self, op: StoreOp) {
            let held = {
                let mut next = self.hold_next_call.lock().unwrap();
                if next.as_ref().is_some_and(|(held, _)| *held == op) { next.take() } else { None }
            };
            if let Some((_, hold)) = held {
                hold.read.notify_one();
                hold.release.notified().await;
            }
            if op == StoreOp::FindKeyByHash {
                let hold = self.hold_next_lookup.lock().unwrap().take();
                if let Some(hold) = hold {
                    hold.read.notify_one();
                    hold.release.notified().await;
                }
            }
        }
    }

    struct Setup {
        spy: Arc<Spy>,
        /// The store behind the cache, for changes made "by another instance".
        inner: Arc<MemoryStore>,
        cached: Arc<CachedStore>,
        engine: Engine,
        clock: ManualClock,
    }

    fn setup() -> Setup {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap());
        let spy = Arc::new(Spy::default());
        let inner = Arc::new(MemoryStore::new());
        let probed = ProbedStore::new(Arc::clone(&inner) as Arc<dyn Store>, Arc::clone(&spy));
        let config =
            CacheConfig::default().with_positive_ttl(POSITIVE).with_negative_ttl(NEGATIVE).with_clock(clock.clone());
        let cached = Arc::new(CachedStore::with_config(Arc::new(probed), config));
        let engine = Engine::builder(Arc::clone(&cached) as Arc<dyn Store>).with_clock(clock.clone()).build().unwrap();
        Setup { spy, inner, cached, engine, clock }
    }

    fn policy(tenant: &Tenant, name: &str) -> Policy {
        Policy {
            id: PolicyId::new(),
            tenant: tenant.clone(),
            name: name.into(),
            rate_limits: Vec::new(),
            limit_by: crate::LimitBy::Key,
            allowed_ips: vec![],
            allowed_origins: vec![],
            allowed_scopes: vec![],
            max_key_age: None,
            quota: None,
            rotation_grace: None,
            max_active_keys_per_owner: None,
            metadata: serde_json::Map::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    async fn validate(engine: &Engine, raw: &str) -> Result<crate::Validation, ValidationError> {
        engine.validate(raw, &RequestContext::new()).await
    }

    #[tokio::test]
    async fn warm_cache_validation_reads_nothing_from_the_store() {
        let Setup { spy, cached, engine, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let policy = policy(acme.tenant(), "standard");
        cached.insert_policy(&policy).await.unwrap();
        let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();

        for _ in 0..5 {
            let ok = validate(&engine, created.raw.expose()).await.unwrap();
            assert_eq!(ok.key.id, created.key.id);
        }
        assert_eq!(spy.lookups(), 1, "one lookup by hash, then hits");
        assert_eq!(spy.policy_reads(), 1, "one policy read, then hits");
    }

    #[tokio::test]
    async fn unknown_keys_are_cached_until_the_negative_ttl() {
        let Setup { spy, engine, clock, .. } = setup();
        let unknown = RawKey::generate("sk", Environment::Live).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                validate(&engine, unknown.expose()).await,
                Err(ValidationError::Refused(Refusal::Unknown))
            ));
        }
        assert_eq!(spy.lookups(), 1);
        clock.advance(NEGATIVE - Duration::from_secs(1));
        validate(&engine, unknown.expose()).await.unwrap_err();
        assert_eq!(spy.lookups(), 1, "still cached just before the negative ttl");
        clock.advance(Duration::from_secs(1));
        validate(&engine, unknown.expose()).await.unwrap_err();
        assert_eq!(spy.lookups(), 2, "asked again once the negative entry expired");
    }

    #[tokio::test]
    async fn changes_made_elsewhere_show_within_the_positive_ttl() {
        let Setup { spy, inner, engine, clock, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        validate(&engine, created.raw.expose()).await.unwrap();

        // Another instance revokes the key: this one does not know yet.
        let revoke = Transition::to(KeyState::Revoked, clock.now());
        inner.transition_key(acme.tenant(), created.key.id, &revoke).await.unwrap();
        clock.advance(POSITIVE - Duration::from_secs(1));
        assert!(validate(&engine, created.raw.expose()).await.is_ok(), "stale within the bound");
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            validate(&engine, created.raw.expose()).await,
            Err(ValidationError::Refused(Refusal::Revoked))
        ));
        assert_eq!(spy.lookups(), 2);
    }

    #[tokio::test]
    async fn creating_a_key_drops_a_cached_miss_for_its_hash() {
        let Setup { cached, engine, .. } = setup();
        let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await.unwrap();
        let hash = Sha256Hasher.hash("sk_live_not_yet_there");
        assert_eq!(cached.find_key_by_hash(&hash).await.unwrap(), None);
        let key = StoredKey { key: Arc::new(Key { id: KeyId::new(), ..created.key }), hash };
        cached.insert_key(&key).await.unwrap();
        assert_eq!(cached.find_key_by_hash(&hash).await.unwrap(), Some(key));
    }

    #[tokio::test]
    async fn lifecycle_changes_through_the_cache_take_effect_at_once() {
        let Setup { spy, cached, engine, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("ci").with_scopes(["read"])).await.unwrap();
        let raw = created.raw.expose();
        validate(&engine, raw).await.unwrap();

        acme.suspend_key(created.key.id).await.unwrap();
        assert!(matches!(validate(&engine, raw).await, Err(ValidationError::Refused(Refusal::Suspended))));
        acme.reactivate_key(created.key.id).await.unwrap();
        validate(&engine, raw).await.unwrap();

        let scopes = vec!["write".to_owned()];
        cached.set_key_scopes(acme.tenant(), created.key.id, &scopes, Utc::now()).await.unwrap();
        assert_eq!(validate(&engine, raw).await.unwrap().key.scopes, scopes);

        let rotated = acme.rotate_key(created.key.id, RotationReason::Compromised, Some(Duration::ZERO)).await.unwrap();
        assert!(matches!(validate(&engine, raw).await, Err(ValidationError::Refused(Refusal::Revoked))));
        validate(&engine, rotated.raw.expose()).await.unwrap();

        acme.revoke_key(rotated.key.id, "done").await.unwrap();
        assert!(matches!(
            validate(&engine, rotated.raw.expose()).await,
            Err(ValidationError::Refused(Refusal::Revoked))
        ));
        assert!(spy.lookups() >= 6, "every change sent the next validation to the store");
    }

    #[tokio::test]
    async fn a_refused_transition_refreshes_the_cached_key() {
        let Setup { inner, cached, engine, clock, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        validate(&engine, created.raw.expose()).await.unwrap();
        let revoke = Transition::to(KeyState::Revoked, clock.now());
        inner.transition_key(acme.tenant(), created.key.id, &revoke).await.unwrap();

        let suspend = Transition::to(KeyState::Suspended, clock.now());
        assert!(cached.transition_key(acme.tenant(), created.key.id, &suspend).await.is_err());
        assert!(matches!(
            validate(&engine, created.raw.expose()).await,
            Err(ValidationError::Refused(Refusal::Revoked))
        ));
    }

    #[tokio::test]
    async fn touch_updates_the_cached_key_in_place() {
        let Setup { spy, cached, engine, clock, .. } = setup();
        let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await.unwrap();
        let hash = Sha256Hasher.hash(created.raw.expose());
        assert_eq!(cached.find_key_by_hash(&hash).await.unwrap().unwrap().key.last_used_at, None);
        let at = clock.now();
        cached.touch_key(created.key.id, at).await.unwrap();
        assert_eq!(cached.find_key_by_hash(&hash).await.unwrap().unwrap().key.last_used_at, Some(at));
        cached.touch_key(created.key.id, at - chrono::Duration::seconds(10)).await.unwrap();
        assert_eq!(cached.find_key_by_hash(&hash).await.unwrap().unwrap().key.last_used_at, Some(at));
        assert_eq!(spy.lookups(), 1, "served from the cache throughout");
    }

    #[tokio::test]
    async fn policy_changes_through_the_cache_take_effect_at_once() {
        let Setup { spy, cached, .. } = setup();
        let acme = Tenant::new("app", "acme");
        let original = policy(&acme, "standard");
        cached.insert_policy(&original).await.unwrap();
        assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&original));
        assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&original));
        assert_eq!(spy.policy_reads(), 1);
        assert_eq!(cached.get_policy(&Tenant::new("app", "globex"), original.id).await.unwrap(), None);

        let updated = Policy { max_key_age: Some(Duration::from_secs(60)), ..original.clone() };
        cached.update_policy(&updated).await.unwrap();
        assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&updated));
        cached.delete_policy(&acme, original.id).await.unwrap();
        assert_eq!(cached.get_policy(&acme, original.id).await.unwrap(), None);
    }

    /// An engine built `with_cache` keeps a key's policy with the key, so a
    /// warm validation is one probe; policy changes made through the
    /// engine, dropped caches and the policy's TTL still reach it.
    #[tokio::test]
    async fn the_policy_kept_with_a_cached_key_follows_every_policy_change() {
        let Setup { spy, inner, clock, .. } = setup();
        let probed = ProbedStore::new(Arc::clone(&inner) as Arc<dyn Store>, Arc::clone(&spy));
        let config = CacheConfig::default().with_positive_ttl(POSITIVE).with_clock(clock.clone());
        let engine = Engine::builder(probed).with_cache(config).with_clock(clock.clone()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let spec = |net: &str| crate::PolicySpec::new("nets").with_allowed_ips([net]);
        let policy = acme.create_policy(spec("10.0.0.0/8")).await.unwrap();
        let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
        let client: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let check = || async { engine.validate(created.raw.expose(), &RequestContext::new().with_ip(client)).await };
        for _ in 0..3 {
            check().await.unwrap();
        }
        assert_eq!((spy.lookups(), spy.policy_reads()), (1, 1));

        // Through the engine: refused at once.
        acme.update_policy(policy.id, spec("192.0.2.0/24")).await.unwrap();
        assert!(matches!(check().await, Err(ValidationError::Refused(Refusal::IpNotAllowed))));
        // Dropped by hand: read again.
        engine.invalidate_cache();
        assert!(matches!(check().await, Err(ValidationError::Refused(Refusal::IpNotAllowed))));
        let reads = spy.policy_reads();

        // The key is cached again 10 s after its policy (a key change drops
        // only the key), and keeps the policy's expiry, not its own.
        clock.advance(Duration::from_secs(10));
        acme.suspend_key(created.key.id).await.unwrap();
        acme.reactivate_key(created.key.id).await.unwrap();
        assert!(check().await.is_err());
        assert_eq!(spy.policy_reads(), reads, "the policy came from its table");

        // Elsewhere: seen once the policy's entry expires.
        let mut elsewhere = (*inner.get_policy(acme.tenant(), policy.id).await.unwrap().unwrap()).clone();
        elsewhere.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
        inner.update_policy(&elsewhere).await.unwrap();
        clock.advance(POSITIVE - Duration::from_secs(11));
        assert!(check().await.is_err(), "stale within the bound");
        assert_eq!(spy.policy_reads(), reads);
        clock.advance(Duration::from_secs(1));
        check().await.unwrap();
    }

    #[tokio::test]
    async fn a_lookup_racing_a_revocation_does_not_cache_what_it_read() {
        let Setup { spy, cached, engine, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        let hash = Sha256Hasher.hash(created.raw.expose());

        let hold = Arc::new(Hold::default());
        *spy.hold_next_lookup.lock().unwrap() = Some(Arc::clone(&hold));
        let reader = tokio::spawn({
            let cached = Arc::clone(&cached);
            async move { cached.find_key_by_hash(&hash).await }
        });
        hold.read.notified().await; // the lookup has read the active key
        acme.revoke_key(created.key.id, "leaked").await.unwrap();
        assert!(
            matches!(validate(&engine, created.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))),
            "the revocation returned: no validation sees the active key, while the lookup is still out"
        );
        hold.release.notify_one();
        let read = reader.await.unwrap().unwrap().unwrap();
        assert_eq!(read.key.state, KeyState::Active, "the racing lookup answers what it read");

        let now = cached.find_key_by_hash(&hash).await.unwrap().unwrap();
        assert_eq!(now.key.state, KeyState::Revoked, "but did not leave it in the cache");
    }

    /// Holds the next `op` of the store behind the cache after it answered.
    fn hold_next(spy: &Spy, op: StoreOp) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        *spy.hold_next_call.lock().unwrap() = Some((op, Arc::clone(&hold)));
        hold
    }

    async fn assert_revoked(engine: &Engine, raw: &str) {
        assert!(matches!(validate(engine, raw).await, Err(ValidationError::Refused(Refusal::Revoked))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_touch_racing_a_revocation_never_brings_the_active_key_back() {
        let Setup { spy, cached, engine, clock, .. } = setup();
        let acme = engine.tenant("app", "acme");

        // The touch wrote the store and is held before it updates the cache;
        // the revocation runs whole; then the touch goes on.
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        validate(&engine, created.raw.expose()).await.unwrap();
        let hold = hold_next(&spy, StoreOp::TouchKey);
        let touch = tokio::spawn({
            let (cached, id, at) = (Arc::clone(&cached), created.key.id, clock.now());
            async move { cached.touch_key(id, at).await }
        });
        hold.read.notified().await;
        acme.revoke_key(created.key.id, "leaked").await.unwrap();
        assert_revoked(&engine, created.raw.expose()).await;
        hold.release.notify_one();
        touch.await.unwrap().unwrap();
        assert_revoked(&engine, created.raw.expose()).await;

        // The revocation wrote the store and is held before it invalidates;
        // a touch runs whole on the cached (still active) key; then the
        // revocation returns.
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        validate(&engine, created.raw.expose()).await.unwrap();
        let hold = hold_next(&spy, StoreOp::TransitionKey);
        let revoke = tokio::spawn({
            let (acme, id) = (acme.clone(), created.key.id);
            async move { acme.revoke_key(id, "leaked").await }
        });
        hold.read.notified().await;
        clock.advance(Duration::from_secs(1));
        cached.touch_key(created.key.id, clock.now()).await.unwrap();
        hold.release.notify_one();
        revoke.await.unwrap().unwrap();
        assert_revoked(&engine, created.raw.expose()).await;

        // The revocation must ask the store for the hash (the id index lost
        // it) and is held there, after its write; lookups and touches run
        // meanwhile; once it returns, no validation sees the active key.
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        validate(&engine, created.raw.expose()).await.unwrap();
        cached.hashes.invalidate(&created.key.id);
        let hold = hold_next(&spy, StoreOp::GetKey);
        let revoke = tokio::spawn({
            let (acme, id) = (acme.clone(), created.key.id);
            async move { acme.revoke_key(id, "leaked").await }
        });
        hold.read.notified().await;
        cached.touch_key(created.key.id, clock.now()).await.unwrap();
        let _ = validate(&engine, created.raw.expose()).await;
        hold.release.notify_one();
        revoke.await.unwrap().unwrap();
        assert_revoked(&engine, created.raw.expose()).await;
    }

    /// The race of the touch above, left to the scheduler: touches of a key
    /// run on another thread while it is revoked; once the revocation has
    /// returned, every validation refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocations_racing_touches_always_win() {
        let Setup { cached, engine, clock, .. } = setup();
        let acme = engine.tenant("app", "acme");
        for round in 0..500 {
            let created = acme.create_key(NewKey::new(format!("k{round}"))).await.unwrap();
            validate(&engine, created.raw.expose()).await.unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let toucher = tokio::spawn({
                let (cached, stop, id, start) = (Arc::clone(&cached), Arc::clone(&stop), created.key.id, clock.now());
                async move {
                    let mut at = start;
                    while !stop.load(Ordering::SeqCst) {
                        at += chrono::Duration::milliseconds(1);
                        cached.touch_key(id, at).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                }
            });
            tokio::task::yield_now().await;
            acme.revoke_key(created.key.id, "leaked").await.unwrap();
            for _ in 0..3 {
                assert_revoked(&engine, created.raw.expose()).await;
                tokio::task::yield_now().await;
            }
            stop.store(true, Ordering::SeqCst);
            toucher.await.unwrap();
            assert_revoked(&engine, created.raw.expose()).await;
        }
    }

    #[tokio::test]
    async fn credits_set_through_one_key_of_a_lineage_reach_every_key_of_it_and_no_other() {
        let Setup { spy, engine, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let old = acme.create_key(NewKey::new("ci")).await.unwrap();
        let new = acme.rotate_key(old.key.id, RotationReason::Scheduled, Some(Duration::from_secs(60))).await.unwrap();
        let other = acme.create_key(NewKey::new("other")).await.unwrap();
        for raw in [&old.raw, &new.raw, &other.raw] {
            validate(&engine, raw.expose()).await.unwrap();
        }
        assert_eq!(spy.lookups(), 3);

        acme.set_credits(new.key.id, Some(Credits::new(1))).await.unwrap();
        assert_eq!(validate(&engine, old.raw.expose()).await.unwrap().credits.map(|c| c.remaining), Some(0));
        assert!(matches!(
            validate(&engine, new.raw.expose()).await,
            Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))
        ));
        validate(&engine, other.raw.expose()).await.unwrap();
        assert_eq!(spy.lookups(), 5, "the lineage's two keys read again, the other key still cached");

        acme.add_credits(old.key.id, 1).await.unwrap();
        assert_eq!(validate(&engine, new.raw.expose()).await.unwrap().credits.map(|c| c.remaining), Some(0));
        validate(&engine, other.raw.expose()).await.unwrap();
        assert_eq!(spy.lookups(), 6);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cached = CachedStore::with_config(Arc::new(MemoryStore::new()), CacheConfig::default().with_max_keys(10));
        for i in 0..200 {
            cached.find_key_by_hash(&Sha256Hasher.hash(&format!("sk_live_{i}"))).await.unwrap();
        }
        cached.keys.back.run_pending_tasks();
        assert!(cached.keys.entry_count() <= 10, "{} entries", cached.keys.entry_count());
        // The front map holds no more than moka kept.
        assert!(cached.keys.front.len() <= 10, "{} entries in front", cached.keys.front.len());
    }

    /// A key of owner `cust_1` under a policy that limits by owner.
    async fn owner_key(engine: &Engine) -> crate::CreatedKey {
        let acme = engine.tenant("app", "acme");
        let spec = crate::PolicySpec::new("per-owner").with_limit_by(crate::LimitBy::Owner);
        let policy = acme.create_policy(spec).await.unwrap();
        acme.create_key(NewKey::new("ci").with_owner("cust_1").with_policy(policy.id)).await.unwrap()
    }

    /// The owner credits a validation of `raw` left (`None`: not limited by credits).
    async fn credits_left(engine: &Engine, raw: &str) -> Option<u64> {
        validate(engine, raw).await.unwrap().credits.map(|credits| credits.remaining)
    }

    #[tokio::test]
    async fn an_owner_without_credits_costs_no_store_call_after_the_first_even_while_the_store_is_down() {
        let Setup { spy, cached, engine, .. } = setup();
        let created = owner_key(&engine).await;
        for _ in 0..3 {
            assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
        }
        assert_eq!(spy.owner_spends(), 1, "asked once, then remembered as having none");
        assert_eq!(cached.stats().owners, 1);

        spy.down.store(true, Ordering::SeqCst);
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None, "served while the store is down");
        assert_eq!(spy.lookups(), 1);
    }

    #[tokio::test]
    async fn an_owner_given_credits_through_the_engine_spends_them_from_the_next_request() {
        let Setup { spy, engine, .. } = setup();
        let created = owner_key(&engine).await;
        let acme = engine.tenant("app", "acme");
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None);

        acme.set_owner_credits("cust_1", Some(Credits::new(2))).await.unwrap();
        assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(1));
        assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(0));
        assert!(matches!(
            validate(&engine, created.raw.expose()).await,
            Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))
        ));
        assert_eq!(spy.owner_spends(), 4, "a balance is spent in the store on every request");

        acme.add_owner_credits("cust_1", 1).await.unwrap();
        assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(0));

        // Removed: asked once more, then remembered as having none again.
        acme.set_owner_credits("cust_1", None).await.unwrap();
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
        assert_eq!(spy.owner_spends(), 6);
    }

    #[tokio::test]
    async fn a_top_up_through_the_cache_drops_what_it_remembered_of_the_owner() {
        let Setup { inner, engine, .. } = setup();
        let created = owner_key(&engine).await;
        let acme = engine.tenant("app", "acme");
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
        // Given credits elsewhere, then topped up here.
        inner.set_owner_credits(acme.tenant(), "cust_1", Some(&Credits::new(1))).await.unwrap();
        acme.add_owner_credits("cust_1", 2).await.unwrap();
        assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(2));
    }

    #[tokio::test]
    async fn an_owner_given_credits_elsewhere_spends_them_once_the_positive_ttl_passed() {
        let Setup { spy, inner, cached, clock, .. } = setup();
        let acme = Tenant::new("app", "acme");
        let spend = || async { cached.spend_owner_credits(&acme, "cust_1", 1, clock.now()).await.unwrap() };
        assert_eq!(spend().await, CreditSpend::Unlimited);
        inner.set_owner_credits(&acme, "cust_1", Some(&Credits::new(5))).await.unwrap();

        clock.advance(POSITIVE - Duration::from_secs(1));
        assert_eq!(spend().await, CreditSpend::Unlimited, "stale within the bound");
        assert_eq!(spy.owner_spends(), 1);
        clock.advance(Duration::from_secs(1));
        assert!(matches!(spend().await, CreditSpend::Spent(credits) if credits.remaining == 4));
        assert!(matches!(spend().await, CreditSpend::Spent(credits) if credits.remaining == 3));
        assert_eq!(spy.owner_spends(), 3, "a balance is never cached");
        assert_eq!(cached.stats().owners, 0);
    }

    #[tokio::test]
    async fn owners_are_remembered_per_tenant() {
        let Setup { spy, inner, cached, clock, .. } = setup();
        let (acme, globex) = (Tenant::new("app", "acme"), Tenant::new("app", "globex"));
        inner.set_owner_credits(&globex, "cust_1", Some(&Credits::new(5))).await.unwrap();
        assert_eq!(cached.spend_owner_credits(&acme, "cust_1", 1, clock.now()).await.unwrap(), CreditSpend::Unlimited);
        let spent = cached.spend_owner_credits(&globex, "cust_1", 1, clock.now()).await.unwrap();
        assert!(matches!(spent, CreditSpend::Spent(credits) if credits.remaining == 4));
        assert_eq!(spy.owner_spends(), 2);
    }

    /// A spend that read "no credits" before credits were given, and
    /// returns after, does not leave "no credits" in the cache.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spend_racing_a_credit_change_does_not_remember_what_it_read() {
        let Setup { spy, cached, engine, clock, .. } = setup();
        let acme = engine.tenant("app", "acme");
        let hold = hold_next(&spy, StoreOp::SpendOwnerCredits);
        let spend = tokio::spawn({
            let (cached, tenant, now) = (Arc::clone(&cached), acme.tenant().clone(), clock.now());
            async move { cached.spend_owner_credits(&tenant, "cust_1", 1, now).await }
        });
        hold.read.notified().await;
        acme.set_owner_credits("cust_1", Some(Credits::new(3))).await.unwrap();
        hold.release.notify_one();
        assert_eq!(spend.await.unwrap().unwrap(), CreditSpend::Unlimited, "it answers what it read");
        let spent = cached.spend_owner_credits(acme.tenant(), "cust_1", 1, clock.now()).await.unwrap();
        assert!(matches!(spent, CreditSpend::Spent(credits) if credits.remaining == 2));
    }
}
