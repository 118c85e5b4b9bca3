//! Errors: the system's fault or an operation the caller may not do.
//!
//! A client presenting a bad key is not an error but a [`Refusal`](crate::Refusal).

use crate::key::KeyState;

/// A boxed error from a store backend or a plugin, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a Keysmith operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No entity with this id exists for this tenant (other tenants' ids
    /// are reported the same way: existence is never revealed).
    #[error("{entity} {id} not found")]
    NotFound {
        /// The kind of entity (`key`, `policy`, `scope`…).
        entity: &'static str,
        /// The id or name that was looked up.
        id: String,
    },
    /// The key's state does not allow the requested change.
    #[error("a {from} key cannot become {to}")]
    InvalidTransition {
        /// The key's state when the change was attempted.
        from: KeyState,
        /// The state that was asked for.
        to: KeyState,
    },
    /// An entity with this unique name already exists for this tenant.
    #[error("{entity} named {name:?} already exists")]
    AlreadyExists {
        /// The kind of entity.
        entity: &'static str,
        /// The name that is taken.
        name: String,
    },
    /// A policy cannot be deleted while a key that is not terminal uses it.
    #[error("policy {policy_id} is used by at least one live key")]
    PolicyInUse {
        /// The policy.
        policy_id: crate::PolicyId,
    },
    /// The owner already holds as many live keys under the policy as it
    /// allows (`max_active_keys_per_owner`); no key was created.
    #[error("owner {owner_id:?} already holds {limit} live key(s) under policy {policy_id}, its limit")]
    OwnerKeyLimit {
        /// The owner.
        owner_id: String,
        /// The policy that sets the limit.
        policy_id: crate::PolicyId,
        /// The policy's `max_active_keys_per_owner`.
        limit: u32,
    },
    /// The input is not acceptable; nothing was changed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field or argument at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not do its work (unreachable, timed out, corrupt row…).
    #[error("store unavailable: {source}")]
    Store {
        /// What the backend reported.
        #[source]
        source: BoxError,
    },
    /// A change feed could not publish or subscribe.
    #[error("change feed unavailable: {source}")]
    Feed {
        /// What the feed reported.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn store(source: impl Into<BoxError>) -> Self {
        Self::Store { source: source.into() }
    }

    /// Wraps a change feed's error.
    pub fn feed(source: impl Into<BoxError>) -> Self {
        Self::Feed { source: source.into() }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput { field, reason: reason.into() }
    }

    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound { entity, id: id.to_string() }
    }
}

/// `Result` with Keysmith's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
