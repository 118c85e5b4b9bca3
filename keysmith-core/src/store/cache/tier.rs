//! One cached table ([`Tier`]): moka bounds it, a read-mostly map in front
//! of it serves the hits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::Clock;

/// The caches' hasher: keys are SHA-256 digests and random ids, so a fast
/// non-cryptographic hash (seeded per process) is enough.
pub(super) type Hashing = foldhash::fast::RandomState;

/// One cached table. moka bounds it (size, TinyLFU admission, expiry) and
/// a read-mostly map in front of it serves the hits: a hit is one probe
/// under a shard's read lock, without moka's bookkeeping for each read,
/// which cost about as much as the rest of a validation. An entry leaves the
/// front map when moka evicts or expires it, or when it is invalidated, so
/// the front never holds more than moka admitted.
pub(super) struct Tier<K, V> {
    pub(super) front: Arc<DashMap<K, Entry<V>, Hashing>>,
    pub(super) back: Cache<K, Entry<V>, Hashing>,
    /// Lookups made, for the tests that count them.
    #[cfg(test)]
    pub(super) probes: AtomicU64,
}

pub(super) trait TierKey: std::hash::Hash + Eq + Clone + Send + Sync + 'static {}
impl<T: std::hash::Hash + Eq + Clone + Send + Sync + 'static> TierKey for T {}
pub(super) trait TierValue: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> TierValue for T {}

impl<K: TierKey, V: TierValue> Tier<K, V> {
    pub(super) fn new(capacity: u64, clock: Arc<dyn Clock>) -> Self {
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
        Self {
            front,
            back,
            #[cfg(test)]
            probes: AtomicU64::new(0),
        }
    }

    /// The value for `key` if it is fresh at `now` (clock nanoseconds); a
    /// stale entry is dropped.
    pub(super) fn get(&self, key: &K, now: u64) -> Option<V> {
        self.get_entry(key, now).map(|entry| entry.value)
    }

    /// The entry for `key` (value and expiry) if it is fresh at `now`; a
    /// stale entry is dropped.
    pub(super) fn get_entry(&self, key: &K, now: u64) -> Option<Entry<V>> {
        #[cfg(test)]
        self.probes.fetch_add(1, Ordering::Relaxed);
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
    pub(super) fn insert_unless_invalidated(&self, key: K, entry: Entry<V>, generation: &AtomicU64, seen: u64) -> bool {
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
    pub(super) fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        if let Some(mut entry) = self.front.get_mut(key) {
            change(&mut entry.value);
        }
    }

    pub(super) fn invalidate(&self, key: &K) {
        self.front.remove(key);
        self.back.invalidate(key);
    }

    pub(super) fn invalidate_all(&self) {
        self.front.clear();
        self.back.invalidate_all();
    }

    pub(super) fn entry_count(&self) -> u64 {
        self.back.entry_count()
    }

    /// Exact, unlike moka's count, which lags behind invalidations.
    pub(super) fn len(&self) -> usize {
        self.front.len()
    }
}

#[derive(Clone)]
pub(super) struct Entry<V> {
    pub(super) value: V,
    /// Clock nanoseconds (`Clock::coarse_nanos`): checked on every hit, so
    /// read from the cheapest clock that is good to a few milliseconds.
    pub(super) expires_at: u64,
}

/// Lets the cache reclaim an entry when its own expiry time passes.
pub(super) struct EntryExpiry(Arc<dyn Clock>);

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
