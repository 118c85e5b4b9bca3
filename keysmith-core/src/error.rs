//! Errors: the system's fault or an operation the caller may not do.
//!
//! A client presenting a bad key is not an error but a [`Refusal`](crate::Refusal).

use crate::key::KeyState;
use crate::{KeyId, PolicyId};

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
    /// A key of an owner under a policy that limits by owner spends its
    /// owner's credits, so it cannot be given credits of its own (they
    /// would be a second balance beside the owner's): give the owner credits
    /// instead. Nothing was changed.
    #[error(
        "policy {policy_id} limits by owner, so the keys of owner {owner_id:?} under it spend the owner's credits \
         and cannot hold their own: set the owner's credits instead"
    )]
    OwnerLimitedCredits {
        /// The key's policy.
        policy_id: PolicyId,
        /// The key's owner, whose credits the key spends.
        owner_id: String,
    },
    /// A policy cannot start limiting by owner while keys of owners under
    /// it hold credits of their own (under `limit_by: owner` an owner's
    /// keys spend one balance, the owner's). Remove the keys' credits first,
    /// and give their owners credits instead. Nothing was changed.
    #[error("{}", keys_hold_credits(*policy_id, key_ids, *count))]
    KeysHoldCredits {
        /// The policy.
        policy_id: PolicyId,
        /// The first of those keys, oldest first: at most
        /// [`Error::LISTED_KEYS`], one per lineage (credits belong to a
        /// lineage, so removing them from one of its keys removes them from
        /// all).
        key_ids: Vec<KeyId>,
        /// How many there are in all.
        count: u64,
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
    /// The most keys an error names ([`KeysHoldCredits`](Self::KeysHoldCredits)
    /// gives the count of the others).
    pub const LISTED_KEYS: usize = 10;

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

/// The message of [`Error::KeysHoldCredits`].
fn keys_hold_credits(policy_id: PolicyId, key_ids: &[KeyId], count: u64) -> String {
    let (noun, verb) = if count == 1 { ("key", "holds") } else { ("keys", "hold") };
    let listed = key_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let names = match count.saturating_sub(key_ids.len() as u64) {
        _ if listed.is_empty() => String::new(),
        0 => format!(" ({listed})"),
        unlisted => format!(" ({listed} and {unlisted} more)"),
    };
    format!(
        "policy {policy_id} cannot limit by owner while {count} {noun} of owners under it {verb} credits of their \
         own{names}: remove their credits first, and give their owners credits instead"
    )
}

/// `Result` with Keysmith's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
