//! Keys in an application's own, older format, accepted after an import.

use crate::{Error, MAX_RAW_KEY_LEN, Result, validate_id};

/// The shortest legacy key looked up: anything shorter is too weak to be a
/// key and is refused as malformed without a store call.
pub const MIN_LEGACY_KEY_LEN: usize = 16;

/// The most applications (with their rules) one engine accepts legacy keys for.
const MAX_RULES: usize = 64;

/// The legacy key formats an engine accepts, per application.
///
/// A key that is not in Keysmith's format (`{prefix}_{env}_{random}{check}`)
/// is normally [`Malformed`](crate::Refusal::Malformed) without any I/O. For
/// an application that imported its own keys
/// ([`TenantEngine::import_keys`](crate::TenantEngine::import_keys)), the
/// engine can accept them as they are: a presented key that starts with one of
/// the application's legacy prefixes (or any key, for an application that
/// accepts any) is looked up by the hash of its raw bytes, without a
/// checksum; every later step (state, expiry, policy, scopes, limits, usage)
/// applies as to any key. A key found under another application than one
/// accepting it is `Malformed` too, so that a key of an application that
/// did not opt in never passes as legacy.
///
/// Whatever the rules, a legacy key is looked up only when it is
/// [`MIN_LEGACY_KEY_LEN`] to [`MAX_RAW_KEY_LEN`] bytes of printable ASCII
/// (no space, no control character): other input costs no store call.
///
/// ```
/// use keysmith_core::{Engine, LegacyKeys, MemoryStore};
///
/// let legacy = LegacyKeys::new().accept_prefixes("billing", ["mk_"]);
/// let engine = Engine::builder(MemoryStore::new()).with_legacy_keys(legacy).build()?;
/// # Ok::<(), keysmith_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct LegacyKeys {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    app_id: String,
    /// `None`: any key.
    prefixes: Option<Vec<String>>,
}

/// Which of an engine's legacy rules a presented key matched: one bit per
/// rule, so the secret itself need not be kept until the lookup answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LegacyMatch(u64);

impl LegacyKeys {
    /// No legacy format accepted (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts, for `app_id`'s keys, legacy keys starting with one of
    /// `prefixes` (compared exactly: `"mk_"` accepts `mk_3f9a…`). Adds to
    /// what the application already accepts.
    pub fn accept_prefixes<S: Into<String>>(
        mut self, app_id: impl Into<String>, prefixes: impl IntoIterator<Item = S>,
    ) -> Self {
        let app_id = app_id.into();
        let prefixes: Vec<String> = prefixes.into_iter().map(Into::into).collect();
        match self.rules.iter_mut().find(|rule| rule.app_id == app_id) {
            Some(Rule { prefixes: Some(known), .. }) => known.extend(prefixes),
            Some(Rule { prefixes: None, .. }) => {}
            None => self.rules.push(Rule { app_id, prefixes: Some(prefixes) }),
        }
        self
    }

    /// Accepts, for `app_id`'s keys, a legacy key of any shape.
    pub fn accept_any(mut self, app_id: impl Into<String>) -> Self {
        let app_id = app_id.into();
        match self.rules.iter_mut().find(|rule| rule.app_id == app_id) {
            Some(rule) => rule.prefixes = None,
            None => self.rules.push(Rule { app_id, prefixes: None }),
        }
        self
    }

    /// Reads a comma-separated list of prefixes (what the demos read from
    /// `KEYSMITH_LEGACY_PREFIXES`) for `app_id`: `"mk"` accepts keys that start
    /// `mk_`, `"*"` accepts any; blanks between commas are ignored.
    pub fn from_list(app_id: impl Into<String>, list: &str) -> Self {
        let app_id = app_id.into();
        let entries: Vec<&str> = list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).collect();
        if entries.contains(&"*") {
            return Self::new().accept_any(app_id);
        }
        if entries.is_empty() {
            return Self::new();
        }
        Self::new().accept_prefixes(app_id, entries.iter().map(|prefix| format!("{prefix}_")))
    }

    /// True when no legacy key is accepted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Checks the rules: app ids are identities, prefixes are 1 to 64 bytes
    /// of printable ASCII, at most 64 applications.
    pub(crate) fn check(&self) -> Result<()> {
        if self.rules.len() > MAX_RULES {
            return Err(Error::invalid("legacy_keys", format!("at most {MAX_RULES} applications")));
        }
        for rule in &self.rules {
            validate_id("legacy_keys app_id", &rule.app_id)?;
            for prefix in rule.prefixes.iter().flatten() {
                if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Error::invalid(
                        "legacy_keys prefix",
                        "must be 1 to 64 printable ASCII characters without spaces",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Which rules accept `raw` (not in Keysmith's format); none when `raw`
    /// cannot be a key at all.
    pub(crate) fn matches(&self, raw: &str) -> LegacyMatch {
        if self.rules.is_empty()
            || !(MIN_LEGACY_KEY_LEN..=MAX_RAW_KEY_LEN).contains(&raw.len())
            || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return LegacyMatch(0);
        }
        let mut bits = 0u64;
        for (i, rule) in self.rules.iter().enumerate() {
            let accepted = match &rule.prefixes {
                None => true,
                Some(prefixes) => {
                    prefixes.iter().any(|prefix| raw.len() > prefix.len() && raw.starts_with(prefix.as_str()))
                }
            };
            if accepted {
                bits |= 1 << i;
            }
        }
        LegacyMatch(bits)
    }

    /// True when `matched` includes a rule of `app_id`.
    pub(crate) fn accepts(&self, matched: LegacyMatch, app_id: &str) -> bool {
        self.rules.iter().enumerate().any(|(i, rule)| matched.0 & (1 << i) != 0 && rule.app_id == app_id)
    }
}

impl LegacyMatch {
    /// True when some rule accepted the key.
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_per_application() {
        let legacy = LegacyKeys::new().accept_prefixes("billing", ["mk_"]).accept_any("search");
        let matched = legacy.matches("mk_3f9a0c1d2e3f4a5b");
        assert!(legacy.accepts(matched, "billing"));
        assert!(legacy.accepts(matched, "search"));
        let other = legacy.matches("pk_3f9a0c1d2e3f4a5b");
        assert!(!legacy.accepts(other, "billing"));
        assert!(legacy.accepts(other, "search"));
    }

    #[test]
    fn garbage_matches_nothing_whatever_the_rules() {
        let legacy = LegacyKeys::new().accept_any("billing");
        for garbage in [
            "short",
            &"a".repeat(MAX_RAW_KEY_LEN + 1),
            "mk_with space_0123456",
            "mk_tab\t0123456789abc",
            "mk_é0123456789abcdef",
        ] {
            assert!(!legacy.matches(garbage).any(), "{garbage:?}");
        }
        assert!(legacy.matches(&"a".repeat(MAX_RAW_KEY_LEN)).any());
        assert!(!LegacyKeys::new().matches("mk_3f9a0c1d2e3f4a5b").any());
    }

    #[test]
    fn a_list_reads_prefixes_or_any() {
        let legacy = LegacyKeys::from_list("app", " mk, pk ,,");
        assert_eq!(legacy, LegacyKeys::new().accept_prefixes("app", ["mk_", "pk_"]));
        assert_eq!(LegacyKeys::from_list("app", "mk,*"), LegacyKeys::new().accept_any("app"));
        assert!(LegacyKeys::from_list("app", " , ").is_empty());
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(LegacyKeys::new().accept_prefixes("app", ["m k"]).check().is_err());
        assert!(LegacyKeys::new().accept_prefixes("app ", ["mk_"]).check().is_err());
        assert!(LegacyKeys::new().accept_prefixes("app", ["mk_"]).check().is_ok());
        let many = (0..=MAX_RULES).fold(LegacyKeys::new(), |legacy, i| legacy.accept_any(format!("app{i}")));
        assert!(many.check().is_err());
    }

    #[test]
    fn rules_are_bounded_at_their_limits() {
        let apps = |n: usize| (0..n).fold(LegacyKeys::new(), |legacy, i| legacy.accept_any(format!("app{i}")));
        assert!(apps(MAX_RULES).check().is_ok(), "64 applications are accepted");
        let prefix = |p: String| LegacyKeys::new().accept_prefixes("app", [p]).check();
        assert!(prefix("m".to_owned()).is_ok());
        assert!(prefix("m".repeat(64)).is_ok());
        assert!(prefix("m".repeat(65)).is_err());
        assert!(prefix(String::new()).is_err(), "an empty prefix would accept any key");
        assert!(prefix("mk\u{7f}".to_owned()).is_err());
        assert!(!LegacyKeys::new().accept_any("app").is_empty());
        assert!(LegacyKeys::new().is_empty());
    }

    #[test]
    fn a_key_must_be_longer_than_its_prefix_and_long_enough() {
        let legacy = LegacyKeys::new().accept_prefixes("app", ["mk_0123456789abcd"]);
        assert!(!legacy.matches("mk_0123456789abcd").any(), "the prefix alone is no key");
        assert!(legacy.matches("mk_0123456789abcde").any());
        assert!(!legacy.matches("mk_0123456789abc").any(), "shorter than its prefix");
        let any = LegacyKeys::new().accept_any("app");
        assert!(any.matches(&"a".repeat(MIN_LEGACY_KEY_LEN)).any());
        assert!(!any.matches(&"a".repeat(MIN_LEGACY_KEY_LEN - 1)).any());
        assert!(!legacy.matches("pk_0123456789abcdef").any(), "another prefix");
    }

    #[test]
    fn each_rule_answers_for_its_own_application_only() {
        // Rule 0 accepts `mk_` and `zk_`, rule 1 `pk_`, rule 2 any key.
        let legacy = LegacyKeys::new()
            .accept_prefixes("first", ["mk_"])
            .accept_prefixes("second", ["pk_"])
            .accept_any("third")
            .accept_prefixes("first", ["zk_"]);
        let apps = |raw: &str| {
            let matched = legacy.matches(raw);
            ["first", "second", "third", "fourth"].map(|app| legacy.accepts(matched, app))
        };
        assert_eq!(apps("mk_0123456789abcdef"), [true, false, true, false]);
        assert_eq!(apps("zk_0123456789abcdef"), [true, false, true, false], "prefixes add up per application");
        assert_eq!(apps("pk_0123456789abcdef"), [false, true, true, false]);
        assert_eq!(apps("xx_0123456789abcdef"), [false, false, true, false]);
        assert!(!legacy.accepts(LegacyMatch::default(), "third"), "no match accepts nothing");
        // Any key stays any key, whatever prefixes are added before or after.
        let widened = LegacyKeys::new().accept_any("app").accept_prefixes("app", ["mk_"]);
        assert_eq!(widened, LegacyKeys::new().accept_any("app"));
        let narrowed = LegacyKeys::new().accept_prefixes("app", ["mk_"]).accept_any("app");
        assert_eq!(narrowed, LegacyKeys::new().accept_any("app"));
        assert!(narrowed.accepts(narrowed.matches("xx_0123456789abcdef"), "app"));
    }
}
