//! Values shared by several resources: enums as the API spells them and
//! pagination.

use keysmith_core::store::Page;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Where a key is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyState {
    /// Validates.
    Active,
    /// Replaced by a newer key; validates until its grace expiry.
    Rotated,
    /// Past its expiry or maximum age. Terminal.
    Expired,
    /// Permanently disabled. Terminal.
    Revoked,
    /// Temporarily disabled; can be reactivated.
    Suspended,
}

impl From<keysmith_core::KeyState> for KeyState {
    fn from(state: keysmith_core::KeyState) -> Self {
        match state {
            keysmith_core::KeyState::Active => Self::Active,
            keysmith_core::KeyState::Rotated => Self::Rotated,
            keysmith_core::KeyState::Expired => Self::Expired,
            keysmith_core::KeyState::Revoked => Self::Revoked,
            keysmith_core::KeyState::Suspended => Self::Suspended,
        }
    }
}

impl From<KeyState> for keysmith_core::KeyState {
    fn from(state: KeyState) -> Self {
        match state {
            KeyState::Active => Self::Active,
            KeyState::Rotated => Self::Rotated,
            KeyState::Expired => Self::Expired,
            KeyState::Revoked => Self::Revoked,
            KeyState::Suspended => Self::Suspended,
        }
    }
}

/// The environment written into a key (`sk_live_…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Environment {
    /// Production.
    Live,
    /// Test mode.
    Test,
    /// Local development.
    Dev,
}

impl From<keysmith_core::Environment> for Environment {
    fn from(environment: keysmith_core::Environment) -> Self {
        match environment {
            keysmith_core::Environment::Live => Self::Live,
            keysmith_core::Environment::Test => Self::Test,
            keysmith_core::Environment::Dev => Self::Dev,
        }
    }
}

impl From<Environment> for keysmith_core::Environment {
    fn from(environment: Environment) -> Self {
        match environment {
            Environment::Live => Self::Live,
            Environment::Test => Self::Test,
            Environment::Dev => Self::Dev,
        }
    }
}

/// Why a key was rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RotationReason {
    /// Routine rotation on a schedule.
    Scheduled,
    /// The old secret leaked; usually rotated with `grace_seconds: 0`.
    Compromised,
    /// The old key is about to expire.
    Expiring,
    /// An operator asked for it (the default).
    #[default]
    Manual,
}

impl From<RotationReason> for keysmith_core::RotationReason {
    fn from(reason: RotationReason) -> Self {
        match reason {
            RotationReason::Scheduled => Self::Scheduled,
            RotationReason::Compromised => Self::Compromised,
            RotationReason::Expiring => Self::Expiring,
            RotationReason::Manual => Self::Manual,
        }
    }
}

/// A usage roll-up period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Period {
    /// A UTC day (the default).
    #[default]
    Day,
    /// A UTC calendar month.
    Month,
}

impl From<Period> for keysmith_core::Period {
    fn from(period: Period) -> Self {
        match period {
            Period::Day => Self::Day,
            Period::Month => Self::Month,
        }
    }
}

impl From<keysmith_core::Period> for Period {
    fn from(period: keysmith_core::Period) -> Self {
        match period {
            keysmith_core::Period::Day => Self::Day,
            keysmith_core::Period::Month => Self::Month,
        }
    }
}

/// The default page size of listings.
pub(crate) const DEFAULT_LIMIT: u32 = 100;

/// `limit` (1 to [`Page::MAX_LIMIT`], default 100) and `offset` (default 0)
/// as a page.
pub(crate) fn page(limit: Option<u32>, offset: Option<u64>) -> Result<Page> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > Page::MAX_LIMIT {
        return Err(Error::InvalidQuery(format!("limit must be 1 to {}", Page::MAX_LIMIT)));
    }
    let offset = offset.unwrap_or(0);
    if offset > crate::schema::MAX_WHOLE {
        return Err(Error::InvalidQuery(format!("offset must be at most {}", crate::schema::MAX_WHOLE)));
    }
    Ok(Page::new(limit, offset))
}

/// Parses an optional id given as text (query or body), so a wrong prefix
/// is a 400 `invalid_id` like in paths.
pub(crate) fn parse_id<T>(text: Option<&str>) -> Result<Option<T>>
where
    T: std::str::FromStr<Err = keysmith_core::IdParseError>,
{
    text.map(str::parse).transpose().map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_spell_like_core() {
        for state in keysmith_core::KeyState::ALL {
            let ours = serde_json::to_value(KeyState::from(state)).unwrap();
            assert_eq!(ours, serde_json::to_value(state).unwrap());
            assert_eq!(keysmith_core::KeyState::from(KeyState::from(state)), state);
        }
        for reason in [RotationReason::Scheduled, RotationReason::Compromised, RotationReason::Expiring] {
            let core = keysmith_core::RotationReason::from(reason);
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::to_value(core).unwrap());
        }
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page(None, None).unwrap(), Page::new(100, 0));
        assert_eq!(page(Some(1000), Some(5)).unwrap(), Page::new(1000, 5));
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(1001), None).is_err());
        assert_eq!(page(None, Some((1 << 53) - 1)).unwrap(), Page::new(100, (1 << 53) - 1));
        assert!(page(None, Some(1 << 53)).is_err());
    }
}
