//! Rotation records: which key replaced which, why, and until when the old
//! one still validates.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{KeyHash, KeyId, RotationId, Tenant};

/// Why a key was rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RotationReason {
    /// Routine rotation on a schedule.
    Scheduled,
    /// The old secret leaked; usually rotated with grace 0.
    Compromised,
    /// The old key is about to expire.
    Expiring,
    /// An operator asked for it.
    Manual,
}

impl RotationReason {
    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Compromised => "compromised",
            Self::Expiring => "expiring",
            Self::Manual => "manual",
        }
    }
}

impl fmt::Display for RotationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RotationReason {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        [Self::Scheduled, Self::Compromised, Self::Expiring, Self::Manual]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| crate::Error::invalid("reason", "expected scheduled, compromised, expiring or manual"))
    }
}

/// One rotation: `key_id` was replaced by `new_key_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// The record's id.
    pub id: RotationId,
    /// The old key (now `rotated`).
    pub key_id: KeyId,
    /// The key that replaced it.
    pub new_key_id: KeyId,
    /// The owner of both keys.
    pub tenant: Tenant,
    /// Hash of the old secret.
    pub old_hash: KeyHash,
    /// Hash of the new secret.
    pub new_hash: KeyHash,
    /// Why.
    pub reason: RotationReason,
    /// How long the old key kept validating, in seconds in JSON.
    #[serde(with = "crate::serde_secs")]
    pub grace_ttl: Duration,
    /// When the old key stopped (or stops) validating.
    pub grace_expires_at: DateTime<Utc>,
    /// When the rotation happened.
    pub created_at: DateTime<Utc>,
}
