//! The usage recorder: a bounded queue drained by one background task that
//! writes batches, so the request path never waits for the store.
//!
//! The request path queues a [`UsageEntry`]: no record id, no text but
//! numbers in the engine's [`UsageTexts`]; the writer numbers the record
//! ([`UsageId`]) and reads its text back once per batch, so a passed
//! request copies no string and generates no id.
//!
//! A record first goes into its thread's buffer (one of a few
//! [`Shards`], picked once per thread, so threads do not contend), which
//! moves to the shared channel as one message when it holds
//! [`SHARD_BATCH`] records; the writer also empties every buffer on each
//! tick, flush and shutdown, so a record waits at most one flush interval.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::quota::QuotaTracker;
use super::texts::{Text, UsageTexts};
use super::{Period, RefusalReason, SharedStr, SharedTenant, UsageBatch, UsageCounts, UsageDelta, UsageRecord};
use crate::{Key, KeyId, Store, UsageId};

/// Counter: usage records dropped because the queue was full or closed.
const DROPPED_TOTAL: &str = "keysmith_usage_dropped_total";
/// Counter: usage records lost because the store refused the batch.
const FAILED_TOTAL: &str = "keysmith_usage_failed_total";

/// How usage is queued and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// Records the queue holds; past it new records are dropped and counted.
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
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 2000,
            flush_interval: Duration::from_secs(1),
            quota_refresh: Duration::from_secs(5),
            last_used_interval: Duration::from_secs(60),
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
    /// No raw records: each flush adds one increment per active key and
    /// hour to the roll-ups.
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
}

/// Records a thread buffers before handing them to the writer as one
/// message.
const SHARD_BATCH: usize = 64;

/// A passed request's usage as the request path queues it: what a
/// [`UsageRecord`] holds, less its id (assigned by the writer), its text
/// as numbers of the engine's [`UsageTexts`] where they have them.
#[derive(Debug, Clone)]
pub(crate) struct UsageEntry {
    pub(crate) key_id: KeyId,
    pub(crate) tenant: SharedTenant,
    pub(crate) endpoint: Text,
    pub(crate) method: SharedStr,
    pub(crate) status: u16,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) user_agent: Option<Text>,
    pub(crate) latency: Duration,
    pub(crate) timestamp: DateTime<Utc>,
}

impl UsageEntry {
    /// The record, numbered `id`, its text read from `texts`.
    pub(crate) fn into_record(self, id: UsageId, texts: &TextsRead<'_>) -> UsageRecord {
        UsageRecord {
            id,
            key_id: self.key_id,
            tenant: self.tenant,
            endpoint: texts.routes.text(self.endpoint),
            method: self.method,
            status: self.status,
            ip: self.ip,
            user_agent: self.user_agent.map(|agent| texts.user_agents.text(agent)),
            latency: self.latency,
            timestamp: self.timestamp,
        }
    }
}

/// A refused request of a known key, as queued: counted in its key's
/// roll-ups, never a raw record.
#[derive(Debug, Clone)]
pub(crate) struct RefusalEntry {
    key_id: KeyId,
    tenant: SharedTenant,
    reason: RefusalReason,
    at: DateTime<Utc>,
}

/// Both text tables, read-locked for a batch.
pub(crate) struct TextsRead<'a> {
    routes: super::texts::TextReader<'a>,
    user_agents: super::texts::TextReader<'a>,
}

impl UsageTexts {
    pub(crate) fn read(&self) -> TextsRead<'_> {
        TextsRead { routes: self.routes.reader(), user_agents: self.user_agents.reader() }
    }
}

/// A thread's queued usage: entries from the adapters, whole records from
/// [`Engine::record_usage`](crate::Engine::record_usage).
#[derive(Default)]
struct Buffer {
    entries: Vec<UsageEntry>,
    records: Vec<UsageRecord>,
    refusals: Vec<RefusalEntry>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.entries.len() + self.records.len() + self.refusals.len()
    }

    fn with_capacity(entries: usize) -> Self {
        Self { entries: Vec::with_capacity(entries), records: Vec::new(), refusals: Vec::new() }
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
        }
    }

    /// The tables whose numbers entries carry.
    pub(crate) fn texts(&self) -> &UsageTexts {
        &self.texts
    }

    /// Queues a record without waiting; a full queue drops it and counts.
    pub(crate) fn record(&self, record: UsageRecord) {
        self.queue(|buffer| buffer.records.push(record));
    }

    /// Queues an entry without waiting; a full queue drops it and counts.
    pub(crate) fn record_entry(&self, entry: UsageEntry) {
        self.queue(|buffer| buffer.entries.push(entry));
    }

    /// Queues the refusal of `key` for `reason` at `at`: counted in the
    /// key's roll-ups, charged to nothing. Never waits; a full queue drops
    /// it and counts.
    pub(crate) fn record_refusal(&self, key: &Arc<Key>, reason: RefusalReason, at: DateTime<Utc>) {
        let entry = RefusalEntry { key_id: key.id, tenant: SharedTenant::of_key(key), reason, at };
        self.queue(|buffer| buffer.refusals.push(entry));
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
        if let Some(batch) = full {
            let len = batch.len();
            if running.tx.try_send(Message::Records(batch)).is_err() {
                shards.queued.fetch_sub(len, Ordering::Relaxed);
                self.count_dropped(len as u64);
            }
        }
        if queued + 1 >= running.wake_at {
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
        let worker = Worker {
            config: self.config,
            mode: self.mode,
            store: Arc::clone(&self.store),
            quotas: Arc::clone(&self.quotas),
            counters: Arc::clone(&self.counters),
            texts: Arc::clone(&self.texts),
            shards: Arc::clone(&shards),
            batch: Batch::default(),
            sampled: 0,
        };
        let task = runtime.spawn(worker.run(rx, Arc::clone(&wake)));
        Some(Running { tx, shards, wake, wake_at, task: Mutex::new(Some(task)) })
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
    records: Vec<UsageRecord>,
    deltas: std::collections::HashMap<(KeyId, DateTime<Utc>), UsageDelta, foldhash::fast::RandomState>,
    /// Requests folded into `deltas`.
    folded: usize,
}

impl Batch {
    /// Requests held.
    fn len(&self) -> usize {
        self.records.len() + self.folded
    }

    fn fold(&mut self, key_id: KeyId, tenant: &SharedTenant, at: DateTime<Utc>, counts: &UsageCounts) {
        let hour = Period::Hour.start_of(at);
        self.deltas
            .entry((key_id, hour))
            .or_insert_with(|| UsageDelta { key_id, tenant: tenant.clone(), hour, counts: UsageCounts::default() })
            .counts
            .add(counts);
        self.folded += 1;
    }
}

struct Worker {
    config: UsageConfig,
    mode: UsageMode,
    store: Arc<dyn Store>,
    quotas: Arc<QuotaTracker>,
    counters: Arc<Counters>,
    texts: Arc<UsageTexts>,
    shards: Arc<Shards>,
    batch: Batch,
    /// Passed requests seen, for [`UsageMode::Sampled`].
    sampled: u64,
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
            self.write().await;
            if stop {
                break;
            }
        }
        // Refuse new records and messages, then take what is already
        // buffered or queued.
        self.shards.closed.store(true, Ordering::Release);
        rx.close();
        while let Some(message) = rx.recv().await {
            self.handle(message).await;
        }
        self.take_buffered().await;
        self.write().await;
    }

    /// Takes every thread's buffered records into the batch, writing full
    /// batches on the way.
    async fn take_buffered(&mut self) {
        for buffer in self.shards.take_all() {
            self.append(buffer);
        }
        if self.batch.len() >= self.config.batch_size.max(1) {
            self.write().await;
        }
    }

    /// Moves `buffer` into the batch: records kept as the mode says (entries
    /// numbered, their text read back), the rest folded into roll-up
    /// increments.
    fn append(&mut self, mut buffer: Buffer) {
        for refusal in buffer.refusals.drain(..) {
            self.batch.fold(refusal.key_id, &refusal.tenant, refusal.at, &UsageCounts::refused(refusal.reason));
        }
        for record in buffer.records.drain(..) {
            if self.keeps_next() {
                self.batch.records.push(record);
            } else {
                self.batch.fold(record.key_id, &record.tenant, record.timestamp, &UsageCounts::passed(record.status));
            }
        }
        if !buffer.entries.is_empty() {
            let texts = Arc::clone(&self.texts);
            let texts = texts.read();
            for entry in buffer.entries.drain(..) {
                if self.keeps_next() {
                    let id = UsageId::at(entry.timestamp);
                    self.batch.records.push(entry.into_record(id, &texts));
                } else {
                    self.batch.fold(entry.key_id, &entry.tenant, entry.timestamp, &UsageCounts::passed(entry.status));
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
                if self.batch.len() >= self.config.batch_size {
                    self.write().await;
                }
            }
            Message::Touch(key, at) => {
                if let Err(error) = self.store.touch_key(key, at).await {
                    tracing::warn!(target: "keysmith::usage", %error, "could not update last_used_at");
                }
            }
            Message::Flush(done) => {
                self.take_buffered().await;
                self.write().await;
                let _ = done.send(());
            }
            Message::Shutdown => {}
        }
    }

    /// Writes the batch in writes of at most `batch_size` records, the
    /// roll-up increments with the first.
    async fn write(&mut self) {
        if self.batch.len() == 0 {
            return;
        }
        let Batch { mut records, deltas, folded } = std::mem::take(&mut self.batch);
        let deltas: Vec<UsageDelta> = deltas.into_values().collect();
        let mut chunks = records.chunks(self.config.batch_size.max(1));
        let first = chunks.next().unwrap_or(&[]);
        let batch = UsageBatch { id: UsageId::new(), records: first, deltas: &deltas };
        self.write_chunk(&batch, first.len() + folded).await;
        self.shards.queued.fetch_sub(first.len() + folded, Ordering::Relaxed);
        for chunk in chunks {
            self.write_chunk(&UsageBatch::of_records(chunk), chunk.len()).await;
            self.shards.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
        }
        records.clear();
        self.batch.records = records;
    }

    /// Writes one batch of `requests` requests, retrying twice under the
    /// same batch id (so a write that committed but failed to answer counts
    /// once); a batch that still fails is counted as failed, never silently
    /// lost.
    async fn write_chunk(&self, batch: &UsageBatch<'_>, requests: usize) {
        let mut backoff = Duration::from_millis(50);
        self.quotas.begin_write();
        for attempt in 1..=3 {
            match self.store.write_usage(batch).await {
                Ok(()) => {
                    self.counters.written.fetch_add(requests as u64, Ordering::Relaxed);
                    self.quotas.end_write(passed_requests(batch));
                    return;
                }
                Err(error) if attempt < 3 => {
                    tracing::warn!(target: "keysmith::usage", %error, attempt, "usage batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(error) => {
                    let lost = requests as u64;
                    tracing::error!(target: "keysmith::usage", %error, lost, "usage batch failed; records lost");
                    self.counters.failed.fetch_add(lost, Ordering::Relaxed);
                    metrics::counter!(FAILED_TOTAL).increment(lost);
                    // Lost records stay counted as pending: a quota
                    // over-counts rather than gives them away.
                    self.quotas.end_write(std::iter::empty());
                }
            }
        }
    }
}

/// The passed requests of `batch` as (key, time, count), for the quotas.
fn passed_requests<'a>(batch: &'a UsageBatch<'a>) -> impl Iterator<Item = (KeyId, DateTime<Utc>, u64)> + 'a {
    let records = batch.records.iter().map(|r| (r.key_id, r.timestamp, 1));
    let deltas = batch.deltas.iter().filter(|d| d.counts.requests > 0).map(|d| (d.key_id, d.hour, d.counts.requests));
    records.chain(deltas)
}
