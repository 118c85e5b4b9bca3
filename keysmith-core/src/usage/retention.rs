//! How long usage is kept: raw records and hourly roll-ups expire, daily
//! and monthly roll-ups stay until their key is deleted.

use std::time::Duration;

/// How long [`Engine::sweep`](crate::Engine::sweep) keeps usage, and how
/// much it deletes per statement.
///
/// Quotas and credits never read what expires here: quotas count daily and
/// monthly roll-ups, which are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRetention {
    /// Raw records older than this are deleted (30 days by default).
    pub records: Duration,
    /// Hourly roll-ups older than this are deleted (30 days by default).
    pub hourly: Duration,
    /// Rows deleted per statement: the sweeper never deletes over a whole
    /// table at once, so no lock is held for long.
    pub batch: u32,
}

impl UsageRetention {
    /// The default time raw records and hourly roll-ups are kept.
    pub const DEFAULT_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

    /// The default rows deleted per statement.
    pub const DEFAULT_BATCH: u32 = 5000;

    /// Keeps raw records for `age`.
    #[must_use]
    pub fn with_records(mut self, age: Duration) -> Self {
        self.records = age;
        self
    }

    /// Keeps hourly roll-ups for `age`.
    #[must_use]
    pub fn with_hourly(mut self, age: Duration) -> Self {
        self.hourly = age;
        self
    }

    /// Deletes at most `rows` per statement (at least 1).
    #[must_use]
    pub fn with_batch(mut self, rows: u32) -> Self {
        self.batch = rows.max(1);
        self
    }
}

impl Default for UsageRetention {
    fn default() -> Self {
        Self { records: Self::DEFAULT_AGE, hourly: Self::DEFAULT_AGE, batch: Self::DEFAULT_BATCH }
    }
}
