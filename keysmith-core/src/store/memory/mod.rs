//! An in-process store: complete, tenant-filtered, and atomic (one lock
//! guards every table, so multi-table writes are all or nothing).
//!
//! One module per subsystem, as the SQL stores have: keys (with credits),
//! policies, scopes, usage and rotations.

mod changes;
mod keys;
mod policies;
mod rotations;
mod scopes;
mod usage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ImportOutcome, KeyFilter, KeyPolicy, KeyStore, LoggedChanges, Page, PolicyStore, RotationStore, RotationWrite,
    ScopeStore, Store, StoredKey, TimeRange, Transition, UsageStore, UsageTotal,
};
use crate::{
    Change, Credits, Error, KeyHash, KeyId, Period, Policy, PolicyId, Result, RotationRecord, Scope, ScopeId, Tenant,
    UsageAggregate, UsageRecord,
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
    /// The change log has its own lock too: an engine's poll of it never
    /// waits for a write of keys.
    changes: Mutex<changes::ChangeLog>,
    closed: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct Tables {
    /// Keys by hash, each with its policy: validation's lookup of a key
    /// and its policy is one probe.
    keys: HashMap<KeyHash, KeyEntry, foldhash::fast::RandomState>,
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

/// A key as the tables hold it, with its policy (the one its `policy_id`
/// names) and its scopes narrowed to it, which every write of the key or
/// of the policy keeps current.
#[derive(Debug, Clone)]
struct KeyEntry {
    stored: StoredKey,
    policy: Option<KeyPolicy>,
}

#[derive(Debug)]
struct UsageTables {
    /// The most recent records, in the order they were written.
    records: VecDeque<UsageRecord>,
    /// The ids of at least the `retention` most recent records, so a
    /// replayed record counts once.
    ids: usage::RecentIds,
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
            ids: usage::RecentIds::new(retention),
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
            changes: Mutex::default(),
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

    fn change_log(&self) -> Result<std::sync::MutexGuard<'_, changes::ChangeLog>> {
        self.check_open()?;
        Ok(self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Empties the change log and restarts its numbering, as a SQL
    /// `TRUNCATE … RESTART IDENTITY` would.
    #[cfg(test)]
    pub(crate) fn renumber_change_log(&self) {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner).renumber();
    }

    /// Logs a row that is not a change, as if written by hand.
    #[cfg(test)]
    pub(crate) fn log_unreadable(&self, at: DateTime<Utc>) {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner).append_unreadable(at);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::store("the memory store is closed"));
        }
        Ok(())
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

    async fn log_change(&self, change: &Change, at: DateTime<Utc>) -> Result<bool> {
        self.change_log()?.append(change, at);
        Ok(true)
    }

    async fn changes_after(&self, after: Option<u64>, limit: u32) -> Result<Option<LoggedChanges>> {
        Ok(Some(self.change_log()?.after(after, limit)))
    }

    async fn delete_changes_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        Ok(self.change_log()?.delete_before(before, limit))
    }
}
