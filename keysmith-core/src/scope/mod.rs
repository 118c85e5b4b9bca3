//! Scopes: a registry of names per tenant and hierarchical matching.
//!
//! Names are `:`-separated segments. A granted scope grants itself and every
//! scope that extends it (`read` grants `read:users`), and `*` grants
//! everything except the reserved namespace.
//!
//! # The reserved `keysmith` namespace
//!
//! `keysmith` and every scope under `keysmith:` (`keysmith:admin`,
//! `keysmith:verify`, …) belong to Keysmith itself: they let a key manage
//! keys. They are granted only by naming them: by the scope itself, by a
//! scope of the namespace that it extends (`keysmith:admin` grants
//! `keysmith:admin:read`), or by `keysmith:*`, which grants the whole
//! namespace. Neither `*` nor the bare root `keysmith` grants
//! `keysmith:admin`, so a key given "every scope of the application" is
//! never an administrator by accident.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, ScopeId, Tenant};

/// A registered scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The scope's id.
    pub id: ScopeId,
    /// The owner.
    pub tenant: Tenant,
    /// The name (`read:users`), unique per tenant.
    pub name: String,
    /// What the scope allows, for people.
    pub description: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// The root of the reserved namespace: `keysmith` and `keysmith:…`.
pub const RESERVED_ROOT: &str = "keysmith";

/// The scope that grants the whole reserved namespace.
pub const RESERVED_WILDCARD: &str = "keysmith:*";

/// True for `keysmith` and every scope under `keysmith:`.
#[must_use]
#[inline]
pub fn is_reserved(name: &str) -> bool {
    extends(name, RESERVED_ROOT)
}

/// True if holding `granted` allows `required`.
///
/// Hierarchical (`read` grants `read:users`); `*` grants every scope outside
/// the reserved namespace; a reserved scope is granted only by itself,
/// [`RESERVED_WILDCARD`], or a reserved scope below the root that it
/// extends (see the [module docs](self)).
#[must_use]
pub fn grants(granted: &str, required: &str) -> bool {
    if is_reserved(required) {
        return grants_reserved(granted, required);
    }
    grants_unreserved(granted, required)
}

/// [`grants`] for a `required` scope of the reserved namespace.
fn grants_reserved(granted: &str, required: &str) -> bool {
    granted == RESERVED_WILDCARD
        || granted == required
        || (granted != RESERVED_ROOT && is_reserved(granted) && extends(required, granted))
}

/// [`grants`] for a `required` scope outside the reserved namespace.
#[inline]
fn grants_unreserved(granted: &str, required: &str) -> bool {
    granted == "*" || extends(required, granted)
}

/// True if `name` is `parent` or a scope below it.
#[inline]
fn extends(name: &str, parent: &str) -> bool {
    let (name, parent) = (name.as_bytes(), parent.as_bytes());
    // The boundary first (the end of `name`, or a `:` right after the
    // parent's length): it turns down most pairs without comparing text.
    let boundary = match name.get(parent.len()) {
        Some(next) => *next == b':',
        None => name.len() == parent.len(),
    };
    boundary && same_bytes(&name[..parent.len()], parent)
}

/// `a == b` for slices of one length, in a few loads for the short ones
/// that scope names are (16 bytes or fewer) rather than a call to `memcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    // Two overlapping words from each end cover any length from one word
    // to two.
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let half = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    match len {
        4..8 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8),
        _ => a == b,
    }
}

/// True if any scope in `granted` allows `required`.
#[must_use]
#[inline]
pub fn any_grants<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    // Whether `required` is reserved is decided once, not per granted scope.
    if is_reserved(required) {
        return granted.iter().any(|g| grants_reserved(g.as_ref(), required));
    }
    granted.iter().any(|g| grants_unreserved(g.as_ref(), required))
}

/// The key's `scopes` within a policy's `allowed` scopes, or `None` when
/// nothing is cut (no allowlist, or every scope inside it). A scope wider
/// than the allowlist (`read` under `read:users`) is narrowed to the
/// allowed scopes it covers. Shared: a cache keeps it with the key and its
/// policy, so it is decided once per pair.
#[inline]
pub(crate) fn narrow(scopes: &[String], allowed: &[String]) -> Option<std::sync::Arc<[String]>> {
    if allowed.is_empty() || scopes.iter().all(|s| any_grants(allowed, s)) {
        return None;
    }
    Some(narrow_cut(scopes, allowed))
}

/// [`narrow`] once some scope is cut: rare, kept out of the common path.
#[cold]
#[inline(never)]
fn narrow_cut(scopes: &[String], allowed: &[String]) -> std::sync::Arc<[String]> {
    let mut narrowed = Vec::new();
    for granted in scopes {
        if any_grants(allowed, granted) {
            narrowed.push(granted.clone());
        } else {
            narrowed.extend(allowed.iter().filter(|a| grants(granted, a)).cloned());
        }
    }
    narrowed.dedup();
    narrowed.into()
}

/// The required scopes that `granted` does not cover, in order.
#[must_use]
pub fn missing<S: AsRef<str>, R: AsRef<str>>(granted: &[S], required: &[R]) -> Vec<String> {
    // Nearly always everything is covered: say so without building a list.
    if required.iter().all(|r| any_grants(granted, r.as_ref())) {
        return Vec::new();
    }
    not_covered(granted, required)
}

/// [`missing`] once something is: a refusal, kept out of the common path.
#[cold]
#[inline(never)]
fn not_covered<S: AsRef<str>, R: AsRef<str>>(granted: &[S], required: &[R]) -> Vec<String> {
    required.iter().map(AsRef::as_ref).filter(|r| !any_grants(granted, r)).map(str::to_owned).collect()
}

/// The longest scope name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a scope name: `*`, `keysmith:*`, or segments of
/// `[a-zA-Z0-9_.-]` joined by `:`, at most [`MAX_NAME_LEN`] bytes.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    if name == "*" || name == RESERVED_WILDCARD {
        return Ok(());
    }
    let segment_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if name.len() > MAX_NAME_LEN || !name.split(':').all(segment_ok) {
        return Err(Error::invalid(
            "scope",
            format!("{name:?} is not a scope name (segments of letters, digits, `_`, `-`, `.` joined by `:`)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_hierarchy_table() {
        let table = [
            ("read", "read", true),
            ("read", "read:users", true),
            ("read", "read:users:emails", true),
            ("read:users", "read", false),
            ("read:users", "read:users", true),
            ("read:users", "read:userspace", false),
            ("read", "reader", false),
            ("read", "write:users", false),
            ("*", "read:users", true),
            ("*", "anything", true),
            ("write:users", "read:users", false),
            ("read:users", "read:users:emails", true),
            ("read:users:emails", "read:users", false),
            ("", "read", false),
            // The reserved namespace: only named, never by `*` or the bare root.
            ("*", "keysmith:admin", false),
            ("*", "keysmith", false),
            ("*", "keysmith:verify", false),
            ("keysmith", "keysmith:admin", false),
            ("keysmith", "keysmith", true),
            ("keysmith:*", "keysmith:admin", true),
            ("keysmith:*", "keysmith:verify:x", true),
            ("keysmith:*", "keysmith", true),
            ("keysmith:*", "read", false),
            ("keysmith:admin", "keysmith:admin", true),
            ("keysmith:admin", "keysmith:admin:read", true),
            ("keysmith:admin", "keysmith:verify", false),
            ("keysmith:admin", "keysmith:adminx", false),
            ("*", "keysmithy", true),
            ("keysmith", "keysmithy", false),
        ];
        for (granted, required, expected) in table {
            assert_eq!(grants(granted, required), expected, "{granted:?} grants {required:?}");
        }
    }

    #[test]
    fn scopes_are_narrowed_to_the_policy() {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let narrowed = |scopes: &[&str], allowed: &[&str]| narrow(&owned(scopes), &owned(allowed)).map(|n| n.to_vec());
        assert_eq!(narrowed(&["read"], &[]), None);
        assert_eq!(narrowed(&["read:users"], &["read"]), None);
        assert_eq!(narrowed(&["read"], &["read:users"]), Some(owned(&["read:users"])));
        assert_eq!(narrowed(&["*"], &["read", "write:a"]), Some(owned(&["read", "write:a"])));
        assert_eq!(narrowed(&["admin", "read:x"], &["read"]), Some(owned(&["read:x"])));
        // `*` is not narrowed into the reserved namespace.
        assert_eq!(narrowed(&["*"], &["read", "keysmith:admin"]), Some(owned(&["read"])));
    }

    #[test]
    fn short_names_compare_by_every_byte() {
        // Each length up to past two words, differing at each position.
        let text = b"abcdefghijklmnopqrstuvwxyz";
        for len in 0..=text.len() {
            let name = &text[..len];
            assert!(same_bytes(name, name), "{len}");
            for at in 0..len {
                let mut other = name.to_vec();
                other[at] = b'_';
                assert!(!same_bytes(name, &other), "{len} at {at}");
            }
        }
        assert!(!same_bytes(b"read", b"reads"));
    }

    #[test]
    fn missing_lists_what_is_not_covered() {
        let granted = ["read", "write:users"];
        assert!(missing(&granted, &["read:users", "write:users"]).is_empty());
        assert_eq!(missing(&granted, &["write:orders", "read:x"]), vec!["write:orders".to_owned()]);
    }

    #[test]
    fn names_are_validated() {
        for good in ["read", "read:users", "*", "keysmith:admin", "keysmith:*", "v1.read:a-b_c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ":", "read:", ":read", "read users", "read:*", "ré", "keysmith:*:x", "read\0", "a\u{7f}"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_at_most_128_bytes() {
        let longest = format!("read:{}", "a".repeat(MAX_NAME_LEN - "read:".len()));
        assert!(validate_name(&longest).is_ok());
        assert!(validate_name(&format!("{longest}b")).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A segment: often one that means something here, else any valid one.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["keysmith", "admin", "verify", "read", "Keysmith", "keysmithy", "users"])
                .prop_map(str::to_owned),
            "[a-zA-Z0-9_.-]{1,10}",
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..4).prop_map(|segments| segments.join(":"))
    }

    /// A granted scope that does not name the reserved namespace: `*`, the
    /// bare root, or any name that does not start with `keysmith:`.
    fn unreserved_grant() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), Just(RESERVED_ROOT.to_owned()), name()]
            .prop_filter("names the reserved namespace", |g| !g.starts_with("keysmith:"))
    }

    proptest! {
        #[test]
        fn no_grant_outside_the_namespace_reaches_into_it(
            granted in prop::collection::vec(unreserved_grant(), 0..6),
            suffix in name(),
        ) {
            let required = format!("keysmith:{suffix}");
            let granted_anyway = any_grants(&granted, &required);
            prop_assert!(!granted_anyway, "{:?} grants {}", granted, required);
            prop_assert_eq!(missing(&granted, &[required.as_str()]), vec![required.clone()]);
        }

        #[test]
        fn the_namespace_wildcard_grants_only_the_namespace(required in name()) {
            prop_assert_eq!(grants(RESERVED_WILDCARD, &required), is_reserved(&required));
        }

        #[test]
        fn star_grants_every_scope_outside_the_namespace(required in name()) {
            prop_assert_eq!(grants("*", &required), !is_reserved(&required));
        }

        #[test]
        fn a_scope_grants_itself_and_what_extends_it(granted in name(), tail in name()) {
            prop_assume!(granted != RESERVED_ROOT);
            prop_assert!(grants(&granted, &granted));
            let longer = format!("{granted}:{tail}");
            prop_assert!(grants(&granted, &longer));
            // A longer name never grants a shorter one.
            prop_assert!(!grants(&longer, &granted));
        }

        #[test]
        fn generated_names_are_valid_and_bounded(name in name()) {
            prop_assert_eq!(validate_name(&name).is_ok(), name.len() <= MAX_NAME_LEN);
        }

        #[test]
        fn names_with_a_control_character_are_refused(prefix in name(), c in prop::char::range('\0', '\u{9f}'), rest in name()) {
            prop_assume!(c.is_control());
            let name = format!("{prefix}{c}{rest}");
            prop_assert!(validate_name(&name).is_err());
        }
    }
}
