//! The operations an admin key may not do to itself: each would leave its
//! tenant without the key that manages it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use keysmith_core::{KeyId, PolicyId, PolicySpec, Refusal, scope};
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
    /// Replace the calling key's policy with one whose `allowed_ips` leave
    /// out the address the request comes from (or any, when it is unknown).
    PolicyRefusesAddress,
    /// Replace the calling key's policy with one whose `max_key_age` the
    /// key is already past: it would expire at its next request, for good.
    PolicyExpiresKey,
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
            Self::PolicyRefusesAddress => {
                "these allowed_ips leave out the address this request comes from, and the key making it is under \
                 this policy: it would be refused from here on, locking the tenant out of the admin API"
            }
            Self::PolicyExpiresKey => {
                "the key making the request is under this policy and already older than this max_key_age: it \
                 would expire at its next request, locking the tenant out of the admin API"
            }
        }
    }
}

/// The key making the request, for the checks above.
#[derive(Debug)]
pub(crate) struct CallingKey(ApiKey);

impl<S: Send + Sync> FromRequestParts<S> for CallingKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        Ok(Self(ApiKey::extract(&parts.extensions)?))
    }
}

impl CallingKey {
    /// Refuses `action` when `target` is the calling key.
    pub(crate) fn refuse_on_itself(&self, target: KeyId, action: SelfLockout) -> Result<()> {
        if target == self.0.id() {
            return Err(Error::SelfLockout(action));
        }
        Ok(())
    }

    /// Refuses new scopes for the calling key that lose the admin scope.
    pub(crate) fn refuse_scopes<S: AsRef<str>>(&self, target: KeyId, scopes: &[S]) -> Result<()> {
        if target == self.0.id() && !scope::any_grants(scopes, ADMIN_SCOPE) {
            return Err(Error::SelfLockout(SelfLockout::DropAdminScope));
        }
        Ok(())
    }

    /// Refuses a new version of the calling key's own policy that would
    /// refuse the calling key: `allowed_scopes` without the admin scope (an
    /// empty list allows every scope), `allowed_ips` without the address
    /// this request comes from, or a `max_key_age` the key is past. An
    /// invalid `spec` is the error writing it would be.
    pub(crate) fn refuse_policy(&self, policy: PolicyId, spec: &PolicySpec) -> Result<()> {
        let key = self.0.key();
        if key.policy_id != Some(policy) {
            return Ok(());
        }
        if !spec.allowed_scopes.is_empty() && !scope::any_grants(&spec.allowed_scopes, ADMIN_SCOPE) {
            return Err(Error::SelfLockout(SelfLockout::PolicyDropsAdminScope));
        }
        match spec.refusal_for(key, self.0.client_ip(), self.0.validation().checked_at())? {
            None => Ok(()),
            Some(Refusal::IpNotAllowed) => Err(Error::SelfLockout(SelfLockout::PolicyRefusesAddress)),
            Some(_) => Err(Error::SelfLockout(SelfLockout::PolicyExpiresKey)),
        }
    }
}
