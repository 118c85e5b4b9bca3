//! Scopes: a registry of names per tenant and hierarchical matching.
//!
//! Names are `:`-separated segments. A granted scope grants itself and every
//! scope that extends it (`read` grants `read:users`), and `*` grants all.

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

/// True if holding `granted` allows `required`.
#[must_use]
pub fn grants(granted: &str, required: &str) -> bool {
    granted == "*" || required.strip_prefix(granted).is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// True if any scope in `granted` allows `required`.
#[must_use]
pub fn any_grants<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    granted.iter().any(|g| grants(g.as_ref(), required))
}

/// The required scopes that `granted` does not cover, in order.
#[must_use]
pub fn missing<S: AsRef<str>, R: AsRef<str>>(granted: &[S], required: &[R]) -> Vec<String> {
    // Nearly always everything is covered: say so without building a list.
    if required.iter().all(|r| any_grants(granted, r.as_ref())) {
        return Vec::new();
    }
    required.iter().map(AsRef::as_ref).filter(|r| !any_grants(granted, r)).map(str::to_owned).collect()
}

/// Checks a scope name: `*`, or segments of `[a-zA-Z0-9_.-]` joined by `:`,
/// at most 128 bytes.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    if name == "*" {
        return Ok(());
    }
    let segment_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if name.len() > 128 || !name.split(':').all(segment_ok) {
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
        ];
        for (granted, required, expected) in table {
            assert_eq!(grants(granted, required), expected, "{granted:?} grants {required:?}");
        }
    }

    #[test]
    fn missing_lists_what_is_not_covered() {
        let granted = ["read", "write:users"];
        assert!(missing(&granted, &["read:users", "write:users"]).is_empty());
        assert_eq!(missing(&granted, &["write:orders", "read:x"]), vec!["write:orders".to_owned()]);
    }

    #[test]
    fn names_are_validated() {
        for good in ["read", "read:users", "*", "keysmith:admin", "v1.read:a-b_c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ":", "read:", ":read", "read users", "read:*", "ré"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
