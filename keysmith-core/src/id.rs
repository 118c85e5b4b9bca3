//! TypeID identifiers: a type prefix, `_`, and a UUIDv7 in Crockford base32.
//!
//! Each entity has its own id type, so an `akey_…` string never parses as a
//! [`PolicyId`]. Ids are K-sortable: a later id compares greater as a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use type_safe_id::{StaticType, TypeSafeId};
use uuid::Uuid;

/// The string could not be parsed as an id of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {expected} id: expected `{expected}_` followed by 26 base32 characters")]
pub struct IdParseError {
    /// The prefix the id type requires.
    pub expected: &'static str,
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $tag:ident, $prefix:literal) => {
        #[doc(hidden)]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $tag;

        impl StaticType for $tag {
            const TYPE: &'static str = $prefix;
        }

        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(TypeSafeId<$tag>);

        /// Hashes the UUID as one integer: ids are map keys on the
        /// validation path, and the type's prefix is the same for all of
        /// them (equal ids have equal UUIDs, so this agrees with `Eq`).
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                state.write_u128(self.0.uuid().as_u128());
            }
        }

        impl $name {
            /// The TypeID prefix of this id type, without the `_`.
            pub const PREFIX: &'static str = $prefix;

            /// A new id from a fresh UUIDv7 (monotonic within this process).
            #[must_use]
            pub fn new() -> Self {
                Self(TypeSafeId::from_uuid(Uuid::now_v7()))
            }

            /// The id with the given UUID (as stored by SQL backends).
            #[must_use]
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(TypeSafeId::from_uuid(uuid))
            }

            /// The UUID inside the id.
            #[must_use]
            pub fn uuid(&self) -> Uuid {
                self.0.uuid()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<TypeSafeId<$tag>>()
                    .map(Self)
                    .map_err(|_| IdParseError { expected: $prefix })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Identifies an API key (`akey_…`).
    KeyId, KeyTag, "akey"
);
define_id!(
    /// Identifies a policy (`kpol_…`).
    PolicyId, PolicyTag, "kpol"
);
define_id!(
    /// Identifies a registered scope (`kscp_…`).
    ScopeId, ScopeTag, "kscp"
);
define_id!(
    /// Identifies a usage record (`kusg_…`).
    UsageId, UsageTag, "kusg"
);
define_id!(
    /// Identifies a rotation record (`krot_…`).
    RotationId, RotationTag, "krot"
);

impl UsageId {
    /// A new id whose UUIDv7 carries the time `at` (a record numbered when
    /// its request was made, so the sweeper can expire records by id).
    #[must_use]
    pub fn at(at: chrono::DateTime<chrono::Utc>) -> Self {
        let (secs, nanos) = unix_parts(at);
        Self::from_uuid(Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos)))
    }

    /// The id of the time `at` (to the millisecond) with `random` as the
    /// 74 bits below it: for a writer that draws random bytes for many ids
    /// at once. Ids of one millisecond never count up (they would tell a
    /// reader how many others were numbered between two of its own).
    #[must_use]
    pub(crate) fn with_random(at: chrono::DateTime<chrono::Utc>, random: &[u8; 10]) -> Self {
        Self::from_uuid(uuid::Builder::from_unix_timestamp_millis(unix_millis(at), random).into_uuid())
    }

    /// The smallest UUID of an id made at or after `at`: every id made
    /// before `at` (to the millisecond) is below it.
    #[must_use]
    pub fn first_uuid_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&unix_millis(at).to_be_bytes()[2..]);
        bytes[6] = 0x70;
        bytes[8] = 0x80;
        Uuid::from_bytes(bytes)
    }
}

/// Seconds and nanoseconds since the Unix epoch (0 before it).
fn unix_parts(at: chrono::DateTime<chrono::Utc>) -> (u64, u32) {
    (u64::try_from(at.timestamp()).unwrap_or(0), at.timestamp_subsec_nanos())
}

/// Milliseconds since the Unix epoch of `at` (0 before it).
fn unix_millis(at: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_ids_made_at_a_time_sort_below_the_first_id_of_a_later_time() {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let early = UsageId::at(at("2026-03-14T12:00:00.999Z")).uuid();
        let first = UsageId::first_uuid_at(at("2026-03-14T12:00:01Z"));
        let late = UsageId::at(at("2026-03-14T12:00:01Z")).uuid();
        assert!(early < first && first <= late, "{early} {first} {late}");
        assert_eq!(first.get_version_num(), 7);
    }

    #[test]
    fn ids_round_trip_through_their_string_form() {
        let id = KeyId::new();
        let s = id.to_string();
        assert!(s.starts_with("akey_"), "{s}");
        assert_eq!(s.len(), "akey_".len() + 26);
        assert_eq!(s.parse::<KeyId>().unwrap(), id);
        assert_eq!(KeyId::from_uuid(id.uuid()), id);
    }

    #[test]
    fn an_id_of_another_type_does_not_parse() {
        let key = KeyId::new().to_string();
        let err = key.parse::<PolicyId>().unwrap_err();
        assert_eq!(err.expected, "kpol");
        assert!(key.parse::<ScopeId>().is_err());
        assert!(PolicyId::new().to_string().parse::<KeyId>().is_err());
        assert!("akey_".parse::<KeyId>().is_err());
        assert!("not an id".parse::<RotationId>().is_err());
    }

    #[test]
    fn ids_are_k_sortable() {
        let ids: Vec<UsageId> = (0..100).map(|_| UsageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(ToString::to_string);
        assert_eq!(ids, sorted);
    }

    #[test]
    fn ids_serialize_as_strings() {
        let id = ScopeId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ScopeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<KeyId>(&json).is_err());
    }
}
