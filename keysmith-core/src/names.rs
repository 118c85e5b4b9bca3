//! The string enums the admin API, the CLI and the stores spell the same
//! way (`KeyState`, `Environment`, `RotationReason`, `Period`, `LimitBy`,
//! `RefusalReason`):
//! each variant's name is written once, in [`string_enum!`], and every
//! spelling is derived from it.

/// Declares an enum of unit variants, each with its lowercase name:
///
/// ```ignore
/// string_enum! {
///     /// Doc of the enum.
///     #[derive(Default)]
///     pub enum LimitBy("limit_by") {
///         /// Doc of the variant (its first paragraph is the CLI's help).
///         #[default]
///         Key = "key",
///     }
/// }
/// ```
///
/// The enum gets `Debug`, `Clone`, `Copy`, `PartialEq`, `Eq`, `Hash`, serde
/// under the names, `ALL` (every variant, in order), `as_str`, `Display`,
/// and `FromStr` whose error names the field (`"limit_by"`) and the allowed
/// names. With the `clap` feature it is a `clap::ValueEnum` (the variant
/// docs are the values' help); with `utoipa`, a `utoipa::ToSchema` (a string
/// with the names as its `enum`, the enum's doc as its description).
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($field:literal) {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                #[serde(rename = $text)]
                #[cfg_attr(feature = "clap", value(name = $text))]
                #[cfg_attr(feature = "utoipa", schema(rename = $text))]
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            /// The lowercase name, as stored, in JSON and on the command line.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::Error;

            /// Parses a name [`as_str`](Self::as_str) writes (exactly: no
            /// other case, no spaces); anything else is
            /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the
            /// allowed values.
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::Error::invalid($field, $crate::names::expected(&Self::ALL.map(Self::as_str)))),
                }
            }
        }
    };
}

pub(crate) use string_enum;

/// "expected a, b or c" for the names `[a, b, c]`.
pub(crate) fn expected(names: &[&str]) -> String {
    match names {
        [] => "expected nothing".to_owned(),
        [only] => format!("expected {only}"),
        [rest @ .., last] => format!("expected {} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::str::FromStr;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::expected;
    use crate::{Environment, Error, KeyState, LimitBy, Period, RotationReason};

    /// Runs `check` on every enum with its names.
    macro_rules! for_every_enum {
        ($check:ident) => {
            $check(&KeyState::ALL, KeyState::as_str);
            $check(&Environment::ALL, Environment::as_str);
            $check(&RotationReason::ALL, RotationReason::as_str);
            $check(&Period::ALL, Period::as_str);
            $check(&LimitBy::ALL, LimitBy::as_str);
            $check(&crate::usage::RefusalReason::ALL, crate::usage::RefusalReason::as_str);
        };
    }

    /// `as_str`, `Display`, `FromStr` and serde agree on every variant, and
    /// the names are distinct lowercase words.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str)
    where
        T: Copy + Debug + PartialEq + std::fmt::Display + FromStr<Err = Error> + Serialize + DeserializeOwned,
    {
        let mut seen = std::collections::BTreeSet::new();
        for &value in all {
            let name = as_str(value);
            assert!(seen.insert(name), "{name} is used twice");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name} is not lowercase");
            assert_eq!(value.to_string(), name);
            assert_eq!(name.parse::<T>().unwrap(), value);
            assert_eq!(serde_json::to_value(value).unwrap(), serde_json::Value::from(name));
            assert_eq!(serde_json::from_value::<T>(name.into()).unwrap(), value);
            assert!(name.to_uppercase().parse::<T>().is_err(), "names are case-sensitive");
            assert!(format!(" {name}").parse::<T>().is_err(), "names are not trimmed");
        }
    }

    #[test]
    fn every_enum_round_trips_through_its_names() {
        for_every_enum!(round_trips);
    }

    #[test]
    fn names_are_the_documented_ones() {
        let names = |all: &[&'static str]| all.to_vec();
        assert_eq!(
            names(&KeyState::ALL.map(KeyState::as_str)),
            ["active", "rotated", "expired", "revoked", "suspended"]
        );
        assert_eq!(names(&Environment::ALL.map(Environment::as_str)), ["live", "test", "dev"]);
        assert_eq!(
            names(&RotationReason::ALL.map(RotationReason::as_str)),
            ["scheduled", "compromised", "expiring", "manual"]
        );
        assert_eq!(names(&Period::ALL.map(Period::as_str)), ["hour", "day", "month"]);
        assert_eq!(names(&LimitBy::ALL.map(LimitBy::as_str)), ["key", "owner"]);
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_field_and_the_allowed_values() {
        let error = "bogus".parse::<KeyState>().unwrap_err();
        assert!(
            matches!(&error, Error::InvalidInput { field: "state", reason }
                if reason == "expected active, rotated, expired, revoked or suspended"),
            "{error:?}"
        );
        let error = "bogus".parse::<LimitBy>().unwrap_err();
        assert!(
            matches!(&error, Error::InvalidInput { field: "limit_by", reason } if reason == "expected key or owner"),
            "{error:?}"
        );
        let error = "bogus".parse::<Environment>().unwrap_err();
        assert!(matches!(&error, Error::InvalidInput { field: "environment", .. }), "{error:?}");
        let error = "bogus".parse::<RotationReason>().unwrap_err();
        assert!(matches!(&error, Error::InvalidInput { field: "reason", .. }), "{error:?}");
        let error = "bogus".parse::<Period>().unwrap_err();
        assert!(matches!(&error, Error::InvalidInput { field: "period", .. }), "{error:?}");
    }

    #[test]
    fn serde_refuses_unknown_names_listing_the_known_ones() {
        let error = serde_json::from_str::<Period>(r#""week""#).unwrap_err().to_string();
        assert!(error.contains("unknown variant `week`, expected one of `hour`, `day`, `month`"), "{error}");
    }

    #[cfg(feature = "clap")]
    #[test]
    fn command_lines_accept_exactly_the_names() {
        fn check<T: clap::ValueEnum + Copy + Debug + PartialEq>(all: &[T], as_str: fn(T) -> &'static str) {
            assert_eq!(T::value_variants(), all);
            for &value in all {
                let possible = value.to_possible_value().unwrap();
                assert_eq!(possible.get_name(), as_str(value));
                assert!(possible.get_help().is_some(), "{value:?} has no help");
                assert_eq!(T::from_str(as_str(value), false).unwrap(), value);
                assert!(T::from_str(&as_str(value).to_uppercase(), false).is_err());
            }
        }
        for_every_enum!(check);
    }

    #[cfg(feature = "utoipa")]
    #[test]
    fn openapi_schemas_list_exactly_the_names() {
        fn check<T: utoipa::ToSchema + Copy>(all: &[T], as_str: fn(T) -> &'static str) {
            let schema = serde_json::to_value(T::schema()).unwrap();
            assert_eq!(schema["type"], "string");
            assert_eq!(schema["enum"], serde_json::json!(all.iter().map(|&v| as_str(v)).collect::<Vec<_>>()));
            assert!(schema["description"].is_string(), "{} has no description", T::name());
        }
        for_every_enum!(check);
    }

    #[test]
    fn expected_lists_names_like_a_sentence() {
        assert_eq!(expected(&["a"]), "expected a");
        assert_eq!(expected(&["a", "b"]), "expected a or b");
        assert_eq!(expected(&["a", "b", "c"]), "expected a, b or c");
    }

    proptest! {
        /// Only the declared names parse; the error is the same whatever the
        /// input (it never echoes it).
        #[test]
        fn only_declared_names_parse(text in "\\PC{0,12}") {
            let parsed = text.parse::<KeyState>();
            prop_assert_eq!(parsed.is_ok(), KeyState::ALL.iter().any(|s| s.as_str() == text));
            if let Err(error) = parsed {
                let reason = "expected active, rotated, expired, revoked or suspended";
                let refused_alike = matches!(&error, Error::InvalidInput { field: "state", reason: r } if r == reason);
                prop_assert!(refused_alike, "{:?}", error);
            }
            prop_assert_eq!(text.parse::<Period>().is_ok(), text == "hour" || text == "day" || text == "month");
        }
    }
}
