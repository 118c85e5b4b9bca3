//! The operations an admin key may not do to itself: each would leave its
//! tenant without the key that manages it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use keysmith_core::{KeyId, PolicyId, scope};
use keysmith_tower::ApiKey;

use crate::ADMIN_SCOPE;
use crate::error::{Error, Result};

/// What the calling key was about to do to itself, refused as 409
/// `self_lockout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelfLockout {
    /// Suspend the calling key.
    Suspend,
    /// Revoke the calling key.
    Revoke,
    /// Rotate the calling key (whatever the grace: once it ends, or if the
    /// response with the new secret is lost, the tenant has no admin key).
    Rotate,
    /// Replace the calling key's scopes with a set that does not grant
    /// [`ADMIN_SCOPE`].
    DropAdminScope,
    /// Replace the calling key's policy with one whose `allowed_scopes` do
    /// not allow [`ADMIN_SCOPE`].
    PolicyDropsAdminScope,
}

impl SelfLockout {
    /// Why the operation was refused, for the error message.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Suspend => "a key cannot suspend itself: this would lock the tenant out of the admin API",
            Self::Revoke => "a key cannot revoke itself: this would lock the tenant out of the admin API",
            Self::Rotate => {
                "a key cannot rotate itself: once the old secret stops, the tenant would be locked out of the \
                 admin API; rotate it with another admin key"
            }
            Self::DropAdminScope => {
                "these scopes would remove `keysmith:admin` from the key making the request, locking the tenant \
                 out of the admin API"
            }
            Self::PolicyDropsAdminScope => {
                "these allowed_scopes would take `keysmith:admin` from the key making the request (it is under \
                 this policy), locking the tenant out of the admin API"
            }
        }
    }
}

/// The key making the request, for the checks above.
#[derive(Debug)]
pub(crate) struct CallingKey {
    id: KeyId,
    policy_id: Option<PolicyId>,
}

impl<S: Send + Sync> FromRequestParts<S> for CallingKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let key = ApiKey::extract(&parts.extensions)?;
        Ok(Self { id: key.id(), policy_id: key.key().policy_id })
    }
}

impl CallingKey {
    /// Refuses `action` when `target` is the calling key.
    pub(crate) fn refuse_on_itself(&self, target: KeyId, action: SelfLockout) -> Result<()> {
        if target == self.id {
            return Err(Error::SelfLockout(action));
        }
        Ok(())
    }

    /// Refuses new scopes for the calling key that lose the admin scope.
    pub(crate) fn refuse_scopes<S: AsRef<str>>(&self, target: KeyId, scopes: &[S]) -> Result<()> {
        if target == self.id && !scope::any_grants(scopes, ADMIN_SCOPE) {
            return Err(Error::SelfLockout(SelfLockout::DropAdminScope));
        }
        Ok(())
    }

    /// Refuses new `allowed_scopes` for the calling key's policy that lose
    /// the admin scope (an empty list allows every scope).
    pub(crate) fn refuse_policy_scopes<S: AsRef<str>>(&self, policy: PolicyId, allowed_scopes: &[S]) -> Result<()> {
        if self.policy_id == Some(policy)
            && !allowed_scopes.is_empty()
            && !scope::any_grants(allowed_scopes, ADMIN_SCOPE)
        {
            return Err(Error::SelfLockout(SelfLockout::PolicyDropsAdminScope));
        }
        Ok(())
    }
}
