//! The scope registry and scope assignment, for one tenant.

use std::sync::Arc;

use super::TenantEngine;
use crate::Change;
use crate::hooks::Event;
use crate::{Error, Key, KeyId, Result, Scope, ScopeId, input, scope};

/// The longest scope description, in characters.
pub(crate) const MAX_DESCRIPTION_LEN: usize = 1024;

impl TenantEngine {
    /// Registers a scope name.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name, a description over 1024 characters
    /// or with a control character, or the tenant's ids; `AlreadyExists` if
    /// the tenant already registered it.
    pub async fn create_scope(&self, name: &str, description: &str) -> Result<Scope> {
        let tenant = self.checked()?;
        scope::validate_name(name)?;
        if description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(Error::invalid("description", "must be at most 1024 characters"));
        }
        input::check_text("description", description)?;
        let scope = Scope {
            id: ScopeId::new(),
            tenant: tenant.clone(),
            name: name.to_owned(),
            description: description.to_owned(),
            created_at: self.engine.inner.clock.now(),
        };
        self.engine.inner.store.insert_scope(&scope).await?;
        let scope = Arc::new(scope);
        self.engine.emit(|| Event::ScopeCreated { scope: Arc::clone(&scope) }).await;
        Ok(Arc::unwrap_or_clone(scope))
    }

    /// The tenant's registered scopes, by name.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; a store failure.
    pub async fn list_scopes(&self) -> Result<Vec<Scope>> {
        self.engine.inner.store.list_scopes(self.checked()?).await
    }

    /// Removes a scope from the registry. Keys keep the scopes they hold.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such scope.
    pub async fn delete_scope(&self, id: ScopeId) -> Result<()> {
        let tenant = self.checked()?;
        self.engine.inner.store.delete_scope(tenant, id).await?;
        let tenant = tenant.clone();
        self.engine.emit(|| Event::ScopeDeleted { tenant, scope_id: id }).await;
        Ok(())
    }

    /// Replaces a key's scopes (an empty list removes them all). The same
    /// checks as at creation apply: names, the policy's `allowed_scopes`,
    /// and the registry when scopes are strict.
    ///
    /// # Errors
    /// `NotFound` or `InvalidInput` (also for the tenant's ids).
    pub async fn set_key_scopes<S: AsRef<str>>(&self, id: KeyId, scopes: &[S]) -> Result<Key> {
        let tenant = self.checked()?;
        let key = self.get_key(id).await?;
        let requested: Vec<String> = scopes.iter().map(|s| s.as_ref().to_owned()).collect();
        let scopes = self.checked_scopes(&requested, key.policy_id).await?;
        let at = self.engine.inner.clock.now();
        let key = self.engine.inner.store.set_key_scopes(tenant, id, &scopes, at).await?;
        self.engine.committed(|| Change::key(&key, None)).await;
        Ok(key)
    }
}
