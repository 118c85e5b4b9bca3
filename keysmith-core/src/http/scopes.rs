//! Per-route scope requirements, checked after validation.

use std::fmt;
use std::sync::Arc;

use super::ApiKey;

/// How a [`ScopeRequirement`]'s scopes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeMatch {
    /// The key must cover every scope.
    All,
    /// The key must cover at least one scope.
    Any,
}

/// Scopes a route requires, matched hierarchically (`read` covers
/// `read:users`, `*` covers everything). Adapters wrap it in their
/// `RequireScopes` layer or middleware.
///
/// An empty `all` is met by every key; an empty `any` by none.
///
/// ```
/// use keysmith_core::http::ScopeRequirement;
///
/// let writers = ScopeRequirement::any(["admin", "write:users"]);
/// assert!(writers.is_met_by(&["write".to_owned()]));
/// assert!(!writers.is_met_by(&["read".to_owned()]));
/// assert_eq!(ScopeRequirement::all(["read", "write"]).missing(&["read".to_owned()]), ["write"]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    mode: ScopeMatch,
    scopes: Arc<[String]>,
}

impl ScopeRequirement {
    /// Every one of `scopes` is required.
    pub fn all<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self { mode: ScopeMatch::All, scopes: scopes.into_iter().map(Into::into).collect() }
    }

    /// Any one of `scopes` is enough.
    pub fn any<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self { mode: ScopeMatch::Any, scopes: scopes.into_iter().map(Into::into).collect() }
    }

    /// All or any.
    #[must_use]
    pub fn mode(&self) -> ScopeMatch {
        self.mode
    }

    /// The scopes named.
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// True if holding `granted` meets the requirement.
    #[must_use]
    pub fn is_met_by<S: AsRef<str>>(&self, granted: &[S]) -> bool {
        match self.mode {
            ScopeMatch::All => self.scopes.iter().all(|s| crate::scope::any_grants(granted, s)),
            ScopeMatch::Any => self.scopes.iter().any(|s| crate::scope::any_grants(granted, s)),
        }
    }

    /// True if `key` meets the requirement.
    #[must_use]
    pub fn is_met_by_key(&self, key: &ApiKey) -> bool {
        self.is_met_by(key.scopes())
    }

    /// What to tell a client whose key holds `granted`: the required scopes
    /// it lacks (for `any`, all of them when it has none). Empty when the
    /// requirement is met.
    #[must_use]
    pub fn missing<S: AsRef<str>>(&self, granted: &[S]) -> Vec<String> {
        match self.mode {
            ScopeMatch::All => crate::scope::missing(granted, &self.scopes),
            ScopeMatch::Any if self.is_met_by(granted) => Vec::new(),
            ScopeMatch::Any => self.scopes.to_vec(),
        }
    }
}

impl fmt::Debug for ScopeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeRequirement").field("mode", &self.mode).field("scopes", &&*self.scopes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn all_needs_every_scope_hierarchically() {
        let need = ScopeRequirement::all(["read:users", "write:users"]);
        assert!(need.is_met_by(&granted(&["read", "write:users"])));
        assert!(need.is_met_by(&granted(&["*"])));
        assert!(!need.is_met_by(&granted(&["read:users"])));
        assert_eq!(need.missing(&granted(&["read:users"])), ["write:users"]);
        assert!(ScopeRequirement::all(Vec::<String>::new()).is_met_by(&granted(&[])));
    }

    #[test]
    fn any_needs_one_scope_and_reports_all_alternatives() {
        let need = ScopeRequirement::any(["admin", "write:users"]);
        assert!(need.is_met_by(&granted(&["admin:everything", "write"])));
        assert!(need.is_met_by(&granted(&["admin"])));
        assert!(!need.is_met_by(&granted(&["read:users", "write:orders"])));
        assert_eq!(need.missing(&granted(&["read:users"])), ["admin", "write:users"]);
        assert!(need.missing(&granted(&["admin"])).is_empty());
        assert!(!ScopeRequirement::any(Vec::<String>::new()).is_met_by(&granted(&["*"])));
    }

    #[test]
    fn a_requirement_tells_its_mode_and_scopes_in_order() {
        let need = ScopeRequirement::any(["admin", "write:users"]);
        assert_eq!(
            (need.mode(), need.scopes()),
            (ScopeMatch::Any, ["admin".to_owned(), "write:users".to_owned()].as_slice())
        );
        assert!(ScopeRequirement::all(Vec::<String>::new()).scopes().is_empty());
        assert_eq!(
            format!("{:?}", ScopeRequirement::all(["read"])),
            r#"ScopeRequirement { mode: All, scopes: ["read"] }"#
        );
    }

    #[tokio::test]
    async fn a_key_meets_a_requirement_with_the_scopes_its_policy_still_allows() {
        use crate::{Engine, MemoryStore, NewKey, PolicySpec, RequestContext};

        let engine = Engine::builder(MemoryStore::new()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let policy = acme.create_policy(PolicySpec::new("p").with_allowed_scopes(["read", "write"])).await.unwrap();
        let new = NewKey::new("ci").with_scopes(["read", "write"]).with_policy(policy.id);
        let raw = acme.create_key(new).await.unwrap().raw;
        let validated = ApiKey::new(engine.validate(raw.expose(), &RequestContext::new()).await.unwrap());
        let writers = ScopeRequirement::all(["write:users"]);
        assert!(writers.is_met_by_key(&validated));
        assert!(!ScopeRequirement::any(["admin"]).is_met_by_key(&validated));

        // The policy tightened after the key got `write`: the key no longer meets it.
        acme.update_policy(policy.id, PolicySpec::new("p").with_allowed_scopes(["read"])).await.unwrap();
        let narrowed = ApiKey::new(engine.validate(raw.expose(), &RequestContext::new()).await.unwrap());
        assert_eq!(narrowed.key().scopes, ["read", "write"], "the stored key keeps its scopes");
        assert!(!writers.is_met_by_key(&narrowed));
        assert!(ScopeRequirement::all(["read:users"]).is_met_by_key(&narrowed));
    }
}
