//! Leaked keys: the per-tenant [`LeakPolicy`] and the vocabulary of a leak
//! report, as handled by [`Engine::report_leaks`](crate::Engine::report_leaks).
//!
//! A secret scanner (GitHub's secret scanning partner program, say) finds
//! keys in public places and reports them. Each reported token that has the
//! shape and checksum of a Keysmith key is looked up by hash across every
//! tenant; the key's tenant's policy decides what happens to it.

use std::collections::HashMap;
use std::fmt;

use crate::Tenant;

crate::names::string_enum! {
    /// What the engine does with a key reported leaked.
    #[derive(Default)]
    pub enum LeakPolicy("leak_policy") {
        /// Revoke the key for good (the default).
        ///
        /// Its revocation reason is `leaked: <url>`.
        #[default]
        Revoke = "revoke",
        /// Suspend the key until someone reactivates it.
        ///
        /// A rotated key in its grace period is revoked instead: it cannot be
        /// suspended, and it must stop validating.
        Suspend = "suspend",
        /// Change nothing: only fire the `KeyLeaked` event.
        Notify = "notify",
    }
}

crate::names::string_enum! {
    /// What the engine did with a key reported leaked, as the `KeyLeaked`
    /// event tells it.
    pub enum LeakAction("leak_action") {
        /// The key was revoked.
        Revoked = "revoked",
        /// The key was suspended.
        Suspended = "suspended",
        /// Nothing changed; the event is the notification.
        Notified = "notified",
    }
}

crate::names::string_enum! {
    /// Whether a reported token is one of this engine's keys.
    pub enum LeakLabel("label") {
        /// A key of some tenant (whatever its state).
        TruePositive = "true_positive",
        /// Not a key of this engine: a wrong shape or checksum, or no key
        /// with its hash.
        FalsePositive = "false_positive",
    }
}

/// The leak policy of each tenant: a default and per-tenant overrides.
///
/// ```
/// use keysmith_core::leak::{LeakPolicies, LeakPolicy};
/// use keysmith_core::Tenant;
///
/// let policies = LeakPolicies::new(LeakPolicy::Revoke).with_tenant("billing", "sandbox", LeakPolicy::Notify);
/// assert_eq!(policies.for_tenant(&Tenant::new("billing", "sandbox")), LeakPolicy::Notify);
/// assert_eq!(policies.for_tenant(&Tenant::new("billing", "acme")), LeakPolicy::Revoke);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct LeakPolicies {
    default: LeakPolicy,
    tenants: HashMap<Tenant, LeakPolicy>,
}

impl LeakPolicies {
    /// `default` for every tenant not named by [`with_tenant`](Self::with_tenant).
    pub fn new(default: LeakPolicy) -> Self {
        Self { default, tenants: HashMap::new() }
    }

    /// `policy` for the tenant `tenant_id` of app `app_id`.
    pub fn with_tenant(mut self, app_id: impl Into<String>, tenant_id: impl Into<String>, policy: LeakPolicy) -> Self {
        self.tenants.insert(Tenant::new(app_id, tenant_id), policy);
        self
    }

    /// The policy that applies to `tenant`'s keys.
    #[must_use]
    pub fn for_tenant(&self, tenant: &Tenant) -> LeakPolicy {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// One token a scanner reported, with where it was found. The token is the
/// raw secret as found: it never reaches a log, an event or an error, and
/// `Debug` leaves it out.
#[derive(Clone, Copy)]
pub struct LeakReport<'a> {
    /// The token as found.
    pub token: &'a str,
    /// Where the scanner found it (GitHub: `content`, `commit`, `issue`…).
    pub source: &'a str,
    /// The public URL of the place it was found.
    pub url: &'a str,
}

impl fmt::Debug for LeakReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakReport")
            .field("token", &"[REDACTED]")
            .field("source", &self.source)
            .field("url", &self.url)
            .finish()
    }
}

/// What [`Engine::report_leaks`](crate::Engine::report_leaks) made of one
/// reported token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakFinding {
    /// SHA-256 of the token, lowercase hex: how the scanner knows which
    /// token the finding is about (never the token itself).
    pub token_hash: String,
    /// Whether the token is one of this engine's keys.
    pub label: LeakLabel,
    /// The key, for a true positive.
    pub key: Option<crate::KeyId>,
    /// What this report did to the key: `None` for a false positive and
    /// when an earlier report (or anything else) already did it.
    pub action: Option<LeakAction>,
}

/// How a scanner checks that a match is a well-formed key, for its
/// post-processing (GitHub asks partners for one).
pub const CHECKSUM_RULE: &str = "The last 6 characters are a checksum of everything before them: the CRC-32 \
(IEEE 802.3, as zlib's crc32) of those bytes, written in base 62 with the digits 0-9A-Za-z (0=0, A=10, a=36), \
most significant digit first, zero-padded to 6 characters. A match whose checksum differs is not a Keysmith key.";

/// The regular expression that matches the raw keys of these prefixes and
/// environments (`{prefix}_{env}_` and 38 base62 characters: 32 random and
/// 6 of checksum), for registering with a secret scanner.
///
/// ```
/// use keysmith_core::Environment;
/// use keysmith_core::leak::token_pattern;
///
/// let pattern = token_pattern(&["sk"], &[Environment::Live, Environment::Test])?;
/// assert_eq!(pattern, r"\b(?:sk)_(?:live|test)_[0-9A-Za-z]{38}\b");
/// # Ok::<(), keysmith_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a prefix that is
/// not 1–16 characters of `[a-z0-9]`, or no prefix or environment at all.
pub fn token_pattern<S: AsRef<str>>(prefixes: &[S], environments: &[crate::Environment]) -> crate::Result<String> {
    if prefixes.is_empty() || environments.is_empty() {
        return Err(crate::Error::invalid("pattern", "needs at least one prefix and one environment"));
    }
    let mut names: Vec<&str> = Vec::new();
    for prefix in prefixes {
        crate::validate_prefix(prefix.as_ref())?;
        if !names.contains(&prefix.as_ref()) {
            names.push(prefix.as_ref());
        }
    }
    let mut envs: Vec<&str> = Vec::new();
    for env in environments {
        if !envs.contains(&env.as_str()) {
            envs.push(env.as_str());
        }
    }
    // Prefixes are [a-z0-9] and environments lowercase words: nothing to escape.
    Ok(format!(r"\b(?:{})_(?:{})_[0-9A-Za-z]{{38}}\b", names.join("|"), envs.join("|")))
}

/// A key of `prefix` and `environment` made exactly as real keys are
/// (random part, checksum), but never stored: it matches
/// [`token_pattern`] and passes the checksum, and validates nowhere. For a
/// secret scanner's registration, which asks for sample tokens to test the
/// pattern and the post-processing with.
///
/// ```
/// use keysmith_core::Environment;
/// use keysmith_core::leak::test_key;
///
/// let sample = test_key("sk", Environment::Live)?;
/// assert!(sample.expose().starts_with("sk_live_"));
/// # Ok::<(), keysmith_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a prefix that is
/// not 1–16 characters of `[a-z0-9]`; [`Error`](crate::Error) when the OS
/// random generator failed.
pub fn test_key(prefix: &str, environment: crate::Environment) -> crate::Result<crate::RawKey> {
    crate::RawKey::generate(prefix, environment)
}

/// The revocation or suspension reason recorded for a leak at `url`:
/// `leaked: <url>`, without control characters and cut to the longest
/// reason a key keeps.
pub(crate) fn reason(url: &str, max_chars: usize) -> String {
    const LEAD: &str = "leaked: ";
    let mut reason = String::from(LEAD);
    reason.extend(url.chars().filter(|c| !c.is_control()).take(max_chars.saturating_sub(LEAD.len())));
    reason.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_reason_names_the_url_without_control_characters_and_within_the_reason_limit() {
        assert_eq!(reason("https://github.com/o/r/blob/x/.env", 1024), "leaked: https://github.com/o/r/blob/x/.env");
        assert_eq!(reason("https://x/\u{0}a\nb", 1024), "leaked: https://x/ab");
        assert_eq!(reason("", 1024), "leaked:");
        let long = "u".repeat(5000);
        assert_eq!(reason(&long, 1024).chars().count(), 1024);
    }

    #[test]
    fn the_pattern_matches_generated_keys_of_its_prefixes_and_environments_only() {
        let pattern = token_pattern(&["sk", "acme2"], &[crate::Environment::Live]).unwrap();
        let regex = regex::Regex::new(&pattern).unwrap();
        for prefix in ["sk", "acme2"] {
            let raw = crate::RawKey::generate(prefix, crate::Environment::Live).unwrap();
            let text = format!("API_KEY=\"{}\"\n", raw.expose());
            assert_eq!(regex.find(&text).map(|m| m.as_str()), Some(raw.expose()));
        }
        let test_env = crate::RawKey::generate("sk", crate::Environment::Test).unwrap();
        assert!(!regex.is_match(test_env.expose()));
        let other_prefix = crate::RawKey::generate("pk", crate::Environment::Live).unwrap();
        assert!(!regex.is_match(other_prefix.expose()));
        assert!(!regex.is_match(&format!("task{}", &other_prefix.expose()[2..])), "a prefix inside a word");
        assert!(token_pattern(&["SK"], &[crate::Environment::Live]).is_err());
        assert!(token_pattern::<&str>(&[], &[crate::Environment::Live]).is_err());
    }

    #[test]
    fn an_environment_named_twice_appears_once_in_the_pattern_in_first_seen_order() {
        use crate::Environment::{Live, Test};
        let pattern = token_pattern(&["sk", "sk"], &[Live, Test, Live, Test]).unwrap();
        assert_eq!(pattern, r"\b(?:sk)_(?:live|test)_[0-9A-Za-z]{38}\b");
        let pattern = token_pattern(&["sk"], &[Test, Live, Test]).unwrap();
        assert_eq!(pattern, r"\b(?:sk)_(?:test|live)_[0-9A-Za-z]{38}\b");
    }

    #[test]
    fn a_test_key_matches_the_pattern_and_its_checksum_and_no_store_holds_it() {
        let pattern = token_pattern(&["acme"], &[crate::Environment::Test]).unwrap();
        let sample = test_key("acme", crate::Environment::Test).unwrap();
        assert!(regex::Regex::new(&pattern).unwrap().is_match(sample.expose()));
        assert!(crate::key::ParsedKey::parse(sample.expose()).is_some(), "the checksum holds");
        assert_ne!(sample.expose(), test_key("acme", crate::Environment::Test).unwrap().expose());
        assert!(test_key("ACME", crate::Environment::Test).is_err());
    }

    #[test]
    fn a_report_never_shows_its_token_in_debug() {
        let report = LeakReport { token: "sk_live_secret", source: "content", url: "https://x" };
        assert!(!format!("{report:?}").contains("secret"));
    }

    #[test]
    fn tenants_without_an_override_get_the_default_policy() {
        let policies = LeakPolicies::default().with_tenant("a", "t", LeakPolicy::Suspend);
        assert_eq!(policies.for_tenant(&Tenant::new("a", "t")), LeakPolicy::Suspend);
        assert_eq!(policies.for_tenant(&Tenant::new("a", "u")), LeakPolicy::Revoke);
    }
}
