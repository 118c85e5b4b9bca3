//! Tenancy: every key, policy, scope, usage row and rotation belongs to one
//! application and one tenant within it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The owner of an entity: an application and a tenant inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tenant {
    /// The application (one deployment may serve several).
    pub app_id: String,
    /// The tenant (customer, organisation…) within the application.
    pub tenant_id: String,
}

impl Tenant {
    /// A tenant from its two parts.
    pub fn new(app_id: impl Into<String>, tenant_id: impl Into<String>) -> Self {
        Self { app_id: app_id.into(), tenant_id: tenant_id.into() }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app_id, self.tenant_id)
    }
}
