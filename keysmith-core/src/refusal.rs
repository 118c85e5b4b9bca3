//! Refusals: a client presented a key that does not pass. Not an error of the
//! system; adapters turn each into its HTTP answer.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{CreditsStatus, Period};

/// Why a request's key was not accepted. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The request carried no key.
    MissingKey,
    /// The request carried two different keys.
    AmbiguousKey,
    /// Wrong shape, unknown environment, bad checksum or too long.
    Malformed,
    /// Well-formed, but no key has this secret.
    Unknown,
    /// Revoked, or rotated and past its grace period.
    Revoked,
    /// Suspended.
    Suspended,
    /// Past its expiry time or its policy's maximum age.
    Expired,
    /// The client address is outside the policy's allowlist (or unknown).
    IpNotAllowed,
    /// The request's `Origin` is not in the policy's allowlist.
    OriginNotAllowed,
    /// The key lacks scopes the route requires.
    InsufficientScope {
        /// The required scopes the key does not cover.
        missing: Vec<String>,
        /// True when any one of `missing` would do (a route's
        /// `RequireScopes::any` naming several), false when every one is
        /// required.
        one_of: bool,
    },
    /// Too many requests for one of the policy's limits; try again after
    /// `retry_after`.
    RateLimited {
        /// The limit that refused (its `name` says which).
        limit: crate::RateLimit,
        /// How long until a request would be allowed.
        retry_after: Duration,
        /// That limit's state, for the `RateLimit` headers.
        status: crate::limit::RateLimitStatus,
    },
    /// The daily or monthly quota is used up until `resets_at`.
    QuotaExceeded {
        /// When the exhausted quota resets (UTC).
        resets_at: DateTime<Utc>,
        /// Which quota is used up: [`Period::Day`] or [`Period::Month`]
        /// (the month's when both are), named `quota-daily` or
        /// `quota-monthly` in the `RateLimit` headers.
        period: Period,
        /// That quota: requests per UTC day or calendar month, for the
        /// `RateLimit` headers.
        quota: u64,
    },
    /// The key's credits cannot pay the request's cost.
    CreditsExhausted {
        /// When the credits refill, if they have a refill (UTC).
        refills_at: Option<DateTime<Utc>>,
        /// The credits as the request found them, for the `RateLimit`
        /// headers: nothing was spent (`cost` is 0), `remaining` is too few
        /// for the request's cost.
        status: CreditsStatus,
    },
}

impl Refusal {
    /// The stable snake-case code of the JSON error body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::AmbiguousKey => "ambiguous_key",
            Self::Malformed => "malformed_key",
            Self::Unknown => "invalid_key",
            Self::Revoked => "key_revoked",
            Self::Suspended => "key_suspended",
            Self::Expired => "key_expired",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::CreditsExhausted { .. } => "credits_exhausted",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingKey => f.write_str("no API key was provided"),
            Self::AmbiguousKey => f.write_str("the request carries two different API keys"),
            Self::Malformed => f.write_str("the API key is malformed"),
            Self::Unknown => f.write_str("the API key is not valid"),
            Self::Revoked => f.write_str("the API key has been revoked"),
            Self::Suspended => f.write_str("the API key is suspended"),
            Self::Expired => f.write_str("the API key has expired"),
            Self::IpNotAllowed => f.write_str("requests from this address are not allowed for this API key"),
            Self::OriginNotAllowed => f.write_str("requests from this origin are not allowed for this API key"),
            Self::InsufficientScope { missing, one_of: false } => {
                write!(f, "the API key lacks the required scope(s): {}", missing.join(" "))
            }
            Self::InsufficientScope { missing, one_of: true } => {
                write!(f, "the API key lacks every scope that would do; it needs one of: {}", missing.join(" "))
            }
            Self::RateLimited { limit, retry_after, .. } => {
                write!(f, "rate limit {:?} exceeded; retry in {} s", limit.name, retry_after_secs(*retry_after))
            }
            Self::QuotaExceeded { resets_at, .. } => {
                write!(f, "usage quota exceeded; resets at {}", resets_at.to_rfc3339())
            }
            Self::CreditsExhausted { refills_at: Some(at), .. } => {
                write!(f, "the API key has no credits left; they refill at {}", at.to_rfc3339())
            }
            Self::CreditsExhausted { refills_at: None, .. } => f.write_str("the API key has no credits left"),
        }
    }
}

/// Whole seconds to wait, rounded up so a client that waits is let in.
#[must_use]
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
}
