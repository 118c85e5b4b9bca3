//! `local_first`: each instance's view of the budgets it uses, decided on
//! in process, and the background sync that sends what it admitted.
//!
//! A view is Redis's TAT for the key at its last answer to this instance,
//! moved on by every request this instance admitted since; those requests
//! are "unsent" until a sync or a strict check adds them in Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use keysmith_core::RateLimit;
use keysmith_core::limit::RateLimitStatus;

use super::{Gcra, Remote, split};

/// Keys synced at once: their script calls share the connection's pipeline.
const SYNC_BATCH: usize = 64;

#[derive(Debug)]
pub(super) struct LocalFirst {
    interval: Duration,
    /// Views by their budget's Redis key (subject and limit name).
    views: DashMap<Arc<str>, View>,
    sync_started: AtomicBool,
}

#[derive(Debug)]
struct View {
    limit: RateLimit,
    gcra: Gcra,
    /// Redis's TAT at its last answer plus this instance's requests since
    /// (nanoseconds since the epoch).
    tat: u64,
    /// Requests admitted here and not yet added in Redis.
    unsent: u32,
    /// Requests sent to Redis whose answer has not come back: with
    /// `unsent`, what Redis does not know of yet, kept below `L`.
    in_flight: u32,
    /// The latest `now` a check of this key had here: unsent requests are
    /// added in Redis at that time.
    at: DateTime<Utc>,
    /// Checked since the last sync (an unused view is forgotten).
    used: bool,
}

/// How many requests must be left in the view after one decided locally:
/// half the burst, rounded up. Nearer the limit every check is strict.
fn margin(burst: u32) -> u64 {
    u64::from(burst.div_ceil(2))
}

/// How many requests an instance may admit on its own between two answers
/// from Redis for a key (`L`): a twentieth of the burst, at least one.
fn allowance(burst: u32) -> u32 {
    (burst / 20).max(1)
}

impl LocalFirst {
    pub(super) fn new(interval: Duration) -> Self {
        Self { interval, views: DashMap::new(), sync_started: AtomicBool::new(false) }
    }

    /// Admits the request from the view if that is safe, counting it as
    /// unsent; `None` means "ask Redis".
    pub(super) fn decide(&self, key: &str, limit: &RateLimit, now: DateTime<Utc>) -> Option<RateLimitStatus> {
        let mut view = self.views.get_mut(key)?;
        let gcra = &view.gcra;
        if view.limit != *limit || view.unsent + view.in_flight >= allowance(gcra.burst) {
            return None;
        }
        let now_nanos = split(now).2;
        let next = view.tat.max(now_nanos).saturating_add(gcra.interval);
        let reset = next - now_nanos;
        // Refused, or too near the limit: Redis decides.
        let room = gcra.tolerance.checked_add(gcra.interval)?.checked_sub(reset)?;
        let left = room / gcra.interval;
        if left < margin(gcra.burst) {
            return None;
        }
        let status = RateLimitStatus {
            allowed: true,
            limit: gcra.burst,
            remaining: u32::try_from(left).unwrap_or(u32::MAX).min(gcra.burst - 1),
            reset: Duration::from_nanos(reset),
            retry_after: None,
        };
        view.tat = next;
        view.unsent += 1;
        view.at = view.at.max(now);
        view.used = true;
        Some(status)
    }

    /// Takes the key's unsent requests, for a strict check to add first:
    /// they are in flight until [`remember`](Self::remember) or
    /// [`keep_unsent`](Self::keep_unsent).
    pub(super) fn take_unsent(&self, key: &str) -> u32 {
        self.views.get_mut(key).map_or(0, |mut view| {
            let unsent = std::mem::take(&mut view.unsent);
            view.in_flight += unsent;
            unsent
        })
    }

    /// Redis could not take `count` unsent requests: they wait for the next
    /// sync.
    pub(super) fn keep_unsent(&self, key: &str, count: u32) {
        if let Some(mut view) = self.views.get_mut(key) {
            view.in_flight = view.in_flight.saturating_sub(count);
            view.unsent += count;
        }
    }

    /// Redis answered a strict check made at `now` that sent `sent`
    /// requests: its TAT is the view, plus what this instance admitted
    /// while the answer travelled.
    pub(super) fn remember(&self, key: &str, limit: &RateLimit, gcra: Gcra, now: DateTime<Utc>, answer: (u64, u32)) {
        let (tat, sent) = answer;
        let mut view = self.views.entry(Arc::from(key)).or_insert_with(|| View {
            limit: limit.clone(),
            gcra: gcra.clone(),
            tat,
            unsent: 0,
            in_flight: sent,
            at: now,
            used: true,
        });
        if view.limit != *limit {
            view.limit = limit.clone();
        }
        view.gcra = gcra;
        view.at = view.at.max(now);
        view.used = true;
        answered(&mut view, tat, sent);
    }

    /// A refund of a request still unsent: taken back here, true.
    pub(super) fn take_back(&self, key: &str, limit: &RateLimit) -> bool {
        let Some(mut view) = self.views.get_mut(key) else { return false };
        if view.limit != *limit || view.unsent == 0 {
            return false;
        }
        view.unsent -= 1;
        view.tat = view.tat.saturating_sub(view.gcra.interval);
        true
    }

    /// Adds every key's unsent requests in Redis and refreshes the views of
    /// the keys used since the last sync; forgets the others.
    pub(super) async fn sync(&self, remote: &Remote) -> redis::RedisResult<()> {
        let mut batch = Vec::new();
        self.views.retain(|key, view| {
            if view.unsent == 0 && !view.used {
                return false;
            }
            view.used = false;
            let unsent = std::mem::take(&mut view.unsent);
            view.in_flight += unsent;
            batch.push((Arc::clone(key), view.gcra.clone(), view.at, unsent));
            true
        });
        let mut failure = None;
        for chunk in batch.chunks(SYNC_BATCH) {
            let calls = chunk.iter().map(|(key, gcra, at, unsent)| remote.call(key, gcra, *at, *unsent, false));
            let answers = futures_util::future::join_all(calls).await;
            for ((key, _, _, unsent), answer) in chunk.iter().zip(answers) {
                match answer {
                    Ok(answer) => {
                        if let Some(mut view) = self.views.get_mut(key) {
                            answered(&mut view, answer.tat, *unsent);
                        }
                    }
                    Err(error) => {
                        self.keep_unsent(key, *unsent);
                        failure.get_or_insert(error);
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Starts the background sync once, on the current tokio runtime; it
    /// ends when the limiter is dropped.
    pub(super) fn start_sync(self: &Arc<Self>, remote: &Arc<Remote>) {
        if self.sync_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sync_started.store(false, Ordering::Release);
            return;
        };
        let (local, remote, interval) = (Arc::downgrade(self), Arc::clone(remote), self.interval);
        runtime.spawn(sync_every(interval, local, remote));
    }
}

/// Redis's answer for a call that sent `sent` requests: its TAT, plus what
/// it does not know of yet.
fn answered(view: &mut View, tat: u64, sent: u32) {
    view.in_flight = view.in_flight.saturating_sub(sent);
    let unknown = u64::from(view.unsent + view.in_flight);
    view.tat = tat.saturating_add(unknown.saturating_mul(view.gcra.interval));
}

async fn sync_every(interval: Duration, local: Weak<LocalFirst>, remote: Arc<Remote>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(local) = local.upgrade() else { return };
        if let Err(error) = local.sync(&remote).await {
            tracing::debug!(%error, "local-first sync failed: the unsent requests wait for the next one");
        }
    }
}
