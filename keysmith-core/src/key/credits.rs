//! Credits: a prepaid number of uses a key spends, request by request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Period, Result};

/// A key's prepaid uses. Each request that passes every other check spends
/// its cost (1 unless the request says otherwise); at zero the key is
/// refused with [`Refusal::CreditsExhausted`](crate::Refusal::CreditsExhausted)
/// until it is topped up or refilled.
///
/// Credits belong to the key's lineage: the key that replaces it in a
/// rotation spends from the same credits, and a rotation never refills them.
/// An owner can have credits too
/// ([`TenantEngine::set_owner_credits`](crate::TenantEngine::set_owner_credits)):
/// under a policy with [`LimitBy::Owner`](crate::LimitBy::Owner), every key
/// of the owner spends those instead. Such a key is refused credits of its
/// own ([`Error::OwnerLimitedCredits`](crate::Error::OwnerLimitedCredits)); one
/// that holds some anyway spends them first, so a key with credits never
/// passes for free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    /// Uses left.
    pub remaining: u64,
    /// Tops `remaining` back up to an amount every UTC day or month.
    pub refill: Option<Refill>,
    /// The start of the refill period `remaining` belongs to (set by the
    /// engine; `None` without a refill). The first request of a later
    /// period refills first.
    #[serde(default)]
    pub refilled_at: Option<DateTime<Utc>>,
}

/// A periodic refill: at the start of each UTC day or month, `remaining`
/// becomes `amount` (unused credits do not carry over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refill {
    /// What `remaining` becomes.
    pub amount: u64,
    /// How often: `day` or `month` (UTC).
    pub every: Period,
}

/// Credits as a request left them, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditsStatus {
    /// Uses left after this request.
    pub remaining: u64,
    /// What this request spent.
    pub cost: u64,
    /// The refill, if the credits have one.
    pub refill: Option<Refill>,
    /// When the next refill happens, if the credits have one.
    pub refills_at: Option<DateTime<Utc>>,
}

impl Credits {
    /// The largest `remaining` or refill amount (no store overflows it, with
    /// room for any top-up below it).
    pub const MAX: u64 = 1_000_000_000_000;

    /// `remaining` uses, no refill.
    #[must_use]
    pub fn new(remaining: u64) -> Self {
        Self { remaining, refill: None, refilled_at: None }
    }

    /// Refilled to `amount` at the start of every UTC `every`.
    #[must_use]
    pub fn with_refill(mut self, amount: u64, every: Period) -> Self {
        self.refill = Some(Refill { amount, every });
        self
    }

    /// The credits as they stand at `now`: refilled if a refill period
    /// began since the last one.
    #[must_use]
    pub fn as_of(mut self, now: DateTime<Utc>) -> Self {
        if let Some(refill) = self.refill {
            let start = refill.every.start_of(now);
            if self.refilled_at.is_none_or(|at| at < start) {
                self.remaining = refill.amount;
                self.refilled_at = Some(start);
            }
        }
        self
    }

    /// When the next refill after `now` happens, if there is a refill.
    #[must_use]
    pub fn next_refill(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.refill.map(|refill| refill.every.next_start(now))
    }

    /// The status after a request that cost `cost` at `now`.
    #[must_use]
    pub fn status(&self, cost: u64, now: DateTime<Utc>) -> CreditsStatus {
        CreditsStatus { remaining: self.remaining, cost, refill: self.refill, refills_at: self.next_refill(now) }
    }

    /// Checked and stamped to be stored at `now`: bounded values, and the
    /// refill period set to the current one.
    pub(crate) fn checked(mut self, now: DateTime<Utc>) -> Result<Self> {
        if self.remaining > Self::MAX {
            return Err(Error::invalid("credits.remaining", format!("must be at most {}", Self::MAX)));
        }
        if let Some(refill) = self.refill
            && (refill.amount == 0 || refill.amount > Self::MAX)
        {
            return Err(Error::invalid("credits.refill.amount", format!("must be 1 to {}", Self::MAX)));
        }
        if self.refill.is_some_and(|refill| refill.every == Period::Hour) {
            return Err(Error::invalid("credits.refill.every", "must be day or month"));
        }
        self.refilled_at = self.refill.map(|refill| refill.every.start_of(now));
        Ok(self)
    }
}

/// What spending credits found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditSpend {
    /// The cost was spent; the credits after it.
    Spent(Credits),
    /// Too few credits for the cost; nothing was spent.
    Exhausted(Credits),
    /// The key's lineage has no credits (they were removed): nothing to spend.
    Unlimited,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_refill_applies_once_per_period_and_resets_to_its_amount() {
        let day1 = Utc.with_ymd_and_hms(2026, 3, 15, 23, 0, 0).unwrap();
        let day2 = Utc.with_ymd_and_hms(2026, 3, 16, 0, 0, 0).unwrap();
        let mut credits = Credits::new(3).with_refill(10, Period::Day).checked(day1).unwrap();
        assert_eq!(credits.as_of(day1).remaining, 3, "the current period keeps what is left");
        credits.remaining = 1;
        let refilled = credits.as_of(day2);
        assert_eq!((refilled.remaining, refilled.refilled_at), (10, Some(day2)));
        assert_eq!(refilled.as_of(day2), refilled, "once per period");
        assert_eq!(credits.next_refill(day1), Some(day2));
        assert_eq!(Credits::new(5).as_of(day2).remaining, 5, "no refill, no change");
    }

    #[test]
    fn credit_values_are_bounded() {
        let now = Utc::now();
        assert!(Credits::new(Credits::MAX).checked(now).is_ok());
        assert!(Credits::new(Credits::MAX + 1).checked(now).is_err());
        assert!(Credits::new(0).with_refill(0, Period::Day).checked(now).is_err());
        assert!(Credits::new(0).with_refill(Credits::MAX + 1, Period::Month).checked(now).is_err());
        assert!(Credits::new(0).with_refill(1, Period::Hour).checked(now).is_err(), "refills are daily or monthly");
        assert!(Credits::new(0).checked(now).is_ok(), "zero remaining is a valid, exhausted state");
    }

    #[test]
    fn checked_credits_belong_to_the_current_period_and_report_the_next_refill() {
        let now = Utc.with_ymd_and_hms(2026, 3, 15, 13, 30, 0).unwrap();
        let march = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let april = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
        let monthly = Credits::new(0).with_refill(Credits::MAX, Period::Month).checked(now).unwrap();
        assert_eq!((monthly.remaining, monthly.refilled_at), (0, Some(march)), "the largest refill is accepted");
        assert_eq!(monthly.as_of(now).remaining, 0, "no refill before April");
        let status = monthly.status(2, now);
        let refill = Some(Refill { amount: Credits::MAX, every: Period::Month });
        assert_eq!(status, CreditsStatus { remaining: 0, cost: 2, refill, refills_at: Some(april) });
        let prepaid = Credits::new(7).checked(now).unwrap();
        assert_eq!(prepaid.refilled_at, None);
        assert_eq!(prepaid.status(1, now), CreditsStatus { remaining: 7, cost: 1, refill: None, refills_at: None });
    }
}
