//! The usage recorder: a bounded queue drained by one background task that
//! writes batches (a few at once), so the request path never waits for the
//! store.
//!
//! Each key's usage goes to one of [`UsageConfig::concurrent_writes`] lanes
//! (by its id), each with its own batch and at most one write in flight:
//! two writes in flight never touch the same roll-up rows, so neither waits
//! for the other's row locks until its commit.
//!
//! The request path queues a [`UsageEntry`]: no record id, no text but
//! numbers in the engine's [`UsageTexts`]; the writer numbers the record
//! ([`UsageId`]) and reads its text back once per batch, so a passed
//! request copies no string and generates no id.
//!
//! Refusals, and passed requests under [`UsageMode::Aggregates`], are not
//! queued one by one: they add to their key's counts for the hour in the
//! thread's buffer.
//!
//! A record first goes into its thread's buffer (one of a few
//! [`Shards`], picked once per thread, so threads do not contend), which
//! moves to the shared channel as one message when it holds
//! [`SHARD_BATCH`] records; the writer also empties every buffer on each
//! tick, flush and shutdown, so a record waits at most one flush interval.

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::quota::QuotaTracker;
use super::texts::{Reader, TextsRead, UsageTexts};
use super::{Period, RefusalReason, SharedStr, SharedTenant, UsageBatch, UsageCounts, UsageDelta, UsageRecord};
use crate::{Key, KeyId, Store, Tenant, UsageId};

/// Counter: usage records dropped because the queue was full or closed.
const DROPPED_TOTAL: &str = "keysmith_usage_dropped_total";
/// Counter: usage records lost because the store refused the batch.
const FAILED_TOTAL: &str = "keysmith_usage_failed_total";
/// Counter: writes of a usage batch the store failed, tried again.
const RETRIED_WRITES_TOTAL: &str = "keysmith_usage_retried_writes_total";

/// How usage is queued and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// Places the queue holds: one per queued request that may become a
    /// raw record, one per key and hour of requests kept only as counts
    /// (refusals, and passed requests under [`UsageMode::Aggregates`]).
    /// Past it new requests are dropped and counted.
    pub queue_capacity: usize,
    /// A batch is written as soon as it has this many records…
    pub batch_size: usize,
    /// …or when this much time has passed since the last write.
    pub flush_interval: Duration,
    /// How often a key's quota counters are re-read from the store, to see
    /// other instances' usage.
    pub quota_refresh: Duration,
    /// `last_used_at` is written at most once per key per this interval.
    pub last_used_interval: Duration,
    /// Batches written at once, each its own transaction on its own
    /// connection (at least 1): the writer fills the next batches while the
    /// store commits the last. Each is a lane of its own keys (a key's lane
    /// is fixed by its id), so writes in flight never wait for each other's
    /// roll-up rows; a lane writes one batch at a time.
    pub concurrent_writes: usize,
    /// How long a batch the store fails is tried again (after 50 ms, then
    /// twice as long each time, at most 5 s apart) before its requests are
    /// counted as failed: a store outage shorter than this loses no usage.
    /// Meanwhile the batch's records stay queued, so a longer outage fills
    /// the queue and later requests are dropped and counted. A shutdown
    /// cuts the waits short: a batch that has failed three times is given
    /// up at its next failure. `Duration::ZERO` gives up at the first.
    pub write_retry: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 2000,
            flush_interval: Duration::from_secs(1),
            quota_refresh: Duration::from_secs(5),
            last_used_interval: Duration::from_secs(60),
            concurrent_writes: 2,
            write_retry: Duration::from_secs(60),
        }
    }
}

/// What the usage writer keeps of passed requests. Roll-ups (hourly, daily,
/// monthly, with outcomes) and quotas are exact in every mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageMode {
    /// One raw record per passed request (the default).
    #[default]
    Records,
    /// No raw records: a passed request adds to its key's counters for the
    /// hour in process (no queue entry), and each flush adds one increment
    /// per active key and hour to the roll-ups.
    Aggregates,
    /// One raw record in `n` passed requests (per engine, in arrival order);
    /// the others only in the roll-ups. `Sampled(1)` is `Records`.
    Sampled(u32),
}

/// What the recorder has done so far. Every request the recorder accepts
/// (passed, or refused with a known key) ends in exactly one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// Requests written to the store: as raw records or in roll-ups.
    pub written: u64,
    /// Records dropped because the queue was full (or the engine shut down).
    pub dropped: u64,
    /// Records lost because the store kept failing the batch.
    pub failed: u64,
    /// Writes of a batch the store failed that were tried again: not
    /// requests, and not an outcome (a batch riding out an outage adds one
    /// per retry and then is written or fails).
    pub retried_writes: u64,
}

/// Records a thread buffers before handing them to the writer as one
/// message.
const SHARD_BATCH: usize = 64;

/// A passed request's usage as the request path queues it: 64 bytes of
/// numbers, no `Arc` and no text, pushed into its thread's buffer as is.
/// The writer turns it into a [`UsageRecord`]: it numbers the record
/// ([`UsageId`]) and reads route, user agent and tenant back from the
/// engine's [`UsageTexts`] once per batch. What no table could number (a
/// full table, the raw path, a method outside the standard ones, a latency
/// of seconds) goes beside it in a [`Spill`], and the entry carries
/// [`SPILLED`] there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UsageEntry {
    key_id: KeyId,
    /// 17 bytes, as packed as it gets.
    ip: Option<IpAddr>,
    /// The validation's `checked_at`, as is (a conversion to an integer
    /// and back is calendar arithmetic on each side).
    timestamp: DateTime<Utc>,
    /// Nanoseconds to answer (up to 4.29 s).
    latency: u32,
    /// [`EntryNames`], laid out flat (as a struct it would be padded).
    tenant: u32,
    endpoint: u32,
    user_agent: u32,
    method: u8,
    status: u16,
}

/// What an entry names, by number: each from its table in
/// [`UsageTexts`], or [`SPILLED`] (for the method [`SPILLED_METHOD`])
/// where a [`Spill`] holds the value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryNames {
    pub(crate) tenant: u32,
    pub(crate) endpoint: u32,
    /// [`NO_USER_AGENT`] when the request sent none.
    pub(crate) user_agent: u32,
    /// A standard method's code ([`SharedStr::method_code`]).
    pub(crate) method: u8,
}

/// An entry's number that stands for a value in its [`Spill`].
const SPILLED: u32 = u32::MAX;
/// An entry's user agent when the request sent none.
pub(crate) const NO_USER_AGENT: u32 = u32::MAX - 1;
/// An entry's method that is in its [`Spill`].
const SPILLED_METHOD: u8 = u8::MAX;

/// The values of an entry that no table numbered, queued right after it;
/// boxed, as most entries have none.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    tenant: Option<SharedTenant>,
    endpoint: Option<SharedStr>,
    method: Option<SharedStr>,
    user_agent: Option<SharedStr>,
    latency: Option<Duration>,
}

impl Spill {
    fn of(slot: &mut Option<Box<Spill>>) -> &mut Spill {
        slot.get_or_insert_with(Box::default)
    }

    /// Puts `tenant` in the entry's spill; the number that says so.
    pub(crate) fn tenant(slot: &mut Option<Box<Spill>>, tenant: SharedTenant) -> u32 {
        Self::of(slot).tenant = Some(tenant);
        SPILLED
    }

    /// Puts `endpoint` in the entry's spill; the number that says so.
    pub(crate) fn endpoint(slot: &mut Option<Box<Spill>>, endpoint: SharedStr) -> u32 {
        Self::of(slot).endpoint = Some(endpoint);
        SPILLED
    }

    /// Puts `method` in the entry's spill; the code that says so.
    pub(crate) fn method(slot: &mut Option<Box<Spill>>, method: SharedStr) -> u8 {
        Self::of(slot).method = Some(method);
        SPILLED_METHOD
    }

    /// Puts `agent` in the entry's spill; the number that says so.
    pub(crate) fn user_agent(slot: &mut Option<Box<Spill>>, agent: SharedStr) -> u32 {
        Self::of(slot).user_agent = Some(agent);
        SPILLED
    }
}

impl UsageEntry {
    /// The entry of a request of `key_id` answered with `status`; a latency
    /// past what it holds goes into `spill`.
    pub(crate) fn new(
        key_id: KeyId, names: EntryNames, status: u16, ip: Option<IpAddr>, latency: Duration, timestamp: DateTime<Utc>,
        spill: &mut Option<Box<Spill>>,
    ) -> Self {
        let latency = match u32::try_from(latency.as_nanos()) {
            Ok(nanos) if nanos != SPILLED => nanos,
            _ => {
                Spill::of(spill).latency = Some(latency);
                SPILLED
            }
        };
        let EntryNames { tenant, endpoint, user_agent, method } = names;
        Self { key_id, ip, timestamp, latency, tenant, endpoint, user_agent, method, status }
    }

    /// Whether a [`Spill`] was queued after it.
    fn spilled(&self) -> bool {
        self.tenant == SPILLED
            || self.endpoint == SPILLED
            || self.user_agent == SPILLED
            || self.method == SPILLED_METHOD
            || self.latency == SPILLED
    }

    /// The key's tenant, from the spill or the table.
    fn tenant(&self, tenants: &Reader<'_, SharedTenant>, spill: Option<&Spill>) -> SharedTenant {
        let spilled = spill.and_then(|spill| spill.tenant.clone());
        spilled.or_else(|| tenants.get(self.tenant).cloned()).unwrap_or_else(unknown_tenant)
    }

    /// The record, numbered `id`, its values read from `texts` and `spill`.
    /// Inlined: the record is then built where the writer keeps it.
    #[inline]
    pub(crate) fn into_record(self, id: UsageId, texts: &TextsRead<'_>, spill: Option<Box<Spill>>) -> UsageRecord {
        let mut record = UsageRecord {
            id,
            key_id: self.key_id,
            tenant: texts.tenants.get(self.tenant).cloned().unwrap_or_else(unknown_tenant),
            endpoint: texts.routes.get(self.endpoint).cloned().unwrap_or_default(),
            method: SharedStr::standard_method(self.method).map(SharedStr::from).unwrap_or_default(),
            status: self.status,
            ip: self.ip,
            user_agent: (self.user_agent != NO_USER_AGENT)
                .then(|| texts.user_agents.get(self.user_agent).cloned().unwrap_or_default()),
            latency: Duration::from_nanos(u64::from(self.latency)),
            timestamp: self.timestamp,
        };
        if let Some(spill) = spill {
            let Spill { tenant, endpoint, method, user_agent, latency } = *spill;
            record.tenant = tenant.unwrap_or(record.tenant);
            record.endpoint = endpoint.unwrap_or(record.endpoint);
            record.method = method.unwrap_or(record.method);
            record.user_agent = user_agent.or(record.user_agent);
            record.latency = latency.unwrap_or(record.latency);
        }
        record
    }
}

/// The tenant of an entry whose number its table does not hold: never, as
/// numbers come from the engine's own table, which removes none; the record
/// is then nobody's rather than lost.
fn unknown_tenant() -> SharedTenant {
    SharedTenant::from(Tenant { app_id: String::new(), tenant_id: String::new() })
}

/// A thread's queued usage: entries from the adapters, whole records from
/// [`Engine::record_usage`](crate::Engine::record_usage), and the requests
/// counted without a record (refusals; passed requests under
/// [`UsageMode::Aggregates`]) folded per key and hour.
#[derive(Default)]
struct Buffer {
    entries: Vec<UsageEntry>,
    /// The spills of the entries that have one, in their order.
    #[expect(clippy::vec_box, reason = "kept in the box the request path made, and handed on in it to the writer")]
    spills: Vec<Box<Spill>>,
    records: Vec<UsageRecord>,
    counted: Counted,
}

/// Requests kept only as counts, per key and hour.
#[derive(Default)]
struct Counted {
    deltas: HashMap<(KeyId, DateTime<Utc>), UsageDelta, foldhash::fast::RandomState>,
    /// Requests folded into `deltas`.
    requests: usize,
}

impl Counted {
    /// Adds `counts` of `key_id` at `at` (hour-aligned) to the key's delta;
    /// false, adding nothing, when the key has none yet and `room` says no.
    /// `tenant` gives the key's tenant for a new delta.
    fn add(
        &mut self, key_id: KeyId, tenant: impl FnOnce() -> SharedTenant, hour: DateTime<Utc>, counts: &UsageCounts,
        room: impl FnOnce() -> bool,
    ) -> bool {
        match self.deltas.entry((key_id, hour)) {
            Entry::Occupied(mut delta) => delta.get_mut().counts.add(counts),
            Entry::Vacant(vacant) => {
                if !room() {
                    return false;
                }
                vacant.insert(UsageDelta { key_id, tenant: tenant(), hour, counts: *counts });
            }
        }
        self.requests += 1;
        true
    }

    /// Adds `delta`, which counts `requests` requests.
    fn merge(&mut self, delta: UsageDelta, requests: usize) {
        match self.deltas.entry((delta.key_id, delta.hour)) {
            Entry::Occupied(mut held) => held.get_mut().counts.add(&delta.counts),
            Entry::Vacant(vacant) => {
                vacant.insert(delta);
            }
        }
        self.requests += requests;
    }
}

impl Buffer {
    /// Places it holds in the queue: one per entry or record, one per key
    /// and hour counted.
    fn len(&self) -> usize {
        self.entries.len() + self.records.len() + self.counted.deltas.len()
    }

    /// Requests it holds.
    fn requests(&self) -> usize {
        self.entries.len() + self.records.len() + self.counted.requests
    }

    fn with_capacity(entries: usize) -> Self {
        Self { entries: Vec::with_capacity(entries), ..Self::default() }
    }
}

enum Message {
    Records(Buffer),
    Touch(KeyId, DateTime<Utc>),
    Flush(oneshot::Sender<()>),
    Shutdown,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retried_writes: AtomicU64,
}

struct Running {
    tx: mpsc::Sender<Message>,
    /// Each thread's buffer of records not yet sent.
    shards: Arc<Shards>,
    /// Wakes the writer. Records alone do not: the writer sleeps until its
    /// interval or until the queue holds a batch, so a busy server does not
    /// pay a thread wake-up per request.
    wake: Arc<Notify>,
    /// Queue length at which a record wakes the writer.
    wake_at: usize,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Set when the engine shuts down: failed writes stop being retried.
    closing: Arc<watch::Sender<bool>>,
}

/// Owns the queue and the background task, started by [`start_here`]
/// (the engine calls it when built inside a Tokio runtime, and
/// `Engine::start` from inside one); never lazily by whichever request
/// records first, whose runtime may stop before the process does.
///
/// [`start_here`]: UsageRecorder::start_here
pub(crate) struct UsageRecorder {
    config: UsageConfig,
    mode: UsageMode,
    store: Arc<dyn Store>,
    quotas: Arc<QuotaTracker>,
    counters: Arc<Counters>,
    texts: Arc<UsageTexts>,
    running: OnceLock<Option<Running>>,
    /// Set once the "not started" warning was logged.
    warned: AtomicBool,
}

impl std::fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageRecorder").field("config", &self.config).field("stats", &self.stats()).finish()
    }
}

impl UsageRecorder {
    pub(crate) fn new(config: UsageConfig, mode: UsageMode, store: Arc<dyn Store>, quotas: Arc<QuotaTracker>) -> Self {
        Self {
            config,
            mode,
            store,
            quotas,
            counters: Arc::default(),
            texts: Arc::default(),
            running: OnceLock::new(),
            warned: AtomicBool::new(false),
        }
    }

    pub(crate) fn stats(&self) -> UsageStats {
        UsageStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            retried_writes: self.counters.retried_writes.load(Ordering::Relaxed),
        }
    }

    /// The tables whose numbers entries carry.
    pub(crate) fn texts(&self) -> &UsageTexts {
        &self.texts
    }

    /// Queues a record without waiting; a full queue drops it and counts.
    pub(crate) fn record(&self, record: UsageRecord) {
        if self.mode == UsageMode::Aggregates {
            let counts = UsageCounts::passed(record.status);
            return self.count(record.key_id, || record.tenant.clone(), record.timestamp, &counts);
        }
        self.queue(|buffer| buffer.records.push(record));
    }

    /// Queues an entry, and the values its tables could not number, without
    /// waiting; a full queue drops it and counts.
    pub(crate) fn record_entry(&self, entry: UsageEntry, spill: Option<Box<Spill>>) {
        // The writer pairs entries with spills by order: an entry says it
        // has one exactly when it comes with one.
        debug_assert_eq!(entry.spilled(), spill.is_some(), "an entry and its spill travel together");
        if self.mode == UsageMode::Aggregates {
            let tenant = || entry.tenant(&self.texts.tenants.reader(), spill.as_deref());
            return self.count(entry.key_id, tenant, entry.timestamp, &UsageCounts::passed(entry.status));
        }
        self.queue(|buffer| {
            buffer.entries.push(entry);
            buffer.spills.extend(spill);
        });
    }

    /// Queues the refusal of `key` for `reason` at `at`: counted in the
    /// key's roll-ups, charged to nothing. Never waits; a full queue drops
    /// it and counts.
    pub(crate) fn record_refusal(&self, key: &Arc<Key>, reason: RefusalReason, at: DateTime<Utc>) {
        self.count(key.id, || SharedTenant::of_key(key), at, &UsageCounts::refused(reason));
    }

    /// Adds `counts` to the key's counters for the hour of `at` in the
    /// calling thread's buffer: a place in the queue per key and hour, none
    /// per request. Never waits; a new key and hour when the queue is full
    /// is dropped and counted.
    fn count(&self, key_id: KeyId, tenant: impl FnOnce() -> SharedTenant, at: DateTime<Utc>, counts: &UsageCounts) {
        let Some(running) = self.running() else {
            return self.count_dropped(1);
        };
        let shards = &running.shards;
        let hour = Period::Hour.start_of(at);
        let mut queued = None;
        let full = {
            let mut buffer = shards.mine().lock().unwrap_or_else(PoisonError::into_inner);
            if shards.closed.load(Ordering::Acquire) {
                drop(buffer);
                return self.count_dropped(1);
            }
            let room = || {
                let held = shards.queued.fetch_add(1, Ordering::Relaxed);
                queued = Some(held);
                if held < self.config.queue_capacity.max(1) {
                    return true;
                }
                shards.queued.fetch_sub(1, Ordering::Relaxed);
                false
            };
            if !buffer.counted.add(key_id, tenant, hour, counts, room) {
                drop(buffer);
                return self.count_dropped(1);
            }
            (buffer.len() >= SHARD_BATCH).then(|| std::mem::replace(&mut *buffer, Buffer::with_capacity(SHARD_BATCH)))
        };
        self.hand_over(running, full, queued);
    }

    fn queue(&self, push: impl FnOnce(&mut Buffer)) {
        let Some(running) = self.running() else {
            return self.count_dropped(1);
        };
        let shards = &running.shards;
        // Reserve a place first: records buffered, queued or in the writer's
        // hands never exceed the queue's capacity.
        let queued = shards.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= self.config.queue_capacity.max(1) {
            shards.queued.fetch_sub(1, Ordering::Relaxed);
            return self.count_dropped(1);
        }
        let full = {
            let mut buffer = shards.mine().lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the buffer's lock: the writer sets `closed`
            // before it takes the buffers for the last time, so a record is
            // either taken then or refused here.
            if shards.closed.load(Ordering::Acquire) {
                drop(buffer);
                shards.queued.fetch_sub(1, Ordering::Relaxed);
                return self.count_dropped(1);
            }
            push(&mut buffer);
            (buffer.len() >= SHARD_BATCH).then(|| std::mem::replace(&mut *buffer, Buffer::with_capacity(SHARD_BATCH)))
        };
        self.hand_over(running, full, Some(queued));
    }

    /// Sends a thread's `full` buffer to the writer (dropped and counted
    /// when the channel is closed), and wakes the writer when the queue,
    /// `queued` before this request took its place, holds a batch.
    fn hand_over(&self, running: &Running, full: Option<Buffer>, queued: Option<usize>) {
        if let Some(buffer) = full {
            let (places, requests) = (buffer.len(), buffer.requests());
            if running.tx.try_send(Message::Records(buffer)).is_err() {
                running.shards.queued.fetch_sub(places, Ordering::Relaxed);
                self.count_dropped(requests as u64);
            }
        }
        if queued.is_some_and(|queued| queued + 1 >= running.wake_at) {
            running.wake.notify_one();
        }
    }

    fn count_dropped(&self, records: u64) {
        self.counters.dropped.fetch_add(records, Ordering::Relaxed);
        metrics::counter!(DROPPED_TOTAL).increment(records);
    }

    /// The running writer; warns once when it was never started.
    fn running(&self) -> Option<&Running> {
        let Some(running) = self.running.get() else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "keysmith::usage",
                    "usage recorder not started: build the engine inside a Tokio runtime or call Engine::start \
                     from one; usage is dropped and counted until then");
            }
            return None;
        };
        running.as_ref()
    }

    /// Queues a `last_used_at` update; dropped silently when the queue is
    /// full (the next request will try again).
    pub(crate) fn touch(&self, key: KeyId, at: DateTime<Utc>) {
        self.try_send(Message::Touch(key, at));
    }

    /// Writes everything queued so far and waits for it.
    pub(crate) async fn flush(&self) {
        if let Some(Some(running)) = self.running.get() {
            let (done, wait) = oneshot::channel();
            if running.tx.send(Message::Flush(done)).await.is_ok() {
                running.wake.notify_one();
                let _ = wait.await;
            }
        }
    }

    /// Writes what is queued and stops the task; records that arrive later
    /// are dropped and counted.
    pub(crate) async fn shutdown(&self) {
        let Some(Some(running)) = self.running.get() else {
            let _ = self.running.set(None);
            return;
        };
        // Writes failing now get their last attempts, not the whole
        // retry window: a shutdown ends within its own deadline.
        running.closing.send_replace(true);
        if running.tx.send(Message::Shutdown).await.is_ok() {
            running.wake.notify_one();
        }
        let task = running.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(target: "keysmith::usage", %error, "usage task ended abnormally");
        }
    }

    /// Starts the background task on the current Tokio runtime unless it
    /// runs already (or was shut down); outside a runtime, does nothing.
    /// True if the task runs.
    pub(crate) fn start_here(&self) -> bool {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.running.get().is_some_and(Option::is_some);
        }
        self.running.get_or_init(|| self.start()).is_some()
    }

    /// Queues `message`; the running writer if it was accepted.
    fn try_send(&self, message: Message) -> Option<&Running> {
        let running = self.running()?;
        running.tx.try_send(message).ok().map(|()| running)
    }

    fn start(&self) -> Option<Running> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let capacity = self.config.queue_capacity.max(1);
        // Records are bounded by `Shards::queued`; the channel carries them
        // in buffers of up to `SHARD_BATCH`, plus touches and flushes.
        let (tx, rx) = mpsc::channel(capacity);
        let wake = Arc::new(Notify::new());
        let wake_at = self.config.batch_size.min(capacity / 2).max(1);
        let shards = Arc::new(Shards::new());
        let closing = Arc::new(watch::Sender::new(false));
        let sink = Sink {
            store: Arc::clone(&self.store),
            quotas: Arc::clone(&self.quotas),
            counters: Arc::clone(&self.counters),
            shards: Arc::clone(&shards),
            wake: Arc::clone(&wake),
            retry: self.config.write_retry,
            closing: Arc::clone(&closing),
        };
        let worker = Worker {
            config: self.config,
            mode: self.mode,
            sink: Arc::new(sink),
            texts: Arc::clone(&self.texts),
            shards: Arc::clone(&shards),
            lanes: (0..self.config.concurrent_writes.max(1)).map(|_| Lane::default()).collect(),
            sampled: 0,
            id_bits: IdBits::default(),
        };
        let task = runtime.spawn(worker.run(rx, Arc::clone(&wake)));
        Some(Running { tx, shards, wake, wake_at, task: Mutex::new(Some(task)), closing })
    }
}

/// The per-thread buffers of records on their way to the writer.
struct Shards {
    buffers: Box<[Shard]>,
    /// Records buffered, in the channel or in the writer's batch.
    queued: AtomicUsize,
    /// Set by the writer before it takes the buffers for the last time.
    closed: AtomicBool,
}

/// One buffer, on its own cache line so that two threads' pushes do not
/// share one.
#[repr(align(128))]
struct Shard(Mutex<Buffer>);

impl Shards {
    fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let buffers = (0..(threads * 2).clamp(2, 64)).map(|_| Shard(Mutex::new(Buffer::default()))).collect();
        Self { buffers, queued: AtomicUsize::new(0), closed: AtomicBool::new(false) }
    }

    /// The calling thread's buffer.
    fn mine(&self) -> &Mutex<Buffer> {
        thread_local! {
            static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let index = INDEX.with(|index| {
            index.get().unwrap_or_else(|| {
                let next = NEXT.fetch_add(1, Ordering::Relaxed);
                index.set(Some(next));
                next
            })
        });
        &self.buffers[index % self.buffers.len()].0
    }

    /// Takes every thread's buffer, leaving empty ones.
    fn take_all(&self) -> Vec<Buffer> {
        self.buffers
            .iter()
            .map(|shard| std::mem::take(&mut *shard.0.lock().unwrap_or_else(PoisonError::into_inner)))
            .filter(|buffer| buffer.len() > 0)
            .collect()
    }
}

/// What the writer holds for its next write: raw records, and the
/// increments of requests kept only in roll-ups, folded per key and hour.
#[derive(Default)]
struct Batch {
    records: VecDeque<UsageRecord>,
    counted: Counted,
    /// Places in the queue it holds (see [`Buffer::len`]).
    places: usize,
}

impl Batch {
    /// Requests held.
    fn requests(&self) -> usize {
        self.records.len() + self.counted.requests
    }

    fn fold(&mut self, key_id: KeyId, tenant: impl FnOnce() -> SharedTenant, at: DateTime<Utc>, counts: &UsageCounts) {
        self.counted.add(key_id, tenant, Period::Hour.start_of(at), counts, || true);
    }

    /// The oldest `size` records (all of them if fewer), in order; the rest
    /// stay, in order. They leave in the allocation they were gathered in
    /// when the rest is no larger than they are, and the rest is moved to a
    /// new one; else they are moved out (a batch may hold many times `size`
    /// while its lane writes). Either way at most `size` records are
    /// copied. The next batch is likely as large as the largest so far:
    /// room for it now (up to two batches) rather than a copy of every
    /// record at each doubling.
    fn take_oldest(&mut self, size: usize) -> Vec<UsageRecord> {
        let records = &mut self.records;
        if records.len() > 2 * size {
            return records.drain(..size).collect();
        }
        let mut rest = VecDeque::with_capacity(records.capacity().min(2 * size));
        rest.extend(records.drain(records.len().min(size)..));
        std::mem::replace(records, rest).into()
    }
}

/// The batch of one lane's keys, and its write in flight.
#[derive(Default)]
struct Lane {
    batch: Batch,
    /// Its last write, until it is known to be done.
    writing: Option<JoinHandle<()>>,
}

impl Lane {
    /// Waits until its write in flight, if any, is done.
    async fn settle(&mut self) {
        if let Some(writing) = self.writing.take() {
            log_panic(writing.await);
        }
    }

    /// Forgets its write if it is done (logging a panic).
    async fn reap(&mut self) {
        if self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.settle().await;
        }
    }

    /// Whether a write is in flight.
    fn busy(&self) -> bool {
        self.writing.as_ref().is_some_and(|writing| !writing.is_finished())
    }
}

/// The lane of `key_id` among `lanes`.
fn lane_of(key_id: KeyId, lanes: usize) -> usize {
    let id = key_id.uuid().as_u128();
    // Both halves: a time-ordered id's random bits are in its low half.
    let folded = (id as u64) ^ ((id >> 64) as u64);
    (folded % lanes as u64) as usize
}

struct Worker {
    config: UsageConfig,
    mode: UsageMode,
    sink: Arc<Sink>,
    texts: Arc<UsageTexts>,
    shards: Arc<Shards>,
    /// One per write in flight at most (`config.concurrent_writes`).
    lanes: Box<[Lane]>,
    /// Passed requests seen, for [`UsageMode::Sampled`].
    sampled: u64,
    /// The random bits of the next records' ids.
    id_bits: IdBits,
}

/// Ids numbered per read of the OS random generator.
const IDS_PER_READ: usize = 64;

/// The random bits below a record id's millisecond (ids that counted up
/// would tell a tenant how many records of others the writer numbered
/// between two of its own), read from the OS for [`IDS_PER_READ`] ids at
/// a time rather than drawn per record.
struct IdBits {
    block: [u8; 10 * IDS_PER_READ],
    used: usize,
}

impl Default for IdBits {
    fn default() -> Self {
        Self { block: [0; 10 * IDS_PER_READ], used: 10 * IDS_PER_READ }
    }
}

impl IdBits {
    /// A new record id of the time `at`.
    fn id_at(&mut self, at: DateTime<Utc>) -> UsageId {
        if self.used == self.block.len() {
            if getrandom::fill(&mut self.block).is_err() {
                return UsageId::at(at);
            }
            self.used = 0;
        }
        let mut random = [0; 10];
        random.copy_from_slice(&self.block[self.used..self.used + 10]);
        self.used += 10;
        UsageId::with_random(at, &random)
    }
}

/// Where the writer's batches go, shared with the writes in flight.
struct Sink {
    store: Arc<dyn Store>,
    quotas: Arc<QuotaTracker>,
    counters: Arc<Counters>,
    shards: Arc<Shards>,
    /// Wakes the writer when a write is done, so its lane's next batch goes.
    wake: Arc<Notify>,
    /// How long a failed batch is tried again ([`UsageConfig::write_retry`]).
    retry: Duration,
    /// True once the engine shuts down (or the writer stops).
    closing: Arc<watch::Sender<bool>>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>, wake: Arc<Notify>) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            let stop = self.drain(&mut rx).await;
            self.take_buffered().await;
            self.write_idle(1).await;
            for lane in &mut self.lanes {
                lane.reap().await;
            }
            if stop {
                break;
            }
        }
        // However the writer stops (a shutdown, or the engine dropped),
        // what is left is written without waiting out an outage.
        self.sink.closing.send_replace(true);
        // Refuse new records and messages, then take what is already
        // buffered or queued.
        self.shards.closed.store(true, Ordering::Release);
        rx.close();
        while let Some(message) = rx.recv().await {
            self.handle(message).await;
        }
        self.take_buffered().await;
        self.write_all().await;
    }

    /// Waits until every write in flight is done.
    async fn settle(&mut self) {
        for lane in &mut self.lanes {
            lane.settle().await;
        }
    }

    /// Takes every thread's buffered records into the batch, writing full
    /// batches on the way.
    async fn take_buffered(&mut self) {
        for buffer in self.shards.take_all() {
            self.append(buffer);
        }
        self.write_idle(self.config.batch_size.max(1)).await;
    }

    /// Moves `buffer` into the batch: records kept as the mode says (entries
    /// numbered, their text read back), the rest folded into roll-up
    /// increments.
    /// Each goes to the batch of its key's lane, with the place it held.
    fn append(&mut self, mut buffer: Buffer) {
        let lanes = self.lanes.len();
        let mut counted = 0;
        for (_, delta) in std::mem::take(&mut buffer.counted.deltas) {
            // Every request counted is one passed or one refused.
            let requests = usize::try_from(delta.counts.requests + delta.counts.refused.total()).unwrap_or(usize::MAX);
            counted += requests;
            let batch = &mut self.lanes[lane_of(delta.key_id, lanes)].batch;
            batch.places += 1;
            batch.counted.merge(delta, requests);
        }
        debug_assert_eq!(counted, buffer.counted.requests, "a request counted is one passed or one refused");
        for record in buffer.records.drain(..) {
            let keep = self.keeps_next();
            let batch = &mut self.lanes[lane_of(record.key_id, lanes)].batch;
            batch.places += 1;
            if keep {
                batch.records.push_back(record);
            } else {
                let counts = UsageCounts::passed(record.status);
                batch.fold(record.key_id, || record.tenant.clone(), record.timestamp, &counts);
            }
        }
        if !buffer.entries.is_empty() {
            let texts = Arc::clone(&self.texts);
            let texts = texts.read();
            let mut spills = buffer.spills.drain(..);
            for &entry in &buffer.entries {
                let spill = if entry.spilled() { spills.next() } else { None };
                let keep = self.keeps_next();
                let batch = &mut self.lanes[lane_of(entry.key_id, lanes)].batch;
                batch.places += 1;
                if keep {
                    let id = self.id_bits.id_at(entry.timestamp);
                    batch.records.push_back(entry.into_record(id, &texts, spill));
                } else {
                    let tenant = || entry.tenant(&texts.tenants, spill.as_deref());
                    batch.fold(entry.key_id, tenant, entry.timestamp, &UsageCounts::passed(entry.status));
                }
            }
        }
    }

    /// Whether the next passed request becomes a raw record.
    fn keeps_next(&mut self) -> bool {
        match self.mode {
            UsageMode::Records => true,
            UsageMode::Aggregates => false,
            UsageMode::Sampled(n) => {
                let keep = self.sampled.is_multiple_of(u64::from(n.max(1)));
                self.sampled += 1;
                keep
            }
        }
    }

    /// Handles everything queued now; true when the writer should stop.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<Message>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => return true,
                Ok(message) => self.handle(message).await,
                Err(TryRecvError::Empty) => return false,
            }
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Records(buffer) => {
                self.append(buffer);
                self.write_idle(self.config.batch_size.max(1)).await;
            }
            Message::Touch(key, at) => {
                if let Err(error) = self.sink.store.touch_key(key, at).await {
                    tracing::warn!(target: "keysmith::usage", %error, "could not update last_used_at");
                }
            }
            Message::Flush(done) => {
                self.take_buffered().await;
                self.write_all().await;
                let _ = done.send(());
            }
            Message::Shutdown => {}
        }
    }

    /// Writes everything held, a batch per lane at a time, and waits for
    /// every write.
    async fn write_all(&mut self) {
        while self.lanes.iter().any(|lane| lane.batch.requests() > 0) {
            for lane in 0..self.lanes.len() {
                self.lanes[lane].settle().await;
                self.write_lane(lane);
            }
        }
        self.settle().await;
    }

    /// Writes the batch of every lane without a write in flight that holds
    /// at least `places` places. Never waits: a busy lane's batch goes when
    /// its write is done (which wakes the writer), so one slow write never
    /// holds up the other lanes.
    async fn write_idle(&mut self, places: usize) {
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].batch.places >= places && !self.lanes[lane].busy() {
                self.lanes[lane].reap().await;
                self.write_lane(lane);
            }
        }
    }

    /// Starts the write of up to `batch_size` records of `lane`'s batch,
    /// with all its roll-up increments; the rest stays in the batch. The
    /// lane must have no write in flight.
    fn write_lane(&mut self, lane: usize) {
        let lane = &mut self.lanes[lane];
        debug_assert!(lane.writing.is_none(), "one write in flight per lane");
        if lane.batch.requests() == 0 {
            return;
        }
        let batch = &mut lane.batch;
        let chunk = batch.take_oldest(self.config.batch_size.max(1));
        // Every record holds one place; the rest go with the increments.
        let places = batch.places - batch.records.len();
        batch.places = batch.records.len();
        let counted = std::mem::take(&mut batch.counted);
        let (deltas, folded): (Vec<UsageDelta>, usize) = (counted.deltas.into_values().collect(), counted.requests);
        let sink = Arc::clone(&self.sink);
        lane.writing = Some(tokio::spawn(async move {
            let batch = UsageBatch { id: UsageId::new(), records: &chunk, deltas: &deltas };
            sink.write(&batch, chunk.len() + folded).await;
            sink.shards.queued.fetch_sub(places, Ordering::Relaxed);
            sink.wake.notify_one();
        }));
    }
}

/// The first wait before a failed batch is tried again; each next wait is
/// twice as long, up to [`LONGEST_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(50);
/// The longest wait between two attempts at one batch.
const LONGEST_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Once the engine shuts down, a failing batch is given up at this attempt
/// (or at its next one, if it has had more already).
const ATTEMPTS_WHEN_CLOSING: u32 = 3;

impl Sink {
    /// Writes one batch of `requests` requests, trying again under the same
    /// batch id (so a write that committed but failed to answer counts
    /// once) for [`UsageConfig::write_retry`], or up to a third attempt once
    /// the engine shuts down; a batch that still fails is counted as
    /// failed, never silently lost.
    async fn write(&self, batch: &UsageBatch<'_>, requests: usize) {
        let started = tokio::time::Instant::now();
        let mut wait = FIRST_RETRY_WAIT;
        let mut closing = self.closing.subscribe();
        for attempt in 1.. {
            // Each attempt is announced to the quotas on its own: a quota
            // read between two attempts (the batch not in the store) is
            // exact, so a long outage does not keep every quota re-reading.
            self.quotas.begin_write();
            let error = match self.store.write_usage(batch).await {
                Ok(()) => {
                    self.counters.written.fetch_add(requests as u64, Ordering::Relaxed);
                    self.quotas.end_write(passed_requests(batch));
                    return;
                }
                Err(error) => {
                    // Nothing of it is in the store (a store that committed
                    // but did not answer makes quotas over-count for a while,
                    // never under-count): its requests stay pending.
                    self.quotas.end_write(std::iter::empty());
                    error
                }
            };
            let given_up = if *closing.borrow() {
                attempt >= ATTEMPTS_WHEN_CLOSING
            } else {
                started.elapsed() + wait > self.retry
            };
            if given_up {
                let lost = requests as u64;
                tracing::error!(target: "keysmith::usage", %error, lost, attempt, "usage batch failed; records lost");
                self.counters.failed.fetch_add(lost, Ordering::Relaxed);
                metrics::counter!(FAILED_TOTAL).increment(lost);
                // Lost records stay counted as pending: a quota
                // over-counts rather than gives them away.
                return;
            }
            tracing::warn!(target: "keysmith::usage", %error, attempt, retry_in = ?wait, "usage batch failed; retrying");
            self.counters.retried_writes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(RETRIED_WRITES_TOTAL).increment(1);
            // A shutdown ends this wait at once; later waits (50 and 100 ms,
            // up to the third attempt) are slept in full.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = closing.wait_for(|closing| *closing), if !*closing.borrow() => {}
            }
            wait = (wait * 2).min(LONGEST_RETRY_WAIT);
        }
    }
}

/// Logs a write task that panicked (its batch is lost and not counted).
fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(target: "keysmith::usage", %error, "usage write task ended abnormally");
    }
}

/// The passed requests of `batch` as (key, time, count), for the quotas.
fn passed_requests<'a>(batch: &'a UsageBatch<'a>) -> impl Iterator<Item = (KeyId, DateTime<Utc>, u64)> + 'a {
    let records = batch.records.iter().map(|r| (r.key_id, r.timestamp, 1));
    let deltas = batch.deltas.iter().filter(|d| d.counts.requests > 0).map(|d| (d.key_id, d.hour, d.counts.requests));
    records.chain(deltas)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{MemoryStore, Tenant};

    fn worker(lanes: usize) -> Worker {
        let shards = Arc::new(Shards::new());
        let config = UsageConfig { concurrent_writes: lanes, ..UsageConfig::default() };
        let sink = Sink {
            store: Arc::new(MemoryStore::new()),
            quotas: Arc::new(QuotaTracker::new(Duration::from_secs(5))),
            counters: Arc::default(),
            shards: Arc::clone(&shards),
            wake: Arc::default(),
            retry: config.write_retry,
            closing: Arc::new(watch::Sender::new(false)),
        };
        Worker {
            config,
            mode: UsageMode::Records,
            sink: Arc::new(sink),
            texts: Arc::default(),
            shards,
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            sampled: 0,
            id_bits: IdBits::default(),
        }
    }

    fn record(key_id: KeyId, tenant: &SharedTenant, at: DateTime<Utc>) -> UsageRecord {
        UsageRecord {
            id: UsageId::at(at),
            key_id,
            tenant: tenant.clone(),
            endpoint: "/v1/things".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(1),
            timestamp: at,
        }
    }

    #[test]
    fn record_ids_of_one_millisecond_do_not_count_up() {
        // Ids that counted up would tell a tenant how many records of other
        // tenants were numbered between two of its own.
        let mut worker = worker(1);
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        // Every entry at the same instant, of its own key.
        let entry = || {
            let mut spill = None;
            let names = EntryNames {
                tenant: Spill::tenant(&mut spill, SharedTenant::from(Tenant::new("app", "acme"))),
                endpoint: UsageTexts::UNMATCHED,
                method: 0,
                user_agent: NO_USER_AGENT,
            };
            (UsageEntry::new(KeyId::new(), names, 200, None, Duration::from_millis(1), at, &mut spill), spill)
        };
        // More than one read of the OS generator's worth.
        let count = IDS_PER_READ + IDS_PER_READ / 2;
        let mut buffer = Buffer::with_capacity(count);
        for (entry, spill) in (0..count).map(|_| entry()) {
            buffer.entries.push(entry);
            buffer.spills.extend(spill);
        }
        worker.append(buffer);
        let ids: Vec<u128> = worker.lanes[0].batch.records.iter().map(|r| r.id.uuid().as_u128()).collect();
        assert_eq!(ids.len(), count);
        let next_millisecond = UsageId::first_uuid_at(at + chrono::TimeDelta::milliseconds(1)).as_u128();
        let of_at = |id: &u128| (UsageId::first_uuid_at(at).as_u128()..next_millisecond).contains(id);
        assert!(ids.iter().all(of_at), "every id carries its record's millisecond");
        // The 74 bits below the millisecond: random, so no two of 96 are
        // within 2^32 of each other but once in ~2^28 runs.
        let mut random: Vec<u128> = ids.iter().map(|id| id & ((1 << 80) - 1)).collect();
        random.sort_unstable();
        assert!(random.windows(2).all(|pair| pair[1] - pair[0] > 1 << 32), "ids count up: {random:x?}");
    }

    #[test]
    fn an_entry_is_64_bytes_and_becomes_the_record_it_was_made_of() {
        assert!(size_of::<UsageEntry>() <= 64, "{} bytes", size_of::<UsageEntry>());
        let texts = UsageTexts::default();
        let at = DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
        let key = super::super::quota::tests::key(&Tenant::new("app", "acme"), at);
        let names = EntryNames {
            tenant: texts.tenant(&key).unwrap(),
            endpoint: texts.route("/v1/things").unwrap(),
            method: SharedStr::method_code("PATCH").unwrap(),
            user_agent: texts.settle_user_agent(&texts.look_up_user_agent("curl/8")).unwrap(),
        };
        let latency = Duration::from_nanos(1_234_567);
        for ip in [None, Some(IpAddr::from([10, 0, 0, 7])), Some("2001:db8::1".parse().unwrap())] {
            let mut spill = None;
            let entry = UsageEntry::new(key.id, names, 404, ip, latency, at, &mut spill);
            assert!(spill.is_none() && !entry.spilled(), "every value numbered");
            let record = entry.into_record(UsageId::at(at), &texts.read(), spill);
            assert_eq!(
                (record.key_id, record.tenant.tenant(), record.status, record.ip),
                (key.id, &key.tenant, 404, ip)
            );
            assert_eq!((record.endpoint.as_str(), record.method.as_str()), ("/v1/things", "PATCH"));
            assert_eq!((record.user_agent.as_deref(), record.latency, record.timestamp), (Some("curl/8"), latency, at));
        }
    }

    #[test]
    fn what_no_table_numbers_is_queued_beside_its_entry_and_recorded_as_sent() {
        let mut worker = worker(1);
        let texts = Arc::clone(&worker.texts);
        let tenant = SharedTenant::from(Tenant::new("app", "acme"));
        let route = texts.route("/v1/things").unwrap();
        let numbered = texts.tenants.add(tenant.clone()).unwrap();
        let now = DateTime::from_timestamp(1_767_225_600, 5).unwrap();
        // Past the 4.29 s of nanoseconds an entry holds.
        let slow = Duration::from_secs(5);
        let mut buffer = Buffer::default();
        for n in 0..6_u16 {
            let spilled = n % 2 == 1;
            let mut spill = None;
            let names = if spilled {
                EntryNames {
                    tenant: Spill::tenant(&mut spill, tenant.clone()),
                    endpoint: Spill::endpoint(&mut spill, SharedStr::from(format!("/raw/{n}"))),
                    method: Spill::method(&mut spill, SharedStr::copied("PROPFIND")),
                    user_agent: Spill::user_agent(&mut spill, SharedStr::from(format!("agent/{n}"))),
                }
            } else {
                EntryNames { tenant: numbered, endpoint: route, method: 0, user_agent: NO_USER_AGENT }
            };
            let latency = if spilled { slow } else { Duration::ZERO };
            let entry = UsageEntry::new(KeyId::new(), names, 200 + n, None, latency, now, &mut spill);
            assert_eq!((entry.spilled(), spill.is_some()), (spilled, spilled));
            buffer.entries.push(entry);
            buffer.spills.extend(spill);
        }
        worker.append(buffer);
        let records = &worker.lanes[0].batch.records;
        assert_eq!(records.len(), 6);
        for (n, record) in (0..6_u16).zip(records) {
            assert_eq!((record.status, record.tenant.tenant(), record.timestamp), (200 + n, tenant.tenant(), now));
            if n % 2 == 1 {
                assert_eq!(
                    (record.endpoint.as_str(), record.method.as_str()),
                    (format!("/raw/{n}").as_str(), "PROPFIND")
                );
                assert_eq!((record.user_agent.as_deref(), record.latency), (Some(format!("agent/{n}").as_str()), slow));
            } else {
                assert_eq!((record.endpoint.as_str(), record.method.as_str()), ("/v1/things", "GET"));
                assert_eq!((record.user_agent.as_deref(), record.latency), (None, Duration::ZERO));
            }
        }
    }

    #[test]
    fn a_batch_gives_its_oldest_records_in_order_and_keeps_the_rest_in_order() {
        let tenant = SharedTenant::from(Tenant::new("app", "acme"));
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let size = 4;
        // Fewer than a batch, a batch, the rest smaller or larger than a
        // batch, many batches; the deque wrapped around its allocation too.
        for held in [0, 1, 4, 5, 8, 9, 13, 40] {
            for wrapped in [false, true] {
                let mut batch = Batch::default();
                if wrapped {
                    for _ in 0..3 {
                        batch.records.push_back(record(KeyId::new(), &tenant, at));
                    }
                    batch.records.drain(..3);
                }
                let ids: Vec<UsageId> = (0..held)
                    .map(|_| {
                        let record = record(KeyId::new(), &tenant, at);
                        let id = record.id;
                        batch.records.push_back(record);
                        id
                    })
                    .collect();
                let mut taken = Vec::new();
                while !batch.records.is_empty() {
                    let chunk = batch.take_oldest(size);
                    assert!(!chunk.is_empty() && chunk.len() <= size, "{held}: a chunk of {}", chunk.len());
                    taken.extend(chunk.iter().map(|record| record.id));
                }
                assert_eq!(taken, ids, "{held} held, wrapped: {wrapped}");
            }
        }
    }

    #[test]
    fn each_key_goes_to_one_lane_with_its_places_and_requests() {
        let tenant = SharedTenant::from(Tenant::new("app", "acme"));
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let keys: Vec<KeyId> = (0..64).map(|_| KeyId::new()).collect();
        let mut buffer = Buffer::default();
        for (n, key) in keys.iter().cycle().take(640).enumerate() {
            buffer.records.push(record(*key, &tenant, at));
            if n % 3 == 0 {
                let counts = UsageCounts::refused(RefusalReason::RateLimited);
                buffer.counted.add(*key, || tenant.clone(), Period::Hour.start_of(at), &counts, || true);
            }
        }
        let (places, requests) = (buffer.len(), buffer.requests());
        let mut worker = worker(2);
        worker.append(buffer);

        let lanes: Vec<HashSet<KeyId>> = worker
            .lanes
            .iter()
            .map(|lane| {
                let records = lane.batch.records.iter().map(|r| r.key_id);
                records.chain(lane.batch.counted.deltas.values().map(|d| d.key_id)).collect()
            })
            .collect();
        assert!(lanes[0].is_disjoint(&lanes[1]), "two writes in flight never share a key's roll-up rows");
        assert_eq!(lanes[0].len() + lanes[1].len(), keys.len());
        assert!(!lanes[0].is_empty() && !lanes[1].is_empty(), "64 keys over two lanes");
        assert_eq!(worker.lanes.iter().map(|lane| lane.batch.places).sum::<usize>(), places);
        assert_eq!(worker.lanes.iter().map(|lane| lane.batch.requests()).sum::<usize>(), requests);
    }
}
