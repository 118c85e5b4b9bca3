//! Time, injected: the engine never reads the system clock directly, so
//! expiry, grace periods and quotas are tested without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

/// A source of the current time (UTC).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// The current time as nanoseconds since the Unix epoch (0 before it).
    /// Rate limiting reads this on every request, so clocks that can answer
    /// it without building a calendar date should.
    fn unix_nanos(&self) -> u64 {
        self.now().timestamp_nanos_opt().and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
    }
}

/// The system's wall clock, to the microsecond (what the SQL stores keep, so
/// a key returned at creation equals the same key read back).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    fn unix_nanos(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to; clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    #[must_use]
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// Moves the clock forward by `by`.
    ///
    /// # Panics
    /// If `by` does not fit in a `chrono::Duration`.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).expect("duration out of range");
        *self.lock() += by;
    }

    /// Sets the clock to `to` (which may be in the past).
    pub fn set(&self, to: DateTime<Utc>) {
        *self.lock() = to;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let clock = ManualClock::new(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        other.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        clock.set(start);
        assert_eq!(other.now(), start);
        assert_eq!(clock.unix_nanos(), 1_767_225_600_000_000_000);
    }

    #[test]
    fn system_clock_keeps_microseconds_like_the_stores() {
        assert_eq!(SystemClock.now().timestamp_subsec_nanos() % 1000, 0);
    }
}
