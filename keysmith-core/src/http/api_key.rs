//! The value a validated request carries through the application.

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::gate::UsageDraft;
use crate::limit::RateLimitStatus;
use crate::{Environment, Key, KeyId, Policy, Tenant, Validation};

/// The key a request was validated with. Adapters put it in the request's
/// extensions; cloning is cheap (one `Arc`).
///
/// It holds no secret: `Debug` shows the id, name, hint, tenant and scopes.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext};
/// use keysmith_core::http::ApiKey;
///
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let created = engine.tenant("app", "acme").create_key(NewKey::new("ci").with_scopes(["read"])).await?;
/// let validation = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
///
/// let key = ApiKey::new(validation);
/// assert_eq!(key.tenant().tenant_id, "acme");
/// assert!(key.has_scope("read:users"));
/// assert!(!format!("{key:?}").contains(created.raw.expose()));
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ApiKey {
    /// `None` only once [`Drop`] has taken it.
    held: Option<Arc<Held>>,
}

/// What a key shares between its clones: the validation and, for a key
/// a [`Gate`](super::Gate) admitted, the request's usage draft, kept here
/// so that the admitted request's future carries one pointer across the
/// inner service rather than the draft itself.
struct Held {
    validation: Validation,
    draft: Option<UsageDraft>,
}

thread_local! {
    /// The allocation of the last key dropped on this thread that nothing
    /// else held, for the next key made on it: a passed request then
    /// allocates nothing for its key, whichever of the request's clones
    /// (the adapter's, or the one in the request's extensions) goes last.
    static SPARE: Cell<Option<Arc<Held>>> = const { Cell::new(None) };
}

impl ApiKey {
    /// Wraps a successful validation.
    #[must_use]
    pub fn new(validation: Validation) -> Self {
        Self::holding(validation, None)
    }

    /// The key of a request a gate admitted, with its usage draft.
    pub(super) fn admitted(validation: Validation, draft: UsageDraft) -> Self {
        Self::holding(validation, Some(draft))
    }

    /// The key, in the thread's spare allocation if there is one (written
    /// field by field: no whole `Held` is built and then copied in).
    fn holding(validation: Validation, draft: Option<UsageDraft>) -> Self {
        let held = match SPARE.take() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(slot) => {
                    slot.validation = validation;
                    slot.draft = draft;
                    spare
                }
                None => Arc::new(Held { validation, draft }),
            },
            None => Arc::new(Held { validation, draft }),
        };
        Self { held: Some(held) }
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.validation().key.id
    }

    /// The key as stored (no secret in it).
    #[must_use]
    pub fn key(&self) -> &Key {
        &self.validation().key
    }

    /// The key's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.validation().key.name
    }

    /// The owner of the key.
    #[must_use]
    pub fn tenant(&self) -> &Tenant {
        &self.validation().key.tenant
    }

    /// The environment written into the key.
    #[must_use]
    pub fn environment(&self) -> Environment {
        self.validation().key.environment
    }

    /// The scopes the key holds in effect (its own, within its policy's).
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        self.validation().scopes()
    }

    /// True if the key's scopes cover `scope` (hierarchically: `read`
    /// covers `read:users`).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.validation().has_scope(scope)
    }

    /// The key's policy, if it has one.
    #[must_use]
    pub fn policy(&self) -> Option<&Policy> {
        self.validation().policy.as_deref()
    }

    /// The state of the policy's limit closest to refusing after this
    /// request (fewest requests left), when the policy limits the rate;
    /// [`Validation::rate_limit_states`](crate::Validation::rate_limit_states)
    /// has every limit.
    #[must_use]
    pub fn rate_limit(&self) -> Option<&RateLimitStatus> {
        self.validation().closest_rate_limit().map(|(_, status)| status)
    }

    /// The key's application data.
    #[must_use]
    pub fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.validation().key.metadata
    }

    /// The client address the request's key was checked against: the
    /// connection's peer, or what a trusted proxy forwarded (see
    /// [`TrustedProxies`](super::TrustedProxies)). `None` when it was
    /// unknown, and for a key made with [`ApiKey::new`] rather than
    /// admitted by an adapter.
    #[must_use]
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.draft().and_then(UsageDraft::client_ip)
    }

    /// The whole validation.
    #[must_use]
    pub fn validation(&self) -> &Validation {
        &self.held().validation
    }

    /// The usage draft of the request a gate admitted with this key
    /// (`None` for a key made with [`ApiKey::new`]).
    pub(super) fn draft(&self) -> Option<&UsageDraft> {
        self.held().draft.as_ref()
    }

    fn held(&self) -> &Held {
        self.held.as_deref().expect("a key's validation is taken only when it is dropped")
    }
}

impl Drop for ApiKey {
    /// The last clone leaves its allocation to the next [`ApiKey::new`] on
    /// this thread.
    fn drop(&mut self) {
        if let Some(mut held) = self.held.take()
            && Arc::get_mut(&mut held).is_some()
        {
            // Not at all once the thread's locals are being destroyed.
            let _ = SPARE.try_with(|spare| spare.set(Some(held)));
        }
    }
}

impl From<Validation> for ApiKey {
    fn from(validation: Validation) -> Self {
        Self::new(validation)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.validation().key;
        f.debug_struct("ApiKey")
            .field("id", &key.id)
            .field("name", &key.name)
            .field("hint", &key.hint)
            .field("tenant", &key.tenant)
            .field("scopes", &self.scopes())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Engine, MemoryStore, NewKey, PolicySpec, RequestContext};

    async fn two_validations() -> (Validation, Validation) {
        let engine = Engine::builder(MemoryStore::new()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let mut validations = Vec::new();
        for name in ["first", "second"] {
            let created = acme.create_key(NewKey::new(name)).await.unwrap();
            validations.push(engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap());
        }
        let second = validations.pop().unwrap();
        (validations.pop().unwrap(), second)
    }

    #[tokio::test]
    async fn a_dropped_key_lends_its_allocation_to_the_next_one_and_a_held_one_never_does() {
        let (first, second) = two_validations().await;
        let (third, _) = two_validations().await;

        let key = ApiKey::new(first);
        let address = std::ptr::from_ref(key.validation());
        drop(key);
        let reused = ApiKey::new(second);
        assert_eq!(std::ptr::from_ref(reused.validation()), address);
        assert_eq!(reused.name(), "second");

        let held = reused.clone();
        drop(reused);
        let fresh = ApiKey::new(third);
        assert_ne!(std::ptr::from_ref(fresh.validation()), address);
        assert_eq!((held.name(), fresh.name()), ("second", "first"));
    }

    #[tokio::test]
    async fn the_last_clone_dropped_keeps_the_key_for_the_next_one() {
        let (first, second) = two_validations().await;
        SPARE.take();
        let key = ApiKey::new(first);
        let held = key.clone();
        drop(key);
        assert!(SPARE.take().is_none(), "a key still held is not lent");
        drop(held);
        assert!(SPARE.take().is_some(), "the extension's clone, dropped after the request finished, lends it");
        drop(ApiKey::new(second));
        let spare = SPARE.take().map(|held| held.validation.key.name.clone());
        assert_eq!(spare.as_deref(), Some("second"), "a finished key is kept for the next one");
    }

    #[tokio::test]
    async fn a_validated_key_answers_for_what_it_was_validated_as() {
        let engine = Engine::builder(MemoryStore::new()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let spec = PolicySpec::new("p").with_rate_limit(5, Duration::from_secs(60));
        let policy = acme.create_policy(spec).await.unwrap();
        let mut metadata = serde_json::Map::new();
        metadata.insert("plan".to_owned(), "pro".into());
        let new = NewKey::new("ci")
            .with_scopes(["read"])
            .with_policy(policy.id)
            .with_environment(Environment::Test)
            .with_metadata(metadata.clone());
        let created = acme.create_key(new).await.unwrap();
        let validation = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
        let key = ApiKey::from(validation);

        assert_eq!(key.id(), created.key.id);
        assert_eq!((key.key().id, key.key().hint.as_str()), (created.key.id, created.key.hint.as_str()));
        assert_eq!((key.name(), key.tenant()), ("ci", &created.key.tenant));
        assert_eq!(key.tenant().tenant_id, "acme");
        assert_eq!(key.environment(), Environment::Test);
        assert_eq!(key.scopes(), ["read"]);
        assert!(key.has_scope("read:users"));
        assert!(!key.has_scope("write"));
        assert_eq!(key.policy().map(|p| p.id), Some(policy.id));
        assert_eq!(key.rate_limit().map(|status| (status.limit, status.remaining)), Some((5, 4)));
        assert_eq!(*key.metadata(), metadata);
        assert_eq!(key.validation().key.id, created.key.id);
        let debug = format!("{key:?}");
        assert!(
            debug.starts_with("ApiKey {") && debug.contains(r#"name: "ci""#) && debug.contains(r#"scopes: ["read"]"#),
            "{debug}"
        );
        assert!(debug.contains(&created.key.hint) && !debug.contains(created.raw.expose()), "{debug}");

        let plain = acme.create_key(NewKey::new("plain")).await.unwrap();
        let plain = ApiKey::new(engine.validate(plain.raw.expose(), &RequestContext::new()).await.unwrap());
        assert_eq!((plain.policy(), plain.rate_limit()), (None, None));
    }
}
