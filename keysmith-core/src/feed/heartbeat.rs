//! Heartbeats: how a subscriber tells a quiet change feed from a dead one.

use std::time::Duration;

use crate::{Error, Result};

/// How often a quiet change feed carries a heartbeat, and how long a
/// subscriber waits for one before it treats its subscription as lost.
///
/// A subscription whose connection stays open but carries nothing (a
/// network partition, a hung proxy) looks healthy to the socket. So every
/// engine that has heard nothing on its subscription (no change, no
/// heartbeat) for about `interval` publishes a [`Change::Heartbeat`](super::Change::Heartbeat),
/// and an engine that hears nothing for `deadline` counts its subscription
/// as lost, exactly as a closed one: it drops its cache, runs on the
/// [outage TTL](crate::store::CacheConfig::with_outage_ttl) and subscribes
/// again. During any feed fault a change made elsewhere is therefore seen
/// within `deadline` + outage TTL (2 s + 1 s by default).
///
/// An engine that hears anything stays quiet, so a fleet sends about one
/// heartbeat per interval in all, whatever its size, and none while changes
/// flow; each waits the interval plus a random part of up to half of it
/// (drawn anew after each heartbeat it sends), so that engines which all
/// heard the last heartbeat do not all answer it.
///
/// ```
/// use std::time::Duration;
/// use keysmith_core::feed::FeedHeartbeat;
///
/// let heartbeat = FeedHeartbeat::default()
///     .with_interval(Duration::from_millis(250))
///     .with_deadline(Duration::from_secs(1));
/// assert!(heartbeat.deadline() >= heartbeat.interval() * 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedHeartbeat {
    interval: Duration,
    deadline: Duration,
}

impl Default for FeedHeartbeat {
    /// [`FeedHeartbeat::DEFAULT`].
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FeedHeartbeat {
    /// A heartbeat after 500 ms of quiet; lost after 2 s of silence.
    pub const DEFAULT: Self = Self { interval: Duration::from_millis(500), deadline: Duration::from_secs(2) };

    /// Publishes a heartbeat once the subscription has been quiet this long
    /// (plus a random part of up to half of it). At least 1 ms.
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Counts the subscription as lost once it has carried nothing for this
    /// long; also the longest wait for a subscription to be made. At least
    /// twice the interval, so that a heartbeat's own delay is not a loss.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long the subscription may be quiet before this engine publishes a
    /// heartbeat (before the random part).
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long the subscription may carry nothing before it is lost.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// `InvalidInput` unless the interval is at least 1 ms and the deadline
    /// at least twice the interval.
    pub(crate) fn check(&self) -> Result<()> {
        if self.interval < Duration::from_millis(1) {
            return Err(Error::invalid("heartbeat", "the interval must be at least 1 ms"));
        }
        if self.deadline < self.interval.saturating_mul(2) {
            return Err(Error::invalid("heartbeat", "the deadline must be at least twice the interval"));
        }
        Ok(())
    }

    /// How long to wait, from now, before publishing a heartbeat if nothing
    /// is heard meanwhile: the interval and a random part of up to half of it.
    pub(crate) fn quiet_wait(&self) -> Duration {
        // Without the OS generator the wait is only less spread out.
        let draw = getrandom::u32().unwrap_or(0);
        self.interval + (self.interval / 2).mul_f64(f64::from(draw) / f64::from(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_must_leave_room_for_a_late_heartbeat() {
        assert!(FeedHeartbeat::default().check().is_ok());
        let short =
            FeedHeartbeat::default().with_interval(Duration::from_secs(1)).with_deadline(Duration::from_secs(1));
        assert!(matches!(short.check(), Err(Error::InvalidInput { field: "heartbeat", .. })));
        let zero = FeedHeartbeat::default().with_interval(Duration::ZERO);
        assert!(matches!(zero.check(), Err(Error::InvalidInput { field: "heartbeat", .. })));
    }

    #[test]
    fn a_quiet_wait_is_the_interval_and_at_most_half_of_it_more() {
        let heartbeat = FeedHeartbeat::default();
        for _ in 0..100 {
            let wait = heartbeat.quiet_wait();
            assert!(wait >= heartbeat.interval() && wait <= heartbeat.interval() * 3 / 2, "{wait:?}");
        }
    }
}
