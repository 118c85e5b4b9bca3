//! Rotation records: which key replaced which, why, and until when the old
//! one still validates.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{KeyHash, KeyId, RotationId, Tenant};

crate::names::string_enum! {
    /// Why a key was rotated.
    #[derive(Default)]
    #[non_exhaustive]
    pub enum RotationReason("reason") {
        /// Routine rotation on a schedule.
        Scheduled = "scheduled",
        /// The old secret leaked: the old key stops at once unless a grace is given.
        Compromised = "compromised",
        /// The old key is about to expire.
        Expiring = "expiring",
        /// An operator asked for it.
        ///
        /// The default, when no reason is given.
        #[default]
        Manual = "manual",
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
