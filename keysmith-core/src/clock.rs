//! Time, injected: the engine never reads the system clock directly, so
//! expiry, grace periods and quotas are tested without sleeping.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Timelike, Utc};

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

    /// Nanoseconds from an origin of the clock's choosing, for timing spans
    /// of seconds (how long a cache entry stays fresh): it may lag real time
    /// by a few milliseconds and is only compared with other readings of the
    /// same clock. Read on every cache hit, so cheaper than
    /// [`unix_nanos`](Self::unix_nanos) where the clock can be; by default it
    /// is `unix_nanos`.
    fn coarse_nanos(&self) -> u64 {
        self.unix_nanos()
    }
}

/// The system's wall clock, to the microsecond (what the SQL stores keep, so
/// a key returned at creation equals the same key read back).
///
/// Each thread reads the system clock at most every 100 ms and counts
/// forward from that reading by the CPU's time-stamp counter (a fraction of
/// the cost of a system-clock reading): a step of the system clock is seen
/// within 100 ms, and readings of two threads may differ by the clock's
/// slew over that time (tens of microseconds).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let since_epoch = Duration::from_nanos(system_unix_nanos());
        utc_micros(since_epoch).unwrap_or_else(|| Utc::now().trunc_subsecs(6))
    }

    /// The kernel's coarse monotonic clock (a few milliseconds of
    /// resolution, and a fraction of the cost of a precise reading).
    fn coarse_nanos(&self) -> u64 {
        coarsetime::Duration::from_u64(coarsetime::Instant::now_without_cache_update().as_u64()).as_nanos()
    }

    fn unix_nanos(&self) -> u64 {
        system_unix_nanos()
    }
}

/// How long a thread counts the system clock forward by the CPU's counter
/// before reading it again: short enough that an NTP slew (at most 500 ppm)
/// moves the system clock by no more than 50 µs meanwhile, and a step of the
/// clock is seen within that time.
const REANCHOR_NANOS: u64 = 100_000_000;

/// The system clock's nanoseconds since the Unix epoch (0 before it).
/// Validation reads the clock on every request, and a system clock reading
/// costs several times a read of the CPU's time-stamp counter: each thread
/// reads the system clock once per [`REANCHOR_NANOS`] and counts forward
/// from it by the counter (`quanta`, calibrated against the monotonic clock
/// once per process; where the CPU has no invariant counter, `quanta` reads
/// the monotonic clock instead, still cheaper than a wall-clock reading
/// plus its conversion).
fn system_unix_nanos() -> u64 {
    thread_local! {
        /// The counter's raw reading and the system clock's at the thread's
        /// last anchoring.
        static ANCHOR: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    }
    let counter = counter();
    let raw = counter.raw();
    if let Some((anchor_raw, anchor_nanos)) = ANCHOR.get()
        && raw >= anchor_raw
    {
        let elapsed = counter.delta_as_nanos(anchor_raw, raw);
        if elapsed < REANCHOR_NANOS {
            return anchor_nanos.saturating_add(elapsed);
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    ANCHOR.set(Some((raw, nanos)));
    nanos
}

/// The CPU's time-stamp counter, calibrated once per process.
fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

/// Times a span of real time (a request's latency) by the CPU's time-stamp
/// counter: monotonic like [`std::time::Instant`], read at a fraction of its
/// cost (no system call, no clock conversion until the span is asked for).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch(u64);

impl Stopwatch {
    /// Starts timing now.
    pub(crate) fn start() -> Self {
        Self(counter().raw())
    }

    /// The time since [`start`](Self::start).
    pub(crate) fn elapsed(self) -> Duration {
        let counter = counter();
        let now = counter.raw();
        if now <= self.0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(counter.delta_as_nanos(self.0, now))
    }
}

/// `since_epoch` as a UTC time cut to microseconds. Validation reads the
/// clock on every request, and turning a day count into a calendar date is
/// most of the cost of a `DateTime`; each thread keeps the date of the last
/// day it saw. `None` past chrono's range.
fn utc_micros(since_epoch: Duration) -> Option<DateTime<Utc>> {
    thread_local! {
        static LAST_DAY: Cell<Option<(u64, NaiveDate)>> = const { Cell::new(None) };
    }
    const SECS_PER_DAY: u64 = 86_400;
    let secs = since_epoch.as_secs();
    let day = secs / SECS_PER_DAY;
    let date = match LAST_DAY.get() {
        Some((seen, date)) if seen == day => date,
        _ => {
            let date = DateTime::from_timestamp(i64::try_from(day * SECS_PER_DAY).ok()?, 0)?.date_naive();
            LAST_DAY.set(Some((day, date)));
            date
        }
    };
    let seconds_of_day = u32::try_from(secs % SECS_PER_DAY).ok()?;
    let time = NaiveTime::from_num_seconds_from_midnight_opt(seconds_of_day, since_epoch.subsec_micros() * 1000)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

/// Microseconds since the Unix epoch of `at`, as
/// [`DateTime::timestamp_micros`] gives them. Validation turns its clock
/// reading into integers for the rate limiter and the `last_used_at`
/// bookkeeping, and turning a date into a day count is most of that cost:
/// each thread keeps the day count of the last date it converted.
pub(crate) fn unix_micros(at: DateTime<Utc>) -> i64 {
    thread_local! {
        static LAST_DATE: Cell<Option<(NaiveDate, i64)>> = const { Cell::new(None) };
    }
    // `naive_utc`, not `date_naive` or `Timelike` on the `DateTime`: those
    // apply the (zero) offset, which costs more than the rest.
    let date = at.naive_utc().date();
    let midnight = match LAST_DATE.get() {
        Some((seen, micros)) if seen == date => micros,
        _ => {
            let micros = date.and_time(NaiveTime::MIN).and_utc().timestamp_micros();
            LAST_DATE.set(Some((date, micros)));
            micros
        }
    };
    midnight + micros_of_day(at)
}

/// Microseconds since the Unix epoch of `at`, given those of `near` (its
/// [`unix_micros`]): without calendar arithmetic when both are on one day
/// (a key's recent `last_used_at` and the request's time), and without
/// replacing the thread's day when they are not.
pub(crate) fn unix_micros_near(at: DateTime<Utc>, near: DateTime<Utc>, near_micros: i64) -> i64 {
    if at.naive_utc().date() == near.naive_utc().date() {
        return near_micros - micros_of_day(near) + micros_of_day(at);
    }
    at.timestamp_micros()
}

/// Nanoseconds since the Unix epoch of `at`, as
/// [`DateTime::timestamp_nanos_opt`] gives them (through
/// [`unix_micros`]); 0 before the epoch or past what fits.
pub(crate) fn unix_nanos(at: DateTime<Utc>) -> u64 {
    unix_micros(at)
        .checked_mul(1_000)
        .and_then(|nanos| nanos.checked_add(i64::from(at.naive_utc().nanosecond() % 1_000)))
        .and_then(|nanos| u64::try_from(nanos).ok())
        .unwrap_or(0)
}

/// Microseconds since `at`'s midnight (past a million in a leap second,
/// as chrono counts it).
fn micros_of_day(at: DateTime<Utc>) -> i64 {
    let time = at.naive_utc().time();
    i64::from(time.num_seconds_from_midnight()) * 1_000_000 + i64::from(time.nanosecond() / 1_000)
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

    #[test]
    fn system_clock_counts_forward_with_the_system_time() {
        // The first reading anchors the thread; the later ones count forward
        // from it by the CPU's counter and stay with the system clock.
        let system = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let slack = Duration::from_millis(1);
        for _ in 0..1_000 {
            let before = system();
            let nanos = Duration::from_nanos(SystemClock.unix_nanos());
            let now = SystemClock.now();
            let after = system();
            assert!(before.saturating_sub(slack) <= nanos && nanos <= after + slack, "{before:?} {nanos:?} {after:?}");
            let micros = Duration::from_micros(u64::try_from(now.timestamp_micros()).unwrap());
            assert!(before.saturating_sub(slack) <= micros && micros <= after + slack, "{before:?} {now:?} {after:?}");
        }
    }

    #[test]
    fn the_cached_date_gives_the_same_time_as_chrono_across_days() {
        // Back and forth across midnights, a leap day and a year end, so the
        // per-thread date is both reused and replaced.
        let instants = [
            (1_767_225_599, 999_999_999), // 2025-12-31T23:59:59.999999999
            (1_767_225_600, 0),
            (1_767_225_599, 1_500),
            (1_709_164_800, 123_456_789), // 2024-02-29
            (1_709_164_800 + 86_399, 7),
            (1_709_164_800 + 86_400, 0),
            (0, 0),
            (253_402_300_799, 999_999_000), // 9999-12-31T23:59:59.999999
        ];
        for (secs, nanos) in instants {
            let since_epoch = Duration::new(secs, nanos);
            let expected = DateTime::from_timestamp(i64::try_from(secs).unwrap(), nanos).unwrap().trunc_subsecs(6);
            assert_eq!(utc_micros(since_epoch), Some(expected), "{secs}.{nanos:09}");
        }
        assert_eq!(utc_micros(Duration::from_secs(u64::MAX)), None);
    }

    #[test]
    fn integer_readings_agree_with_chrono_across_days() {
        // Back and forth across days, so the per-thread day is reused and
        // replaced; a leap second; both ends of chrono's range.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_nano_opt(23, 59, 59, 1_500_000_123).unwrap();
        let instants = [
            DateTime::from_timestamp(1_767_225_599, 999_999_999).unwrap(),
            DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            DateTime::from_timestamp(1_767_225_599, 1_500).unwrap(),
            DateTime::from_timestamp(1_709_164_800 + 86_399, 7).unwrap(),
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(-1, 999_999_999).unwrap(),
            DateTime::from_timestamp(-86_401, 5).unwrap(),
            leap.and_utc(),
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::MIN_UTC,
        ];
        for at in instants {
            assert_eq!(unix_micros(at), at.timestamp_micros(), "{at:?}");
            let nanos = at.timestamp_nanos_opt().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            assert_eq!(unix_nanos(at), nanos, "{at:?}");
            for near in instants {
                let near_micros = unix_micros(near);
                assert_eq!(unix_micros_near(at, near, near_micros), at.timestamp_micros(), "{at:?} near {near:?}");
            }
        }
    }
}
