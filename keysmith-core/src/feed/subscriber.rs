//! The engine's side of the feed: publishing what it commits and keeping
//! its cache in step with what others commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Change, ChangeFeed};
use crate::store::CachedStore;

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
    /// Changes this engine failed to publish (metric
    /// `keysmith_feed_publish_failures_total`).
    pub publish_failures: u64,
}

/// The feed and its counters, shared by the engine and its subscription task.
#[derive(Debug)]
pub(crate) struct FeedLink {
    feed: Arc<dyn ChangeFeed>,
    subscribed: AtomicBool,
    subscriptions: AtomicU64,
    losses: AtomicU64,
    received: AtomicU64,
    unknown: AtomicU64,
    published: AtomicU64,
    publish_failures: AtomicU64,
    started: AtomicBool,
    /// Dropping or signalling the sender stops the subscription task.
    stop: watch::Sender<bool>,
}

impl FeedLink {
    pub(crate) fn new(feed: Arc<dyn ChangeFeed>) -> Self {
        Self {
            feed,
            subscribed: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            received: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
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
            publish_failures: self.publish_failures.load(Ordering::SeqCst),
        }
    }

    /// Publishes a committed change; a failure is counted and logged, and
    /// never reaches the caller, whose change is committed already.
    pub(crate) async fn publish(&self, change: Change) {
        match self.feed.publish(&change).await {
            Ok(()) => {
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.publish_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("keysmith_feed_publish_failures_total").increment(1);
                tracing::warn!(target: "keysmith::feed", %error, ?change, "could not publish a change; other instances see it when their cache entries expire");
            }
        }
    }

    /// Starts the subscription task on the current Tokio runtime, keeping
    /// `cache` in step, unless it runs already. False outside a runtime.
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

    async fn run(self: Arc<Self>, cache: Arc<CachedStore>, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            let subscribed = tokio::select! {
                _ = stop.changed() => return,
                subscribed = self.feed.subscribe() => subscribed,
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
            let error = loop {
                let next = tokio::select! {
                    _ = stop.changed() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(change)) => {
                        if change == Change::Unknown {
                            self.unknown.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("keysmith_feed_unknown_changes_total").increment(1);
                            tracing::warn!(target: "keysmith::feed", "a change of a kind this version does not know; cache dropped");
                        }
                        cache.apply_change(&change).await;
                        self.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(error)) => break Some(error),
                    None => break None,
                }
            };
            cache.feed_lost();
            self.subscribed.store(false, Ordering::SeqCst);
            self.losses.fetch_add(1, Ordering::SeqCst);
            metrics::counter!("keysmith_feed_losses_total").increment(1);
            match error {
                Some(error) => {
                    tracing::warn!(target: "keysmith::feed", %error, "change feed subscription lost; cache dropped, running on the outage TTL");
                }
                None => {
                    tracing::warn!(target: "keysmith::feed", "change feed subscription ended; cache dropped, running on the outage TTL");
                }
            }
        }
    }
}
