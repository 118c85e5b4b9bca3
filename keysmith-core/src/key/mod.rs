//! API keys: the entity, its lifecycle states, the raw key format and hashing.

mod credits;
mod format;
mod hash;
mod legacy;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{KeyId, PolicyId, Tenant};

pub use credits::{CreditSpend, Credits, CreditsStatus, Refill};
pub use format::{MAX_RAW_KEY_LEN, ParsedKey, RawKey, validate_prefix};
pub use hash::{HashParseError, Hasher, KeyHash, Sha256Hasher};
pub(crate) use legacy::LegacyMatch;
pub use legacy::{LegacyKeys, MIN_LEGACY_KEY_LEN};

/// An API key as stored: everything but its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// The key's id.
    pub id: KeyId,
    /// The credential this key belongs to across rotations: the id of the
    /// first key of its chain (its own id unless it replaced another key).
    /// Rate limits and quotas are counted per lineage, so a rotation shares
    /// the budget of the key it replaces and never refills it.
    pub lineage_id: KeyId,
    /// A human name ("CI deploy key").
    pub name: String,
    /// What can be shown of the key: `sk_live_…` and its last four characters.
    pub hint: String,
    /// The key's prefix (`sk`).
    pub prefix: String,
    /// The environment written into the key.
    pub environment: Environment,
    /// Where the key is in its lifecycle.
    pub state: KeyState,
    /// Scopes granted to the key.
    pub scopes: Vec<String>,
    /// The tenant the key belongs to.
    pub tenant: Tenant,
    /// The application's own id for the user or customer the key belongs
    /// to, if any; listings filter on it and a policy can cap how many
    /// live keys one owner holds.
    pub owner_id: Option<String>,
    /// The prepaid uses of the key's lineage, if it has any: as they stood
    /// when the key was read (a cached key may lag; validation spends from
    /// the store).
    pub credits: Option<Credits>,
    /// The policy the key is held to, if any.
    pub policy_id: Option<PolicyId>,
    /// After this instant the key is expired.
    pub expires_at: Option<DateTime<Utc>>,
    /// When a `rotated` key stops validating.
    pub grace_expires_at: Option<DateTime<Utc>>,
    /// Why the key was revoked, or suspended, when a reason was given
    /// (a leaked key's is `leaked: <url>`); cleared when it is reactivated.
    pub revoked_reason: Option<String>,
    /// When the key last validated (updated at most once per interval).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub updated_at: DateTime<Utc>,
    /// Free-form JSON object for the application.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Key {
    /// True when the key can never validate again (`expired` or `revoked`).
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// The source id an import made this key from
    /// ([`ImportRow::external_id`](crate::ImportRow::external_id), kept in
    /// the metadata under [`EXTERNAL_ID_FIELD`](crate::EXTERNAL_ID_FIELD)).
    #[must_use]
    pub fn external_id(&self) -> Option<&str> {
        self.metadata.get(crate::EXTERNAL_ID_FIELD).and_then(serde_json::Value::as_str)
    }
}

/// True if `key` is older than `max_age` at `now`.
pub(crate) fn past_max_age(key: &Key, max_age: Option<std::time::Duration>, now: DateTime<Utc>) -> bool {
    max_age
        .and_then(|age| chrono::Duration::from_std(age).ok())
        .and_then(|age| key.created_at.checked_add_signed(age))
        .is_some_and(|end| end <= now)
}

crate::names::string_enum! {
    /// The environment a key is for; it is part of the raw key (`sk_live_…`).
    pub enum Environment("environment") {
        /// Production (`sk_live_…`).
        Live = "live",
        /// Test mode (`sk_test_…`).
        Test = "test",
        /// Local development (`sk_dev_…`).
        Dev = "dev",
    }
}

crate::names::string_enum! {
    /// Where a key is in its lifecycle.
    pub enum KeyState("state") {
        /// Validates.
        Active = "active",
        /// Replaced; validates until its grace ends.
        ///
        /// A newer key took its place (see [`RotationRecord`](crate::RotationRecord)).
        Rotated = "rotated",
        /// Past its expiry or maximum age.
        ///
        /// Terminal: nothing leaves it.
        Expired = "expired",
        /// Permanently disabled.
        ///
        /// Terminal: nothing leaves it.
        Revoked = "revoked",
        /// Temporarily disabled.
        ///
        /// It can be reactivated.
        Suspended = "suspended",
    }
}

impl KeyState {
    /// True for `expired` and `revoked`: nothing leaves them.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Expired | Self::Revoked)
    }

    /// True for the states an owner's key counts in toward a policy's
    /// `max_active_keys_per_owner`: `active`, and `suspended` (it can be
    /// reactivated, so it keeps its place).
    #[must_use]
    pub fn counts_toward_owner_limit(self) -> bool {
        matches!(self, Self::Active | Self::Suspended)
    }

    /// The states from which a key may move to `to`.
    #[must_use]
    pub fn sources_of(to: Self) -> &'static [Self] {
        match to {
            Self::Rotated | Self::Expired | Self::Suspended => &[Self::Active],
            Self::Revoked => &[Self::Active, Self::Suspended, Self::Rotated],
            Self::Active => &[Self::Suspended],
        }
    }

    /// True if the lifecycle allows moving from `self` to `to`.
    #[must_use]
    pub fn can_become(self, to: Self) -> bool {
        Self::sources_of(to).contains(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lifecycle: active → rotated, expired, revoked or suspended;
    /// suspended → active or revoked; rotated → revoked; nothing else.
    #[test]
    fn only_the_lifecycle_transitions_are_allowed() {
        use KeyState::{Active, Expired, Revoked, Rotated, Suspended};
        let allowed = [
            (Active, Rotated),
            (Active, Expired),
            (Active, Revoked),
            (Suspended, Revoked),
            (Rotated, Revoked),
            (Active, Suspended),
            (Suspended, Active),
        ];
        for from in KeyState::ALL {
            for to in KeyState::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }
}
