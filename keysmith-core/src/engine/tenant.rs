//! Management operations, scoped to one tenant.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Engine;
use crate::Change;
use crate::hooks::Event;
use crate::store::{KeyFilter, RotationWrite, StoredKey, Transition};
use crate::{
    Credits, Environment, Error, Key, KeyId, KeyState, LimitBy, PolicyId, RawKey, Result, RotationId, RotationReason,
    RotationRecord, Tenant, input, scope, validate_id,
};

/// The longest key name, in characters.
pub(crate) const MAX_NAME_LEN: usize = 256;
/// The longest revocation reason, in characters.
pub(crate) const MAX_REASON_LEN: usize = 1024;

/// The engine seen by one tenant: every operation carries the tenant, so
/// another tenant's entities are [`Error::NotFound`].
///
/// Every operation first checks the tenant's ids ([`Tenant::validate`]): a
/// handle made for ids no tenant can have (`"acme "`, an empty app id…)
/// answers [`Error::InvalidInput`] to everything, before any store call.
#[derive(Debug, Clone)]
pub struct TenantEngine {
    pub(super) engine: Engine,
    pub(super) tenant: Tenant,
}

/// What a new key should be. Only the name is required.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct NewKey {
    name: String,
    scopes: Vec<String>,
    policy_id: Option<PolicyId>,
    expires_at: Option<DateTime<Utc>>,
    environment: Option<Environment>,
    prefix: Option<String>,
    owner_id: Option<String>,
    credits: Option<Credits>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl NewKey {
    /// A key named `name`, with the engine's prefix and environment, no
    /// scopes, no policy and no expiry.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// Grants these scopes.
    pub fn with_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Holds the key to this policy.
    pub fn with_policy(mut self, policy_id: PolicyId) -> Self {
        self.policy_id = Some(policy_id);
        self
    }

    /// Expires the key at `at`.
    pub fn with_expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Writes this environment into the key instead of the engine's default.
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Uses this prefix instead of the engine's default.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Gives the key to `owner_id`: the application's id for the user or
    /// customer it is for: an identity ([`validate_id`](crate::validate_id):
    /// 1 to 128 bytes, no control character, no surrounding whitespace),
    /// compared exactly.
    pub fn with_owner(mut self, owner_id: impl Into<String>) -> Self {
        self.owner_id = Some(owner_id.into());
        self
    }

    /// Gives the key prepaid uses: each request that passes spends its cost
    /// (1 by default), and at zero the key is refused as
    /// [`CreditsExhausted`](crate::Refusal::CreditsExhausted). The key's
    /// replacements in rotations share them.
    pub fn with_credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Attaches application data (a JSON object).
    pub fn with_metadata(mut self, metadata: serde_json::Map<String, serde_json::Value>) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A key just created: the stored key and its secret, shown this once.
#[derive(Debug)]
pub struct CreatedKey {
    /// The key as stored.
    pub key: Key,
    /// The secret. It is not stored anywhere: hand it to the client now.
    pub raw: RawKey,
}

/// The result of a rotation.
#[derive(Debug)]
pub struct RotatedKey {
    /// The replacement key.
    pub key: Key,
    /// The replacement's secret, shown this once.
    pub raw: RawKey,
    /// The old key, now `rotated`.
    pub old: Key,
    /// What was recorded.
    pub record: RotationRecord,
}

impl TenantEngine {
    pub(super) fn new(engine: Engine, tenant: Tenant) -> Self {
        Self { engine, tenant }
    }

    /// The tenant this handle acts for.
    #[must_use]
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The engine behind the handle.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The tenant, once its ids are known to be identities: every operation
    /// starts here, so nothing reaches a store for a tenant that cannot exist.
    pub(super) fn checked(&self) -> Result<&Tenant> {
        self.tenant.validate()?;
        Ok(&self.tenant)
    }

    /// Creates a key and returns its secret once.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's or the owner's id (not an
    /// [identity](crate::validate_id)), an empty name, a control character
    /// in the name or the metadata, a bad prefix or scope, or an expiry in
    /// the past; `NotFound` for a policy that is not the tenant's;
    /// `InvalidInput` for a scope outside the policy's `allowed_scopes`;
    /// [`OwnerLimitedCredits`](Error::OwnerLimitedCredits) for credits given
    /// to a key of an owner under a policy that limits by owner.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey> {
        let tenant = self.checked()?;
        let inner = &self.engine.inner;
        let name = validate_name(&new.name)?;
        input::check_metadata("metadata", &new.metadata)?;
        if let Some(owner_id) = &new.owner_id {
            validate_id("owner_id", owner_id)?;
        }
        let scopes = self.checked_scopes(&new.scopes, new.policy_id).await?;
        let now = inner.clock.now();
        if let Some(at) = new.expires_at {
            if at <= now {
                return Err(Error::invalid("expires_at", "must be in the future"));
            }
            input::check_time("expires_at", at)?;
        }
        let credits = new.credits.map(|credits| credits.checked(now)).transpose()?;
        if credits.is_some() {
            self.check_lineage_credits(new.owner_id.as_deref(), new.policy_id).await?;
        }
        let prefix = new.prefix.unwrap_or_else(|| inner.prefix.clone());
        let environment = new.environment.unwrap_or(inner.environment);
        let raw = RawKey::generate(&prefix, environment)?;
        let id = KeyId::new();
        let key = Key {
            id,
            lineage_id: id,
            name,
            hint: raw.hint(),
            prefix,
            environment,
            state: KeyState::Active,
            scopes,
            tenant: tenant.clone(),
            owner_id: new.owner_id,
            credits,
            policy_id: new.policy_id,
            expires_at: new.expires_at,
            grace_expires_at: None,
            revoked_reason: None,
            last_used_at: None,
            created_at: now,
            updated_at: now,
            metadata: new.metadata,
        };
        let stored = StoredKey { key: Arc::new(key), hash: inner.hasher.hash(raw.expose()) };
        inner.store.insert_key(&stored).await?;
        // A lookup of this hash may have been cached as unknown here.
        self.engine
            .forget(|| Change::Key { tenant: tenant.clone(), key_id: stored.key.id, hash: Some(stored.hash) })
            .await;
        let key = Key::clone(&stored.key);
        self.engine.emit(|| Event::KeyCreated { key: stored.key }).await;
        Ok(CreatedKey { key, raw })
    }

    /// One of the tenant's keys.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such key.
    pub async fn get_key(&self, id: KeyId) -> Result<Key> {
        self.checked()?;
        Ok(self.current(Key::clone(&self.stored_key(id).await?.key)))
    }

    /// The key with its credits as they stand now (a refill due but not yet
    /// made by a request counts as made).
    fn current(&self, mut key: Key) -> Key {
        let now = self.engine.inner.clock.now();
        key.credits = key.credits.map(|credits| credits.as_of(now));
        key
    }

    /// Gives the key's lineage these credits, replacing any (`None` removes
    /// them: the key is no longer limited by credits). A refill starts with
    /// the current period.
    ///
    /// Every key of the lineage (the old key of a rotation in its grace
    /// too) spends them from the next request on this engine, and on other
    /// engines with a [change feed](crate::feed) as soon as the change
    /// arrives, else within their cache's positive TTL.
    ///
    /// # Errors
    /// `InvalidInput` for values over [`Credits::MAX`], a zero refill or the
    /// tenant's ids; [`OwnerLimitedCredits`](Error::OwnerLimitedCredits) for
    /// a key whose policy limits by owner and that has an owner (it spends
    /// its owner's credits: [`set_owner_credits`](Self::set_owner_credits));
    /// `NotFound`.
    pub async fn set_credits(&self, id: KeyId, credits: Option<Credits>) -> Result<Key> {
        let tenant = self.checked()?;
        let now = self.engine.inner.clock.now();
        let credits = credits.map(|credits| credits.checked(now)).transpose()?;
        if credits.is_some() {
            let stored = self.stored_key(id).await?;
            self.check_lineage_credits(stored.key.owner_id.as_deref(), stored.key.policy_id).await?;
        }
        let key = self.engine.inner.store.set_credits(tenant, id, credits.as_ref()).await?;
        self.engine.committed(|| Change::lineage(&key)).await;
        Ok(self.current(key))
    }

    /// Tops the key's lineage's credits up by `amount` (after the refill due
    /// now, if one is), seen by every key of the lineage as
    /// [`set_credits`](Self::set_credits) is.
    ///
    /// # Errors
    /// `InvalidInput` if the key has no credits, for a zero amount, a sum
    /// over [`Credits::MAX`] or the tenant's ids;
    /// [`OwnerLimitedCredits`](Error::OwnerLimitedCredits) for a key whose
    /// policy limits by owner and that has an owner (one that still holds
    /// credits of its own from before its policy did); `NotFound`.
    pub async fn add_credits(&self, id: KeyId, amount: u64) -> Result<Key> {
        let tenant = self.checked()?;
        if amount == 0 || amount > Credits::MAX {
            return Err(Error::invalid("amount", format!("must be 1 to {}", Credits::MAX)));
        }
        let stored = self.stored_key(id).await?;
        self.check_lineage_credits(stored.key.owner_id.as_deref(), stored.key.policy_id).await?;
        let now = self.engine.inner.clock.now();
        let key = self.engine.inner.store.add_credits(tenant, id, amount, now).await?;
        self.engine.committed(|| Change::lineage(&key)).await;
        Ok(self.current(key))
    }

    /// Refuses credits of its own to a key of an owner under a policy with
    /// `limit_by: owner`: such a key spends its owner's.
    async fn check_lineage_credits(&self, owner_id: Option<&str>, policy_id: Option<PolicyId>) -> Result<()> {
        let (Some(owner_id), Some(policy_id)) = (owner_id, policy_id) else {
            return Ok(());
        };
        let policy = self.engine.inner.store.get_policy(&self.tenant, policy_id).await?;
        if policy.is_some_and(|policy| policy.limit_by == LimitBy::Owner) {
            return Err(Error::OwnerLimitedCredits { policy_id, owner_id: owner_id.to_owned() });
        }
        Ok(())
    }

    /// The credits shared by the keys of `owner_id` under a policy with
    /// `limit_by: owner`, as they stand now (a refill due but not yet made
    /// by a request counts as made); `None` when the owner has none (its
    /// keys are not limited by credits).
    ///
    /// # Errors
    /// `InvalidInput` for an owner id that no key could have, or the
    /// tenant's ids; a store failure.
    pub async fn owner_credits(&self, owner_id: &str) -> Result<Option<Credits>> {
        let tenant = self.checked()?;
        validate_id("owner_id", owner_id)?;
        let credits = self.engine.inner.store.owner_credits(tenant, owner_id).await?;
        let now = self.engine.inner.clock.now();
        Ok(credits.map(|credits| credits.as_of(now)))
    }

    /// Gives the owner `owner_id` credits that all its keys spend under a
    /// policy with `limit_by: owner`, replacing any (`None` removes them:
    /// its keys are no longer limited by credits). A refill starts with the
    /// current period. The owner need not have a key yet.
    ///
    /// The next request of the owner's keys on this engine spends them; on
    /// other engines with a [change feed](crate::feed), as soon as the
    /// change arrives (a cache that remembered the owner as having no
    /// credits forgets it), else within their cache's positive TTL.
    ///
    /// # Errors
    /// `InvalidInput` for an owner id that no key could have, the tenant's
    /// ids, values over [`Credits::MAX`] or a zero refill; a store failure.
    pub async fn set_owner_credits(&self, owner_id: &str, credits: Option<Credits>) -> Result<Option<Credits>> {
        let tenant = self.checked()?;
        validate_id("owner_id", owner_id)?;
        let now = self.engine.inner.clock.now();
        let credits = credits.map(|credits| credits.checked(now)).transpose()?;
        let written = self.engine.inner.store.set_owner_credits(tenant, owner_id, credits.as_ref()).await;
        self.owner_credits_written(tenant, owner_id, written.is_ok()).await;
        written.map(|()| credits)
    }

    /// Tops the owner's credits up by `amount` (after the refill due now,
    /// if one is).
    ///
    /// # Errors
    /// `InvalidInput` for an owner id that no key could have, the tenant's
    /// ids, if the owner has no credits, for a zero amount or a sum over
    /// [`Credits::MAX`]; a store failure.
    pub async fn add_owner_credits(&self, owner_id: &str, amount: u64) -> Result<Credits> {
        let tenant = self.checked()?;
        validate_id("owner_id", owner_id)?;
        if amount == 0 || amount > Credits::MAX {
            return Err(Error::invalid("amount", format!("must be 1 to {}", Credits::MAX)));
        }
        let now = self.engine.inner.clock.now();
        let written = self.engine.inner.store.add_owner_credits(tenant, owner_id, amount, now).await;
        self.owner_credits_written(tenant, owner_id, written.is_ok()).await;
        written
    }

    /// After a write of the owner's credits: committed, it goes out as any
    /// change; failed, this engine still forgets that the owner had none
    /// (the write may have committed all the same).
    async fn owner_credits_written(&self, tenant: &Tenant, owner_id: &str, committed: bool) {
        let change = || Change::owner(tenant, owner_id);
        if committed { self.engine.committed(change).await } else { self.engine.forget(change).await }
    }

    async fn stored_key(&self, id: KeyId) -> Result<StoredKey> {
        self.engine.inner.store.get_key(&self.tenant, id).await?.ok_or_else(|| Error::not_found("key", id))
    }

    /// The tenant's keys matching `filter`, oldest first.
    ///
    /// # Errors
    /// `InvalidInput` for an owner id that no key could have, or the
    /// tenant's ids; a store failure.
    pub async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<Key>> {
        let tenant = self.checked()?;
        if let Some(owner_id) = &filter.owner_id {
            validate_id("owner_id", owner_id)?;
        }
        let keys = self.engine.inner.store.list_keys(tenant, filter).await?;
        Ok(keys.into_iter().map(|key| self.current(key)).collect())
    }

    /// Replaces an active key with a new one (same name, scopes, policy,
    /// metadata and `expires_at`, same lineage). The old key validates until
    /// `now + grace`; with no grace given, a rotation for
    /// [`Compromised`](RotationReason::Compromised) stops the old key at
    /// once, any other takes the policy's `rotation_grace` or the engine's
    /// default. A zero grace stops the old key at once.
    ///
    /// Both secrets share the lineage's rate limit and quota: a rotation
    /// never refills them.
    ///
    /// # Errors
    /// `NotFound`, or `InvalidTransition` if the key is not active (a key
    /// past its `expires_at` or its policy's `max_key_age` is moved to
    /// `expired` first, as a validation would; also for
    /// every loser of concurrent rotations of one key); `InvalidInput` for a
    /// grace longer than [`PolicySpec::MAX_ROTATION_GRACE`](crate::PolicySpec::MAX_ROTATION_GRACE)
    /// or for the tenant's ids.
    pub async fn rotate_key(&self, id: KeyId, reason: RotationReason, grace: Option<Duration>) -> Result<RotatedKey> {
        let tenant = self.checked()?;
        let inner = &self.engine.inner;
        let StoredKey { key: old, hash: old_hash } = self.stored_key(id).await?;
        if old.state != KeyState::Active {
            return Err(Error::InvalidTransition { from: old.state, to: KeyState::Rotated });
        }
        // A key past its expiry or its policy's maximum age is expired, if
        // nothing has said so yet: rotating it would renew a dead credential.
        self.refuse_if_expired(&old, KeyState::Rotated).await?;
        let grace = match (grace, old.policy_id) {
            (Some(grace), _) => grace,
            (None, _) if reason == RotationReason::Compromised => Duration::ZERO,
            (None, Some(policy_id)) => inner
                .store
                .get_policy(tenant, policy_id)
                .await?
                .and_then(|policy| policy.rotation_grace)
                .unwrap_or(inner.rotation_grace),
            (None, None) => inner.rotation_grace,
        };
        let max_grace = crate::PolicySpec::MAX_ROTATION_GRACE;
        if grace > max_grace {
            return Err(Error::invalid("grace", format!("must be at most {} seconds", max_grace.as_secs())));
        }
        let grace_ttl = chrono::Duration::from_std(grace).map_err(|_| Error::invalid("grace", "is too long"))?;
        let now = inner.clock.now();
        let grace_expires_at =
            now.checked_add_signed(grace_ttl).ok_or_else(|| Error::invalid("grace", "is too long"))?;

        let raw = RawKey::generate(&old.prefix, old.environment)?;
        let new_hash = inner.hasher.hash(raw.expose());
        let new_key = Key {
            id: KeyId::new(),
            hint: raw.hint(),
            state: KeyState::Active,
            // Same name, scopes, policy, metadata, expiry and lineage.
            grace_expires_at: None,
            revoked_reason: None,
            last_used_at: None,
            created_at: now,
            updated_at: now,
            ..Key::clone(&old)
        };
        let record = RotationRecord {
            id: RotationId::new(),
            key_id: id,
            new_key_id: new_key.id,
            tenant: tenant.clone(),
            old_hash,
            new_hash,
            reason,
            grace_ttl: grace,
            grace_expires_at,
            created_at: now,
        };
        let write = RotationWrite { new_key: StoredKey { key: Arc::new(new_key), hash: new_hash }, record };
        let old = match inner.store.rotate_key(tenant, &write).await {
            Ok(old) => old,
            Err(error) => {
                if matches!(error, Error::InvalidTransition { .. }) {
                    // Changed elsewhere: what this engine cached of it is stale.
                    self.engine
                        .forget(|| Change::Key { tenant: tenant.clone(), key_id: id, hash: Some(old_hash) })
                        .await;
                }
                return Err(error);
            }
        };
        let RotationWrite { new_key, record } = write;
        let old = Arc::new(old);
        self.engine.committed(|| Change::rotated(&record)).await;
        self.engine.emit(|| Event::KeyRotated { key: Arc::clone(&old), record: record.clone() }).await;
        Ok(RotatedKey { key: Key::clone(&new_key.key), raw, old: Arc::unwrap_or_clone(old), record })
    }

    /// Revokes a key for good (from `active`, `suspended` or `rotated`).
    ///
    /// # Errors
    /// `InvalidInput` for a reason over 1024 characters or with a control
    /// character, or for the tenant's ids; `NotFound`, or
    /// `InvalidTransition` from `expired` or `revoked`.
    pub async fn revoke_key(&self, id: KeyId, reason: impl Into<String>) -> Result<Key> {
        self.checked()?;
        let reason = reason.into();
        input::check_text("reason", &reason)?;
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(Error::invalid("reason", "must be at most 1024 characters"));
        }
        let at = self.engine.inner.clock.now();
        self.transition(id, Transition::to(KeyState::Revoked, at).with_reason(reason)).await
    }

    /// Suspends an active key until it is reactivated.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound`, or
    /// `InvalidTransition` unless the key is active (a key past its
    /// `expires_at` or its policy's `max_key_age` is moved to `expired`
    /// first, as a validation would).
    pub async fn suspend_key(&self, id: KeyId) -> Result<Key> {
        self.checked()?;
        let StoredKey { key, .. } = self.stored_key(id).await?;
        if key.state == KeyState::Active {
            self.refuse_if_expired(&key, KeyState::Suspended).await?;
        }
        let at = self.engine.inner.clock.now();
        self.transition(id, Transition::to(KeyState::Suspended, at)).await
    }

    /// Reactivates a suspended key.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound`, or
    /// `InvalidTransition` unless the key is suspended.
    pub async fn reactivate_key(&self, id: KeyId) -> Result<Key> {
        self.checked()?;
        let at = self.engine.inner.clock.now();
        self.transition(id, Transition::to(KeyState::Active, at)).await
    }

    /// The rotations the key took part in, as old or new key, oldest first.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such key.
    pub async fn list_rotations(&self, id: KeyId) -> Result<Vec<RotationRecord>> {
        let tenant = self.checked()?;
        self.stored_key(id).await?;
        self.engine.inner.store.list_rotations(tenant, id).await
    }

    /// For an active `key` past its expiry or its policy's maximum age:
    /// moves it to `expired`, as a validation would have, and refuses the
    /// move `to` from there (`InvalidTransition`).
    async fn refuse_if_expired(&self, key: &Key, to: KeyState) -> Result<()> {
        let engine = &self.engine;
        let policy = match (key.policy_id, &engine.inner.cache) {
            (Some(policy_id), Some(cache)) => cache.get_policy(&self.tenant, policy_id).await?,
            (Some(policy_id), None) => engine.inner.store.get_policy(&self.tenant, policy_id).await?,
            (None, _) => None,
        };
        let now = engine.inner.clock.now();
        if !engine.is_expired(key, policy.as_deref(), now) {
            return Ok(());
        }
        engine.mark_expired(key, now).await?;
        Err(Error::InvalidTransition { from: KeyState::Expired, to })
    }

    async fn transition(&self, id: KeyId, transition: Transition) -> Result<Key> {
        let key = match self.engine.inner.store.transition_key(&self.tenant, id, &transition).await {
            Ok(key) => key,
            Err(error) => {
                if matches!(error, Error::InvalidTransition { .. }) {
                    // Changed elsewhere: what this engine cached of it is stale.
                    let tenant = self.tenant.clone();
                    self.engine.forget(|| Change::Key { tenant, key_id: id, hash: None }).await;
                }
                return Err(error);
            }
        };
        self.engine.committed(|| Change::key(&key, None)).await;
        self.engine.emit_transition(Arc::new(key.clone())).await;
        Ok(key)
    }

    /// Validates, de-duplicates and checks scopes against the registry (when
    /// strict) and the policy's `allowed_scopes`.
    pub(super) async fn checked_scopes(
        &self, requested: &[String], policy_id: Option<PolicyId>,
    ) -> Result<Vec<String>> {
        let inner = &self.engine.inner;
        let mut scopes: Vec<String> = Vec::with_capacity(requested.len());
        for name in requested {
            scope::validate_name(name)?;
            if !scopes.contains(name) {
                scopes.push(name.clone());
            }
        }
        if let Some(policy_id) = policy_id {
            let policy = inner
                .store
                .get_policy(&self.tenant, policy_id)
                .await?
                .ok_or_else(|| Error::not_found("policy", policy_id))?;
            if !policy.allowed_scopes.is_empty() {
                let outside: Vec<&str> = scopes
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !scope::any_grants(&policy.allowed_scopes, s))
                    .collect();
                if !outside.is_empty() {
                    return Err(Error::invalid(
                        "scopes",
                        format!("not allowed by policy {}: {}", policy.name, outside.join(", ")),
                    ));
                }
            }
        }
        if inner.strict_scopes && !scopes.is_empty() {
            let registered = inner.store.list_scopes(&self.tenant).await?;
            let unknown: Vec<&str> =
                scopes.iter().map(String::as_str).filter(|s| !registered.iter().any(|r| r.name == *s)).collect();
            if !unknown.is_empty() {
                return Err(Error::invalid("scopes", format!("not registered: {}", unknown.join(", "))));
            }
        }
        Ok(scopes)
    }
}

/// The name as stored (trimmed), from a name of 1 to 256 characters with no
/// control character and not only whitespace.
pub(super) fn validate_name(name: &str) -> Result<String> {
    input::check_name(name, MAX_NAME_LEN).map(str::to_owned)
}
