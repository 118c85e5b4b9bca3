//! Usage: one record per request, rolled up per key into hours, days and
//! months with the outcome of every request (passed by status class,
//! refused by reason).

mod batch;
mod outcomes;
pub(crate) mod quota;
mod recorder;
mod retention;
mod shared;
pub(crate) mod texts;

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::{KeyId, Tenant, UsageId};

pub use batch::{RollupKey, UsageBatch, UsageDelta, fold_rollups};
pub use outcomes::{RefusalReason, Refused, StatusClasses, UsageCounts};
pub use quota::{QuotaCounter, QuotaRemaining, stored_requests};
pub(crate) use recorder::{EntryNames, NO_USER_AGENT, Spill, UsageEntry, UsageRecorder};
pub use recorder::{UsageConfig, UsageMode, UsageStats};
pub use retention::UsageRetention;
pub use shared::{SharedStr, SharedTenant};

/// The longest method a usage record keeps, in bytes: a longer extension
/// method is cut to it (every store holds what a record holds).
pub const MAX_METHOD_LEN: usize = 32;
/// The longest endpoint a usage record keeps, in bytes: a longer raw path
/// or template is cut to it.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// The longest user agent a usage record keeps, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 512;

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One request made with a key. Its text and owner are shared values
/// ([`SharedStr`], [`SharedTenant`]): cloning a record copies no string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The record's id.
    pub id: UsageId,
    /// The key used.
    pub key_id: KeyId,
    /// The key's owner.
    pub tenant: SharedTenant,
    /// The route template the request matched (`/users/{id}`), `unmatched`
    /// when none did; the raw path only where the adapter was told to
    /// record it ([`UsageEndpoint`](crate::http::UsageEndpoint)).
    pub endpoint: SharedStr,
    /// The HTTP method.
    pub method: SharedStr,
    /// The response status.
    pub status: u16,
    /// The client address, when known.
    pub ip: Option<IpAddr>,
    /// The `User-Agent`, when sent.
    pub user_agent: Option<SharedStr>,
    /// Time to answer, in milliseconds in JSON.
    #[serde(with = "millis")]
    pub latency: Duration,
    /// When the request was made.
    pub timestamp: DateTime<Utc>,
}

impl UsageRecord {
    /// The record with its texts cut to what every store keeps
    /// ([`MAX_METHOD_LEN`], [`MAX_ENDPOINT_LEN`], [`MAX_USER_AGENT_LEN`]), so
    /// that no record can fail the batch it is written in.
    #[must_use]
    pub(crate) fn bounded(mut self) -> Self {
        let cut_to = |text: &mut SharedStr, max: usize| {
            if text.len() > max {
                *text = SharedStr::copied(cut(text, max));
            }
        };
        cut_to(&mut self.method, MAX_METHOD_LEN);
        cut_to(&mut self.endpoint, MAX_ENDPOINT_LEN);
        if let Some(agent) = &mut self.user_agent {
            cut_to(agent, MAX_USER_AGENT_LEN);
        }
        self
    }

    /// True if the response was an error (status ≥ 400).
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }
}

crate::names::string_enum! {
    /// A UTC hour, day or calendar month: the period of usage roll-ups (and,
    /// days and months only, of credit refills).
    #[derive(PartialOrd, Ord)]
    pub enum Period("period") {
        /// UTC hours (usage roll-ups only, kept for the hourly retention).
        Hour = "hour",
        /// UTC days.
        Day = "day",
        /// UTC calendar months.
        Month = "month",
    }
}

impl Period {
    /// The start (the hour's first instant, UTC midnight) of the period
    /// containing `at`.
    #[must_use]
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        if self == Self::Hour {
            // Whole hours since the epoch: no calendar to consult.
            let seconds = at.timestamp();
            return DateTime::from_timestamp(seconds - seconds.rem_euclid(3600), 0).unwrap_or(at);
        }
        let date = at.date_naive();
        let first = match self {
            Self::Hour | Self::Day => date,
            Self::Month => date.with_day(1).unwrap_or(date),
        };
        Utc.from_utc_datetime(&first.and_time(NaiveTime::MIN))
    }

    /// The start of the period after the one containing `at`.
    #[must_use]
    pub fn next_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.start_of(at);
        match self {
            Self::Hour => start + chrono::TimeDelta::hours(1),
            Self::Day => start + chrono::Days::new(1),
            Self::Month => start + chrono::Months::new(1),
        }
    }
}

/// The requests of one key in one period: those that passed (what quotas
/// count), by status class, and those refused, by reason (counted, never
/// charged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAggregate {
    /// The key.
    pub key_id: KeyId,
    /// The key's owner.
    pub tenant: Tenant,
    /// Hour, day or month.
    pub period: Period,
    /// The period's first instant (UTC).
    pub period_start: DateTime<Utc>,
    /// Requests that passed in the period.
    pub requests: u64,
    /// Of which answered with status ≥ 400.
    pub errors: u64,
    /// The passed requests by status class.
    #[serde(default)]
    pub status: StatusClasses,
    /// Requests refused, by reason.
    #[serde(default)]
    pub refused: Refused,
}

impl UsageAggregate {
    /// An empty aggregate of `key_id` for the `period` starting at `period_start`.
    #[must_use]
    pub fn empty(key_id: KeyId, tenant: Tenant, period: Period, period_start: DateTime<Utc>) -> Self {
        Self {
            key_id,
            tenant,
            period,
            period_start,
            requests: 0,
            errors: 0,
            status: StatusClasses::default(),
            refused: Refused::default(),
        }
    }

    /// Its counts.
    #[must_use]
    pub fn counts(&self) -> UsageCounts {
        UsageCounts { requests: self.requests, errors: self.errors, status: self.status, refused: self.refused }
    }

    /// Adds `counts` to it.
    pub fn add(&mut self, counts: &UsageCounts) {
        let mut sum = self.counts();
        sum.add(counts);
        (self.requests, self.errors, self.status, self.refused) = (sum.requests, sum.errors, sum.status, sum.refused);
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn periods_start_at_utc_midnight() {
        let t = at("2026-02-28T23:59:59Z");
        assert_eq!(Period::Day.start_of(t), at("2026-02-28T00:00:00Z"));
        assert_eq!(Period::Day.next_start(t), at("2026-03-01T00:00:00Z"));
        assert_eq!(Period::Month.start_of(t), at("2026-02-01T00:00:00Z"));
        assert_eq!(Period::Month.next_start(at("2026-12-31T10:00:00Z")), at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn hours_start_on_the_utc_hour() {
        let t = at("2026-02-28T23:59:59.5Z");
        assert_eq!(Period::Hour.start_of(t), at("2026-02-28T23:00:00Z"));
        assert_eq!(Period::Hour.next_start(t), at("2026-03-01T00:00:00Z"));
        assert_eq!(Period::Hour.start_of(at("2026-03-01T00:00:00Z")), at("2026-03-01T00:00:00Z"));
        // Before the epoch too (whole hours counted from it, rounded down).
        assert_eq!(Period::Hour.start_of(at("1969-12-31T23:30:00Z")), at("1969-12-31T23:00:00Z"));
    }
}
