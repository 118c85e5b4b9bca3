//! The engine's side of the feed: publishing what it commits and keeping
//! its cache in step with what others commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Change, ChangeFeed, ChangeStream, FeedHeartbeat};
use crate::store::{CachedStore, MAX_LOGGED_CHANGE_LEN, Store};
use crate::{Clock, Error, Result};

/// First wait before subscribing again after a failure; doubled up to
/// [`MAX_BACKOFF`]. Both stay under the default outage TTL, so a short
/// outage costs little more than the outage.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What an engine's change feed has done so far; see
/// [`Engine::feed_status`](crate::Engine::feed_status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FeedStatus {
    /// Subscribed now: cached entries live their normal TTL. False before
    /// the first subscription and while a lost one is being restored, when
    /// the cache runs on its outage TTL.
    pub subscribed: bool,
    /// Subscriptions made (the first one and every restored one).
    pub subscriptions: u64,
    /// Subscriptions lost.
    pub losses: u64,
    /// Changes received and applied to the cache.
    pub received: u64,
    /// Of those, changes of a kind this version does not know, each of
    /// which dropped the whole cache (metric
    /// `keysmith_feed_unknown_changes_total`).
    pub unknown: u64,
    /// Changes this engine published.
    pub published: u64,
    /// The last attempt to publish a change (or to publish it again)
    /// failed: the feed is unreachable from this engine, which logs its
    /// changes in the store meanwhile. False again once one is published.
    pub publish_failing: bool,
    /// Attempts to publish a change that failed, first ones and retries
    /// (metric `keysmith_feed_publish_failures_total`).
    pub publish_failures: u64,
    /// Changes published by a retry after their first attempt failed
    /// (metric `keysmith_feed_republished_total`; also in `published`).
    pub republished: u64,
    /// Heartbeats this engine published (after a quiet
    /// [interval](FeedHeartbeat::interval)).
    pub heartbeats_sent: u64,
    /// Heartbeats this engine failed to publish.
    pub heartbeat_failures: u64,
    /// Heartbeats heard, this engine's own included.
    pub heartbeats_received: u64,
    /// Of the losses, subscriptions that stayed open but carried nothing,
    /// heartbeats included, for the [deadline](FeedHeartbeat::deadline)
    /// (metric `keysmith_feed_missed_heartbeats_total`).
    pub missed_heartbeats: u64,
    /// Changes whose first publish failed that this engine wrote to the
    /// store's change log ([`Store::log_change`]), where every engine of the
    /// fleet finds them within a heartbeat interval (metric
    /// `keysmith_feed_logged_total`).
    pub logged: u64,
    /// Changes whose publish failed that could not be written to the
    /// store's change log either (metric `keysmith_feed_log_failures_total`):
    /// other engines see them when a republish gets through or their cache
    /// entries expire.
    pub log_failures: u64,
    /// Changes found in the store's change log and applied to the cache
    /// (also in `received`).
    pub from_log: u64,
    /// Reads of the store's change log that failed (metric
    /// `keysmith_feed_log_read_failures_total`); the next interval reads
    /// again from where the last one stopped.
    pub log_read_failures: u64,
    /// Reads that found the store's change log renumbered: its highest
    /// sequence number below one this engine had read (truncated with its
    /// numbering reset, restored from a backup). What was logged meanwhile
    /// cannot be told, so the cache was dropped and reading went on from
    /// the new highest number (metric `keysmith_feed_log_resets_total`).
    pub log_resets: u64,
}

/// Why a subscription ended.
enum Loss {
    /// The stream reported an error.
    Failed(Error),
    /// The stream ended.
    Ended,
    /// The stream carried nothing for the heartbeat deadline.
    Silent,
}

/// The feed and its counters, shared by the engine and its subscription task.
#[derive(Debug)]
pub(crate) struct FeedLink {
    feed: Arc<dyn ChangeFeed>,
    heartbeat: FeedHeartbeat,
    /// How long a change that failed to publish is tried again: as long as
    /// another engine may still hold what it drops (a positive TTL).
    republish_for: Duration,
    /// The engine's store, whose change log carries what the feed would not.
    store: Arc<dyn Store>,
    /// The engine's clock, which dates logged changes.
    clock: Arc<dyn Clock>,
    subscribed: AtomicBool,
    subscriptions: AtomicU64,
    losses: AtomicU64,
    received: AtomicU64,
    unknown: AtomicU64,
    published: AtomicU64,
    publish_failing: AtomicBool,
    publish_failures: AtomicU64,
    republished: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeat_failures: AtomicU64,
    heartbeats_received: AtomicU64,
    missed_heartbeats: AtomicU64,
    logged: AtomicU64,
    log_failures: AtomicU64,
    from_log: AtomicU64,
    log_read_failures: AtomicU64,
    log_resets: AtomicU64,
    started: AtomicBool,
    /// Dropping or signalling the sender stops the subscription task.
    stop: watch::Sender<bool>,
}

impl FeedLink {
    pub(crate) fn new(
        feed: Arc<dyn ChangeFeed>, heartbeat: FeedHeartbeat, republish_for: Duration, store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            feed,
            heartbeat,
            republish_for,
            store,
            clock,
            subscribed: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failing: AtomicBool::new(false),
            publish_failures: AtomicU64::new(0),
            republished: AtomicU64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            heartbeat_failures: AtomicU64::new(0),
            heartbeats_received: AtomicU64::new(0),
            missed_heartbeats: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            log_failures: AtomicU64::new(0),
            from_log: AtomicU64::new(0),
            log_read_failures: AtomicU64::new(0),
            log_resets: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stop: watch::channel(false).0,
        }
    }

    pub(crate) fn status(&self) -> FeedStatus {
        FeedStatus {
            subscribed: self.subscribed.load(Ordering::SeqCst),
            subscriptions: self.subscriptions.load(Ordering::SeqCst),
            losses: self.losses.load(Ordering::SeqCst),
            received: self.received.load(Ordering::SeqCst),
            unknown: self.unknown.load(Ordering::SeqCst),
            published: self.published.load(Ordering::SeqCst),
            publish_failing: self.publish_failing.load(Ordering::SeqCst),
            publish_failures: self.publish_failures.load(Ordering::SeqCst),
            republished: self.republished.load(Ordering::SeqCst),
            heartbeats_sent: self.heartbeats_sent.load(Ordering::SeqCst),
            heartbeat_failures: self.heartbeat_failures.load(Ordering::SeqCst),
            heartbeats_received: self.heartbeats_received.load(Ordering::SeqCst),
            missed_heartbeats: self.missed_heartbeats.load(Ordering::SeqCst),
            logged: self.logged.load(Ordering::SeqCst),
            log_failures: self.log_failures.load(Ordering::SeqCst),
            from_log: self.from_log.load(Ordering::SeqCst),
            log_read_failures: self.log_read_failures.load(Ordering::SeqCst),
            log_resets: self.log_resets.load(Ordering::SeqCst),
        }
    }

    /// Publishes a committed change; a failure is counted and logged, and
    /// never reaches the caller, whose change is committed already. A feed
    /// that does not answer within the heartbeat deadline (half-open) has
    /// failed: the caller is not held longer. A change that failed is
    /// published again in a task, with waits from 100 ms doubling up to the
    /// heartbeat deadline, for as long as another engine's cache may hold
    /// what it drops: a feed back after a blip (a reconnection, a failover)
    /// still carries it, rather than the other engines learning of it only
    /// when their entries expire.
    ///
    /// Before that, a change that failed is written to the store's change
    /// log ([`log`](Self::log)), which every engine reads each heartbeat
    /// interval: an engine cut off from the feed alone, whose fleet still
    /// hears heartbeats from each other, still tells them within the
    /// deadline plus an interval.
    pub(crate) async fn publish(self: &Arc<Self>, change: Change) {
        match publish_within(&*self.feed, &change, self.heartbeat.deadline()).await {
            Ok(()) => {
                self.published.fetch_add(1, Ordering::Relaxed);
                self.publish_failing.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                self.publish_failing.store(true, Ordering::Relaxed);
                self.publish_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("keysmith_feed_publish_failures_total").increment(1);
                tracing::warn!(target: "keysmith::feed", %error, ?change, "could not publish a change; logging it in the store and trying again while other instances may hold what it drops");
                self.log(&change).await;
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(Arc::clone(self).republish(change));
                }
            }
        }
    }

    /// Writes `change`, whose publish failed, to the store's change log
    /// (waiting for the store at most the heartbeat deadline), then deletes
    /// what the log holds past [`log_retention`](Self::log_retention), a
    /// bounded batch at a time: the log grows only here, so it stays the
    /// size of the changes logged within the retention. A failure is
    /// counted and logged, never the caller's.
    async fn log(&self, change: &Change) {
        let deadline = self.heartbeat.deadline();
        let now = self.clock.now();
        let logged = tokio::time::timeout(deadline, self.store.log_change(change, now))
            .await
            .unwrap_or_else(|_| Err(Error::store(format!("the store did not answer within {deadline:?}"))));
        match logged {
            Ok(true) => {
                self.logged.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("keysmith_feed_logged_total").increment(1);
                let before = chrono::TimeDelta::from_std(self.log_retention())
                    .ok()
                    .and_then(|kept| now.checked_sub_signed(kept))
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                let pruned = tokio::time::timeout(deadline, self.store.delete_changes_before(before, LOG_PRUNE_BATCH));
                if let Ok(Err(error)) = pruned.await {
                    tracing::debug!(target: "keysmith::feed", %error, "could not prune the change log; the next logged change tries again");
                }
            }
            Ok(false) => {
                tracing::warn!(target: "keysmith::feed", ?change, "the store keeps no change log: other instances see this change when it is published again or when their cache entries expire");
            }
            Err(error) => {
                self.log_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("keysmith_feed_log_failures_total").increment(1);
                tracing::warn!(target: "keysmith::feed", %error, ?change, "could not log a change that failed to publish; other instances see it when it is published again or when their cache entries expire");
            }
        }
    }

    /// How long the change log keeps a change: well past the positive TTL,
    /// after which no engine's cache can hold what it drops, and at least
    /// an hour, so that an engine whose reads failed for a while (a
    /// database failover) still finds what it missed.
    fn log_retention(&self) -> Duration {
        LOG_RETENTION.max(self.republish_for.saturating_mul(2))
    }

    /// Publishes `change` again until the feed takes it, the engine stops,
    /// or [`republish_for`](Self::republish_for) has passed.
    async fn republish(self: Arc<Self>, change: Change) {
        let started = Instant::now();
        let mut stop = self.stop.subscribe();
        let mut wait = REPUBLISH_FIRST_WAIT;
        loop {
            let left = self.republish_for.saturating_sub(started.elapsed());
            if left.is_zero() || *stop.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait.min(left)) => {}
                _ = stop.changed() => break,
            }
            wait = (wait * 2).min(self.heartbeat.deadline());
            match publish_within(&*self.feed, &change, self.heartbeat.deadline()).await {
                Ok(()) => {
                    self.published.fetch_add(1, Ordering::Relaxed);
                    self.publish_failing.store(false, Ordering::Relaxed);
                    self.republished.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("keysmith_feed_republished_total").increment(1);
                    tracing::info!(target: "keysmith::feed", ?change, "published a change that had failed to publish");
                    return;
                }
                Err(_) => {
                    self.publish_failing.store(true, Ordering::Relaxed);
                    self.publish_failures.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("keysmith_feed_publish_failures_total").increment(1);
                }
            }
        }
        tracing::warn!(target: "keysmith::feed", ?change, "gave up publishing a change; other instances see it when their cache entries expire");
    }

    /// Starts the subscription task on the current Tokio runtime, keeping
    /// `cache` in step (by the feed, and by the store's change log), unless
    /// it runs already. False outside a runtime.
    pub(crate) fn start(self: &Arc<Self>, cache: &Arc<CachedStore>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.started.load(Ordering::SeqCst);
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return true;
        }
        runtime.spawn(Arc::clone(self).run(Arc::clone(cache), self.stop.subscribe()));
        true
    }

    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The engine's one feed task: the subscription and, beside it, the
    /// poll of the store's change log.
    async fn run(self: Arc<Self>, cache: Arc<CachedStore>, stop: watch::Receiver<bool>) {
        tokio::join!(self.subscribe_and_follow(&cache, stop.clone()), self.poll_log(&cache, stop));
    }

    /// Subscribes, follows the subscription until it is lost, and again,
    /// until the engine stops.
    async fn subscribe_and_follow(&self, cache: &CachedStore, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            // A subscription that cannot be made within the deadline (a
            // connection into a partition) is a failure like any other.
            let subscribed = tokio::select! {
                _ = stop.changed() => return,
                subscribed = tokio::time::timeout(self.heartbeat.deadline(), self.feed.subscribe()) => {
                    subscribed.unwrap_or_else(|_| Err(Error::feed("no subscription within the heartbeat deadline")))
                }
            };
            let mut stream = match subscribed {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(target: "keysmith::feed", %error, "could not subscribe to the change feed; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            // What was cached before now may predate a change missed while
            // unsubscribed; from here on, every change arrives.
            cache.feed_restored();
            self.subscribed.store(true, Ordering::SeqCst);
            if self.subscriptions.fetch_add(1, Ordering::SeqCst) > 0 {
                tracing::info!(target: "keysmith::feed", "change feed subscription restored; cache back to its normal TTL");
            }
            let Some(loss) = self.follow(&mut stream, cache, &mut stop).await else { return };
            drop(stream);
            cache.feed_lost();
            self.subscribed.store(false, Ordering::SeqCst);
            self.losses.fetch_add(1, Ordering::SeqCst);
            metrics::counter!("keysmith_feed_losses_total").increment(1);
            match loss {
                Loss::Failed(error) => {
                    tracing::warn!(target: "keysmith::feed", %error, "change feed subscription lost; cache dropped, running on the outage TTL");
                }
                Loss::Ended => {
                    tracing::warn!(target: "keysmith::feed", "change feed subscription ended; cache dropped, running on the outage TTL");
                }
                Loss::Silent => {
                    self.missed_heartbeats.fetch_add(1, Ordering::SeqCst);
                    metrics::counter!("keysmith_feed_missed_heartbeats_total").increment(1);
                    tracing::warn!(
                        target: "keysmith::feed",
                        deadline = ?self.heartbeat.deadline(),
                        "change feed subscription carried nothing, not even a heartbeat, within the deadline; treated as lost: cache dropped, running on the outage TTL"
                    );
                }
            }
        }
    }

    /// Applies what `stream` carries to `cache`, publishing a heartbeat
    /// whenever it has been quiet for the interval, until the subscription
    /// is lost (`Some`) or the engine stops (`None`).
    async fn follow(
        &self, stream: &mut ChangeStream, cache: &CachedStore, stop: &mut watch::Receiver<bool>,
    ) -> Option<Loss> {
        let mut heard = Instant::now();
        // Drawn again only after this engine's own heartbeat: whoever drew
        // the shortest wait answers the fleet's silences until it is heard.
        let mut quiet = self.heartbeat.quiet_wait();
        let mut beat_at = heard + quiet;
        // One heartbeat in flight at most, polled here so that a publish
        // that hangs (on the same dead network) never delays the deadline.
        let mut beating: Option<BoxFuture<'static, Result<()>>> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return None,
                next = stream.next() => {
                    heard = Instant::now();
                    beat_at = heard + quiet;
                    match next {
                        Some(Ok(change)) => self.apply(change, cache).await,
                        Some(Err(error)) => return Some(Loss::Failed(error)),
                        None => return Some(Loss::Ended),
                    }
                }
                () = tokio::time::sleep_until(beat_at), if beating.is_none() => {
                    quiet = self.heartbeat.quiet_wait();
                    beat_at = Instant::now() + quiet;
                    let (feed, deadline) = (Arc::clone(&self.feed), self.heartbeat.deadline());
                    beating = Some(Box::pin(async move { publish_within(&*feed, &Change::Heartbeat, deadline).await }));
                }
                published = async { beating.as_mut().expect("polled only while beating").await }, if beating.is_some() => {
                    beating = None;
                    match published {
                        Ok(()) => self.heartbeats_sent.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            tracing::debug!(target: "keysmith::feed", %error, "could not publish a heartbeat");
                            self.heartbeat_failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                () = tokio::time::sleep_until(heard + self.heartbeat.deadline()) => return Some(Loss::Silent),
            }
        }
    }

    /// Reads the store's change log every heartbeat interval and applies
    /// each change found there as if the feed had carried it: what an
    /// engine that could not publish (cut off from the feed alone) logged
    /// instead. One indexed read per interval; a read that fails is counted
    /// and the next one starts where it would have. A store that keeps no
    /// change log is not read again.
    async fn poll_log(&self, cache: &CachedStore, mut stop: watch::Receiver<bool>) {
        let mut cursor = LogCursor::default();
        let mut ticks = tokio::time::interval(self.heartbeat.interval());
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticks.tick() => {}
            }
            let deadline = self.heartbeat.deadline();
            let read = tokio::time::timeout(deadline, cursor.read(&*self.store))
                .await
                .unwrap_or_else(|_| Err(Error::store(format!("the store did not answer within {deadline:?}"))));
            match read {
                Ok(Some(LogRead::Changes { changes, skipped })) => {
                    for seq in skipped {
                        tracing::warn!(target: "keysmith::feed", seq, "skipped a change log row that is not a change, or is over {MAX_LOGGED_CHANGE_LEN} bytes (written by hand?)");
                    }
                    for change in changes {
                        self.from_log.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(target: "keysmith::feed", ?change, "applied a change from the store's change log (its publish had failed)");
                        self.apply(change, cache).await;
                    }
                }
                Ok(Some(LogRead::Renumbered { seen, latest })) => {
                    // As for a lost subscription: what was missed cannot
                    // be told, so nothing cached is kept.
                    cache.invalidate_all();
                    self.log_resets.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("keysmith_feed_log_resets_total").increment(1);
                    tracing::warn!(target: "keysmith::feed", seen, latest, "the store's change log was renumbered (its highest number is below one already read); cache dropped, reading on from its new highest number");
                }
                Ok(None) => {
                    tracing::debug!(target: "keysmith::feed", "the store keeps no change log; not read");
                    return;
                }
                Err(error) => {
                    self.log_read_failures.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("keysmith_feed_log_read_failures_total").increment(1);
                    tracing::warn!(target: "keysmith::feed", %error, "could not read the store's change log; reading again at the next interval");
                }
            }
        }
    }

    /// Applies a change received on the subscription or found in the
    /// store's change log.
    async fn apply(&self, change: Change, cache: &CachedStore) {
        match change {
            Change::Heartbeat => {
                self.heartbeats_received.fetch_add(1, Ordering::Relaxed);
            }
            change => {
                if change == Change::Unknown {
                    self.unknown.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("keysmith_feed_unknown_changes_total").increment(1);
                    tracing::warn!(target: "keysmith::feed", "a change of a kind this version does not know; cache dropped");
                }
                cache.apply_change(&change).await;
                self.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one read of the store's change log found.
#[derive(Debug, PartialEq)]
enum LogRead {
    /// The changes logged since the last read and not yet applied, and the
    /// numbers of the rows since that are not changes (read once too).
    Changes { changes: Vec<Change>, skipped: Vec<u64> },
    /// The log's highest number, `latest`, is below `seen`, one read
    /// already: the log was renumbered, and what it held before is gone.
    Renumbered { seen: u64, latest: u64 },
}

/// Where an engine's reads of the store's change log stand.
///
/// Sequence numbers are given when a row is inserted, not when it commits:
/// on a server a row may become visible after one numbered after it. So
/// each read starts from the highest number of the read before the last one
/// (one interval of overlap) and skips the numbers it handled already: a
/// row committed up to an interval late is still found, and applied (or
/// warned about, when it is not a change) once.
#[derive(Debug, Default)]
struct LogCursor {
    /// The highest number read so far; `None` before the first read, which
    /// reads only the log's highest number (history is not replayed).
    seen: Option<u64>,
    /// Where the next read starts: the highest number of the read before.
    from: u64,
    /// The numbers after `from` handled already.
    handled: BTreeSet<u64>,
}

impl LogCursor {
    /// What was logged since the last read (`None` when the store keeps no
    /// change log). Moves on only once the read is complete, so a read cut
    /// short is done again whole.
    async fn read(&mut self, store: &dyn Store) -> Result<Option<LogRead>> {
        let Some(seen) = self.seen else {
            let Some(first) = store.changes_after(None, 0).await? else { return Ok(None) };
            self.restart(first.latest.unwrap_or(0));
            return Ok(Some(LogRead::Changes { changes: Vec::new(), skipped: Vec::new() }));
        };
        let (mut after, mut found) = (self.from, Vec::new());
        loop {
            let Some(page) = store.changes_after(Some(after), LOG_PAGE).await? else { return Ok(None) };
            // An empty log (pruned) tells nothing; a lower highest number
            // than one read means the numbering went back, and rows logged
            // since are numbered below the cursor, where no read looks.
            if let Some(latest) = page.latest.filter(|latest| *latest < seen) {
                self.restart(latest);
                return Ok(Some(LogRead::Renumbered { seen, latest }));
            }
            let full = page.changes.len() >= LOG_PAGE as usize;
            for (seq, change) in page.changes {
                after = after.max(seq);
                if !self.handled.contains(&seq) {
                    found.push((seq, change));
                }
            }
            if !full {
                break;
            }
        }
        let highest = found.iter().map(|(seq, _)| *seq).fold(seen, u64::max);
        self.handled.extend(found.iter().map(|(seq, _)| *seq));
        self.from = seen;
        self.handled.retain(|seq| *seq > seen);
        self.seen = Some(highest);
        let (mut changes, mut skipped) = (Vec::new(), Vec::new());
        for (seq, change) in found {
            match change {
                Some(change) => changes.push(change),
                None => skipped.push(seq),
            }
        }
        Ok(Some(LogRead::Changes { changes, skipped }))
    }

    /// Reads on from `latest`, as a first read would.
    fn restart(&mut self, latest: u64) {
        *self = Self { seen: Some(latest), from: latest, handled: BTreeSet::new() };
    }
}

/// The changes one read of the change log asks for at most (it asks again
/// while a page comes back full).
const LOG_PAGE: u32 = 500;

/// The changes deleted from the change log at most per statement.
const LOG_PRUNE_BATCH: u32 = 500;

/// How long the change log keeps a change at least.
const LOG_RETENTION: Duration = Duration::from_secs(60 * 60);

/// The first wait before a change that failed to publish is tried again.
const REPUBLISH_FIRST_WAIT: Duration = Duration::from_millis(100);

/// Publishes `change` on `feed`, failing if the feed has not answered
/// within `deadline`.
async fn publish_within(feed: &dyn ChangeFeed, change: &Change, deadline: Duration) -> Result<()> {
    match tokio::time::timeout(deadline, feed.publish(change)).await {
        Ok(published) => published,
        Err(_) => Err(Error::feed(format!("the feed did not answer within {deadline:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::{LogCursor, LogRead};
    use crate::{Change, MemoryStore, Store as _, Tenant};

    fn changes(read: Option<LogRead>) -> (Vec<Change>, Vec<u64>) {
        match read {
            Some(LogRead::Changes { changes, skipped }) => (changes, skipped),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_change_log_row_that_is_not_a_change_is_skipped_once_despite_the_overlap() {
        let (store, at) = (MemoryStore::new(), Utc.timestamp_opt(0, 0).unwrap());
        let mut cursor = LogCursor::default();
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![], vec![]));
        let owner = Change::owner(&Tenant::new("app", "acme"), "cus_1");
        store.log_unreadable(at);
        store.log_change(&owner, at).await.unwrap();
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![owner], vec![1]));
        // The next read starts before both (the overlap) and reports neither.
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![], vec![]));
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![], vec![]));
    }

    #[tokio::test]
    async fn a_renumbered_change_log_is_reported_once_and_read_on_from_its_new_numbers() {
        let (store, at) = (MemoryStore::new(), Utc.timestamp_opt(0, 0).unwrap());
        let owner = |id: &str| Change::owner(&Tenant::new("app", "acme"), id);
        let mut cursor = LogCursor::default();
        cursor.read(&store).await.unwrap();
        for id in ["cus_1", "cus_2", "cus_3"] {
            store.log_change(&owner(id), at).await.unwrap();
        }
        assert_eq!(changes(cursor.read(&store).await.unwrap()).0.len(), 3);
        // Pruned empty: no information, nothing reported.
        store.delete_changes_before(at + chrono::TimeDelta::seconds(1), 100).await.unwrap();
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![], vec![]));

        store.renumber_change_log();
        store.log_change(&owner("cus_4"), at).await.unwrap();
        assert_eq!(cursor.read(&store).await.unwrap(), Some(LogRead::Renumbered { seen: 3, latest: 1 }));
        store.log_change(&owner("cus_5"), at).await.unwrap();
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![owner("cus_5")], vec![]));
        assert_eq!(changes(cursor.read(&store).await.unwrap()), (vec![], vec![]));
    }
}
