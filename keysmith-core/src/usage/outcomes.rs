//! What became of requests: passed ones by status class, refused ones by
//! reason. Roll-ups hold these counts; quotas read only the passed ones.

use serde::{Deserialize, Serialize};

use crate::Refusal;

crate::names::string_enum! {
    /// Why a request of a known key was refused: the refusal codes a
    /// roll-up counts (a key that is missing, malformed or unknown has no
    /// tenant to count for; those go to a metric only).
    #[derive(PartialOrd, Ord)]
    pub enum RefusalReason("reason") {
        /// Over one of the policy's rate limits.
        RateLimited = "rate_limited",
        /// The daily or monthly quota was used up.
        QuotaExceeded = "quota_exceeded",
        /// The credits could not pay the request.
        CreditsExhausted = "credits_exhausted",
        /// The key lacked a scope the request required.
        InsufficientScope = "insufficient_scope",
        /// The client address was outside the policy's allowlist.
        IpNotAllowed = "ip_not_allowed",
        /// The request's origin was outside the policy's allowlist.
        OriginNotAllowed = "origin_not_allowed",
        /// The key was revoked (or rotated past its grace).
        KeyRevoked = "key_revoked",
        /// The key was suspended.
        KeySuspended = "key_suspended",
        /// The key had expired.
        KeyExpired = "key_expired",
    }
}

impl Refusal {
    /// The reason a roll-up counts this refusal under, when it concerns a
    /// key that was identified; `None` for a missing, ambiguous, malformed
    /// or unknown key.
    #[must_use]
    pub fn reason(&self) -> Option<RefusalReason> {
        Some(match self {
            Self::RateLimited { .. } => RefusalReason::RateLimited,
            Self::QuotaExceeded { .. } => RefusalReason::QuotaExceeded,
            Self::CreditsExhausted { .. } => RefusalReason::CreditsExhausted,
            Self::InsufficientScope { .. } => RefusalReason::InsufficientScope,
            Self::IpNotAllowed => RefusalReason::IpNotAllowed,
            Self::OriginNotAllowed => RefusalReason::OriginNotAllowed,
            Self::Revoked => RefusalReason::KeyRevoked,
            Self::Suspended => RefusalReason::KeySuspended,
            Self::Expired => RefusalReason::KeyExpired,
            Self::MissingKey | Self::AmbiguousKey | Self::Malformed | Self::Unknown => return None,
        })
    }
}

/// Refused requests, one count per [`RefusalReason`] (named as the
/// reasons in JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Refused {
    /// `rate_limited`
    pub rate_limited: u64,
    /// `quota_exceeded`
    pub quota_exceeded: u64,
    /// `credits_exhausted`
    pub credits_exhausted: u64,
    /// `insufficient_scope`
    pub insufficient_scope: u64,
    /// `ip_not_allowed`
    pub ip_not_allowed: u64,
    /// `origin_not_allowed`
    pub origin_not_allowed: u64,
    /// `key_revoked`
    pub key_revoked: u64,
    /// `key_suspended`
    pub key_suspended: u64,
    /// `key_expired`
    pub key_expired: u64,
}

impl Refused {
    /// The count of `reason`.
    #[must_use]
    pub fn get(&self, reason: RefusalReason) -> u64 {
        *self.slot(reason)
    }

    /// The count of `reason`, to change.
    pub fn get_mut(&mut self, reason: RefusalReason) -> &mut u64 {
        match reason {
            RefusalReason::RateLimited => &mut self.rate_limited,
            RefusalReason::QuotaExceeded => &mut self.quota_exceeded,
            RefusalReason::CreditsExhausted => &mut self.credits_exhausted,
            RefusalReason::InsufficientScope => &mut self.insufficient_scope,
            RefusalReason::IpNotAllowed => &mut self.ip_not_allowed,
            RefusalReason::OriginNotAllowed => &mut self.origin_not_allowed,
            RefusalReason::KeyRevoked => &mut self.key_revoked,
            RefusalReason::KeySuspended => &mut self.key_suspended,
            RefusalReason::KeyExpired => &mut self.key_expired,
        }
    }

    fn slot(&self, reason: RefusalReason) -> &u64 {
        match reason {
            RefusalReason::RateLimited => &self.rate_limited,
            RefusalReason::QuotaExceeded => &self.quota_exceeded,
            RefusalReason::CreditsExhausted => &self.credits_exhausted,
            RefusalReason::InsufficientScope => &self.insufficient_scope,
            RefusalReason::IpNotAllowed => &self.ip_not_allowed,
            RefusalReason::OriginNotAllowed => &self.origin_not_allowed,
            RefusalReason::KeyRevoked => &self.key_revoked,
            RefusalReason::KeySuspended => &self.key_suspended,
            RefusalReason::KeyExpired => &self.key_expired,
        }
    }

    /// Every reason with its count, in [`RefusalReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (RefusalReason, u64)> + '_ {
        RefusalReason::ALL.into_iter().map(|reason| (reason, self.get(reason)))
    }

    /// Refused requests of every reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

/// Passed requests by the class of their response's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StatusClasses {
    /// Below 300 (1xx and 2xx).
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 500 and above.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl StatusClasses {
    /// The count of `status`'s class, to change.
    pub fn class_mut(&mut self, status: u16) -> &mut u64 {
        match status {
            0..300 => &mut self.success,
            300..400 => &mut self.redirection,
            400..500 => &mut self.client_error,
            _ => &mut self.server_error,
        }
    }
}

/// What a roll-up counts: passed requests (with their errors and status
/// classes) and refused ones by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounts {
    /// Requests that passed.
    pub requests: u64,
    /// Of which answered with status ≥ 400.
    pub errors: u64,
    /// The passed requests by status class.
    pub status: StatusClasses,
    /// Requests refused, by reason.
    pub refused: Refused,
}

impl UsageCounts {
    /// One passed request answered with `status`.
    #[must_use]
    pub fn passed(status: u16) -> Self {
        let mut counts = Self::default();
        counts.add_passed(status);
        counts
    }

    /// One request refused for `reason`.
    #[must_use]
    pub fn refused(reason: RefusalReason) -> Self {
        let mut counts = Self::default();
        *counts.refused.get_mut(reason) += 1;
        counts
    }

    /// Counts one more passed request answered with `status`.
    pub fn add_passed(&mut self, status: u16) {
        self.requests += 1;
        self.errors += u64::from(status >= 400);
        *self.status.class_mut(status) += 1;
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.status.success += other.status.success;
        self.status.redirection += other.status.redirection;
        self.status.client_error += other.status.client_error;
        self.status.server_error += other.status.server_error;
        for reason in RefusalReason::ALL {
            *self.refused.get_mut(reason) += other.refused.get(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_of_a_known_key_has_the_reason_of_its_code() {
        for reason in RefusalReason::ALL {
            let refusal = match reason {
                RefusalReason::RateLimited => continue,
                RefusalReason::QuotaExceeded => {
                    Refusal::QuotaExceeded { resets_at: chrono::Utc::now(), period: crate::Period::Day, quota: 1 }
                }
                RefusalReason::CreditsExhausted => {
                    let status = crate::CreditsStatus { remaining: 0, cost: 0, refill: None, refills_at: None };
                    Refusal::CreditsExhausted { refills_at: None, status }
                }
                RefusalReason::InsufficientScope => Refusal::InsufficientScope { missing: vec![], one_of: false },
                RefusalReason::IpNotAllowed => Refusal::IpNotAllowed,
                RefusalReason::OriginNotAllowed => Refusal::OriginNotAllowed,
                RefusalReason::KeyRevoked => Refusal::Revoked,
                RefusalReason::KeySuspended => Refusal::Suspended,
                RefusalReason::KeyExpired => Refusal::Expired,
            };
            assert_eq!(refusal.reason(), Some(reason));
            assert_eq!(refusal.code(), reason.as_str());
        }
        assert_eq!(Refusal::Unknown.reason(), None);
        assert_eq!(Refusal::Malformed.reason(), None);
    }

    #[test]
    fn counts_add_up_by_class_and_reason() {
        let mut counts = UsageCounts::passed(200);
        counts.add(&UsageCounts::passed(404));
        counts.add(&UsageCounts::passed(503));
        counts.add(&UsageCounts::refused(RefusalReason::KeyExpired));
        assert_eq!((counts.requests, counts.errors), (3, 2));
        assert_eq!(counts.status, StatusClasses { success: 1, redirection: 0, client_error: 1, server_error: 1 });
        assert_eq!(counts.refused.key_expired, 1);
        assert_eq!(counts.refused.total(), 1);
        let json = serde_json::to_value(counts.status).unwrap();
        assert_eq!(json, serde_json::json!({"2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}));
    }
}
