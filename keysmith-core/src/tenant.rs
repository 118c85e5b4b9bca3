//! Tenancy: every key, policy, scope, usage row and rotation belongs to one
//! application and one tenant within it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Result, validate_id};

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

    /// Checks that both ids are identities ([`validate_id`]): 1 to
    /// [`MAX_ID_LEN`](crate::MAX_ID_LEN) bytes, no whitespace at either end,
    /// no control character. Every operation of a
    /// [`TenantEngine`](crate::TenantEngine) makes this check before any
    /// store call; call it to refuse bad ids earlier (when reading
    /// configuration or a command line).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming `app_id`
    /// or `tenant_id`.
    pub fn validate(&self) -> Result<()> {
        validate_id("app_id", &self.app_id)?;
        validate_id("tenant_id", &self.tenant_id)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app_id, self.tenant_id)
    }
}
