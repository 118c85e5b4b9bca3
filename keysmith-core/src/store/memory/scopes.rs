//! The scope registry.

use async_trait::async_trait;

use super::ScopeStore;
use crate::{Error, Result, Scope, ScopeId, Tenant};

use super::MemoryStore;

#[async_trait]
impl ScopeStore for MemoryStore {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        let mut tables = self.write()?;
        if tables.scopes.values().any(|s| s.tenant == scope.tenant && s.name == scope.name) {
            return Err(Error::AlreadyExists { entity: "scope", name: scope.name.clone() });
        }
        tables.scopes.insert(scope.id, scope.clone());
        Ok(())
    }

    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        let mut scopes: Vec<Scope> = self.read()?.scopes.values().filter(|s| s.tenant == *tenant).cloned().collect();
        scopes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scopes)
    }

    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        let mut tables = self.write()?;
        if tables.scopes.get(&id).is_none_or(|s| s.tenant != *tenant) {
            return Err(Error::not_found("scope", id));
        }
        tables.scopes.remove(&id);
        Ok(())
    }
}
