//! Storage: one trait per subsystem and [`Store`] composing them.
//!
//! Every method that takes a [`Tenant`] filters on it: another tenant's
//! entity is `None` or [`Error::NotFound`](crate::Error::NotFound), never
//! visible. State changes are compare-and-set on the current state, so a
//! racing operation can never undo a revoke or rotate a key twice.

mod cache;
mod memory;
#[cfg(any(test, feature = "testing"))]
mod probe;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fmt::Debug;

pub use cache::{CacheConfig, CacheStats, CachedStore};
pub use memory::MemoryStore;
#[cfg(any(test, feature = "testing"))]
pub use probe::{ProbedStore, StoreOp, StoreProbe};

use crate::usage::{Refused, StatusClasses, UsageBatch, UsageCounts};
use crate::{
    Change, CreditSpend, Credits, Environment, Key, KeyHash, KeyId, KeyState, Period, Policy, PolicyId, Result,
    RotationRecord, Scope, ScopeId, Tenant, UsageAggregate, UsageRecord,
};

/// Declares a store trait from its methods: the `async` ones, each a call to
/// the backend; then, in `optional`, backend calls with a default body for
/// stores that do not have them (a store written before them keeps
/// compiling); then, in `provided`, the methods with a default body that
/// are not calls of their own (the `_ready` answers that a store overrides
/// when it can answer without I/O, and conveniences written over the
/// required methods). From the same lists, with the `testing` feature, it
/// implements the trait for [`ProbedStore`] (each call, optional ones
/// included, reported to the probe as the [`StoreOp`] of its name), so that
/// a new store operation is written in three places: here, the memory store
/// and the SQL body.
macro_rules! store_trait {
    (
        $(#[$attr:meta])*
        pub trait $trait:ident: $first:ident $(+ $more:ident)* {
            $(
                $(#[$doc:meta])*
                async fn $op:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)?;
            )*
        }
        $(optional {
            $(
                $(#[$odoc:meta])*
                async fn $oop:ident(&self $(, $oarg:ident: $oty:ty)* $(,)?) -> $oret:ty $obody:block
            )*
        })?
        $(provided { $($provided:tt)* })?
    ) => {
        $(#[$attr])*
        #[async_trait]
        pub trait $trait: $first $(+ $more)* {
            $(
                $(#[$doc])*
                async fn $op(&self $(, $arg: $ty)*) $(-> $ret)?;
            )*
            $($(
                $(#[$odoc])*
                async fn $oop(&self $(, $oarg: $oty)*) -> $oret $obody
            )*)?
            $($($provided)*)?
        }

        #[cfg(any(test, feature = "testing"))]
        #[allow(non_upper_case_globals)] // Named as the method is.
        impl StoreOp {
            $(
                #[doc = concat!("[`", stringify!($trait), "::", stringify!($op), "`]")]
                pub const $op: Self = Self::named(stringify!($op));
            )*
            $($(
                #[doc = concat!("[`", stringify!($trait), "::", stringify!($oop), "`]")]
                pub const $oop: Self = Self::named(stringify!($oop));
            )*)?
        }

        #[cfg(any(test, feature = "testing"))]
        #[async_trait]
        impl<P: StoreProbe> $trait for ProbedStore<P> {
            $(
                async fn $op(&self $(, $arg: $ty)*) $(-> $ret)? {
                    self.probed(StoreOp::$op, self.inner().$op($($arg),*)).await
                }
            )*
            $($(
                async fn $oop(&self $(, $oarg: $oty)*) -> $oret {
                    self.probed(StoreOp::$oop, self.inner().$oop($($oarg),*)).await
                }
            )*)?
        }
    };
}

/// A key found by its hash, if one was, with its policy when the store
/// answered that too ([`KeyStore::find_key_with_policy_ready`]).
pub type KeyWithPolicy = (Option<StoredKey>, Option<KeyPolicy>);

/// A key's policy with the key's scopes narrowed to the policy's
/// `allowed_scopes`: a store that keeps a key with its policy keeps this,
/// so the narrowing is decided once per write of the key or the policy
/// rather than on every validation. Made only by [`KeyPolicy::new`], so
/// the narrowed scopes are always the ones the pair gives.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    policy: Arc<Policy>,
    /// `None` when the policy cuts none of the key's scopes.
    narrowed: Option<Arc<[String]>>,
}

impl KeyPolicy {
    /// `policy` as the policy of `key`, whose scopes are narrowed to it here.
    #[must_use]
    pub fn new(key: &Key, policy: Arc<Policy>) -> Self {
        let narrowed = crate::scope::narrow(&key.scopes, &policy.allowed_scopes);
        Self { policy, narrowed }
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The policy and the key's scopes narrowed to it (`None`: none cut).
    pub(crate) fn into_parts(self) -> (Arc<Policy>, Option<Arc<[String]>>) {
        (self.policy, self.narrowed)
    }
}

/// A key with the hash of its secret, as a store keeps it. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    /// The key.
    pub key: Arc<Key>,
    /// Hash of the raw key.
    pub hash: KeyHash,
}

/// Which keys a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Only keys in this state.
    pub state: Option<KeyState>,
    /// Only keys of this environment.
    pub environment: Option<Environment>,
    /// Only keys under this policy.
    pub policy_id: Option<PolicyId>,
    /// Only keys of this owner.
    pub owner_id: Option<String>,
    /// Which slice of the result.
    pub page: Page,
}

/// A slice of a listing, ordered by id (that is, by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// At most this many rows.
    pub limit: u32,
    /// Skipping this many first.
    pub offset: u64,
}

impl Page {
    /// The largest page a listing returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// A page of `limit` rows (capped at [`Page::MAX_LIMIT`]) after `offset`.
    #[must_use]
    pub fn new(limit: u32, offset: u64) -> Self {
        Self { limit: limit.min(Self::MAX_LIMIT), offset }
    }

    /// Applies the page to an iterator already in order.
    pub fn apply<T>(self, items: impl Iterator<Item = T>) -> Vec<T> {
        items
            .skip(usize::try_from(self.offset).unwrap_or(usize::MAX))
            .take(self.limit.min(Self::MAX_LIMIT) as usize)
            .collect()
    }
}

impl Default for Page {
    fn default() -> Self {
        Self { limit: 100, offset: 0 }
    }
}

/// A half-open time range `[from, to)`; a missing bound is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    /// Inclusive start.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive end.
    pub to: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// True if `at` lies in the range.
    #[must_use]
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

/// A state change, applied only if the key is in one of `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The states the key may be in for the change to apply.
    pub from: &'static [KeyState],
    /// The new state.
    pub to: KeyState,
    /// When the change happens (becomes `updated_at`).
    pub at: DateTime<Utc>,
    /// Stored as the key's `revoked_reason` when `to` is `revoked` or
    /// `suspended` (`active` clears it; `expired` leaves it).
    pub reason: Option<String>,
}

impl Transition {
    /// The lifecycle's change to `to`, at `at`.
    #[must_use]
    pub fn to(to: KeyState, at: DateTime<Utc>) -> Self {
        Self { from: KeyState::sources_of(to), to, at, reason: None }
    }

    /// The same change, with a reason.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Everything a rotation writes, in one atomic step.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationWrite {
    /// The replacement key, `active`.
    pub new_key: StoredKey,
    /// The record; its `key_id` is the key being rotated.
    pub record: RotationRecord,
}

/// What an import did (or, in a dry run, would do) with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportOutcome {
    /// Written.
    Imported,
    /// The tenant already holds a key of this hash, or one imported from
    /// the same `external_id` ([`EXTERNAL_ID_FIELD`](crate::EXTERNAL_ID_FIELD)
    /// in its metadata): imported by an earlier run or an earlier row, so
    /// nothing is written.
    AlreadyImported,
    /// Another tenant's key has this hash: refused, nothing written.
    HashTaken,
    /// The owner already holds as many live keys under the key's policy as
    /// the policy's `max_active_keys_per_owner` allows: refused.
    OwnerKeyLimit {
        /// The policy's limit.
        limit: u32,
    },
}

store_trait! {
    /// Keys: creation, lookup, listing and state changes.
    pub trait KeyStore: Send + Sync {
        /// Inserts a new key with its scopes. Fails with `AlreadyExists` if the
        /// id or hash is taken and `NotFound` if its policy is not the tenant's.
        async fn insert_key(&self, key: &StoredKey) -> Result<()>;

        /// Imports `keys` (all of `tenant`, in a state of their own: `active`,
        /// `revoked` or `expired`) in order, in one transaction, and says what
        /// became of each: a hash the tenant holds already is skipped, a hash of
        /// another tenant's key and a key past its owner's limit are refused,
        /// the rest are inserted (keys earlier in `keys` count toward the owner
        /// limit of later ones). With `dry_run` nothing is written, the outcomes
        /// are the same. An error writes nothing of the batch.
        async fn import_keys(&self, tenant: &Tenant, keys: &[StoredKey], dry_run: bool) -> Result<Vec<ImportOutcome>>;

        /// The key whose secret hashes to `hash`, of any tenant (validation).
        async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>>;

        /// One key of the tenant, with its hash.
        async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>>;

        /// The tenant's keys matching `filter`, ordered by id.
        async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>>;

        /// Applies `transition` if the key's current state is one of its `from`
        /// states, atomically; else `InvalidTransition` naming the current state.
        async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key>;

        /// Moves the old key from `active` to `rotated` (with the record's grace
        /// expiry), inserts the new key and the record: all or nothing. Returns
        /// the old key as updated.
        async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key>;

        /// Replaces the key's scopes.
        async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key>;

        /// Records that the key was used at `at` (never moves it backwards).
        async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()>;

        /// Gives the key's lineage `credits` (replacing any), or removes them
        /// (`None`); returns the key as updated. `NotFound` if the tenant has no
        /// such key.
        async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key>;

        /// Adds `amount` to the lineage's credits (after the refill due at
        /// `now`, if one is), atomically. `InvalidInput` if the key has no
        /// credits or the sum would pass [`Credits::MAX`].
        async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key>;

        /// Spends `cost` of the credits of `key`'s lineage at `now`, refilling
        /// first when a refill period began: atomically, never below zero, all
        /// or nothing.
        async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend>;

        /// Gives back `cost` to the credits of `key`'s lineage (a request
        /// refused after it spent them), up to [`Credits::MAX`].
        async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()>;

        /// The credits the tenant's owner `owner_id` shares among its keys
        /// (spent under a policy with `limit_by: owner`), as stored: a refill
        /// due since is not applied.
        async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>>;

        /// Gives the owner `credits` (replacing any), or removes them (`None`).
        async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()>;

        /// Adds `amount` to the owner's credits (after the refill due at `now`,
        /// if one is), atomically; returns them as updated. `InvalidInput` if
        /// the owner has no credits or the sum would pass [`Credits::MAX`].
        async fn add_owner_credits(&self, tenant: &Tenant, owner_id: &str, amount: u64, now: DateTime<Utc>)
            -> Result<Credits>;

        /// Spends `cost` of the owner's credits at `now`, as
        /// [`spend_credits`](Self::spend_credits) does a lineage's: refilling
        /// first, atomically, never below zero, all or nothing.
        async fn spend_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>)
            -> Result<CreditSpend>;

        /// Gives back `cost` to the owner's credits (a request refused after it
        /// spent them), up to [`Credits::MAX`].
        async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()>;

        /// Keys of every tenant that are due a terminal state at `now`, ordered
        /// by id, at most `limit`: `active` keys past `expires_at` or older than
        /// their policy's `max_key_age`, and `rotated` keys past their grace.
        async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>>;
    }
    provided {
        /// [`find_key_by_hash`](Self::find_key_by_hash) answered at once, for a
        /// store that can answer without I/O (the memory store, a cache hit);
        /// `None` means "no ready answer: await `find_key_by_hash`". Validation
        /// asks this first, so a ready answer costs no boxed future. The default
        /// has no ready answers, which is always correct.
        fn find_key_by_hash_ready(&self, hash: &KeyHash) -> Option<Result<Option<StoredKey>>> {
            let _ = hash;
            None
        }

        /// [`find_key_by_hash_ready`](Self::find_key_by_hash_ready) with the
        /// found key's policy (of the key's tenant; `None` when the key has
        /// none or the store does not hold it), in one lookup, for a store
        /// that keeps both in process. `None` means "no ready answer: look
        /// the key up, then its policy" (the default, always correct).
        fn find_key_with_policy_ready(&self, hash: &KeyHash) -> Option<Result<KeyWithPolicy>> {
            let _ = hash;
            None
        }

        /// [`spend_credits`](Self::spend_credits) answered at once, for a store
        /// that can answer without I/O; `None` means "await `spend_credits`"
        /// (the default).
        fn spend_credits_ready(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Option<Result<CreditSpend>> {
            let _ = (key, cost, now);
            None
        }

        /// [`refund_credits`](Self::refund_credits) done at once, for a store
        /// that can without I/O; `None` means "await `refund_credits`" (the
        /// default).
        fn refund_credits_ready(&self, key: &Key, cost: u64) -> Option<Result<()>> {
            let _ = (key, cost);
            None
        }

        /// [`spend_owner_credits`](Self::spend_owner_credits) answered at once,
        /// for a store that can answer without I/O; `None` means "await
        /// `spend_owner_credits`" (the default).
        fn spend_owner_credits_ready(&self, tenant: &Tenant, owner_id: &str, cost: u64, now: DateTime<Utc>)
            -> Option<Result<CreditSpend>> {
            let _ = (tenant, owner_id, cost, now);
            None
        }

        /// [`refund_owner_credits`](Self::refund_owner_credits) done at once,
        /// for a store that can without I/O; `None` means "await
        /// `refund_owner_credits`" (the default).
        fn refund_owner_credits_ready(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Option<Result<()>> {
            let _ = (tenant, owner_id, cost);
            None
        }
    }
}

store_trait! {
    /// Policies.
    pub trait PolicyStore: Send + Sync {
        /// Inserts a policy; `AlreadyExists` if the tenant has one of that name.
        async fn insert_policy(&self, policy: &Policy) -> Result<()>;

        /// One policy of the tenant.
        async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>>;

        /// The tenant's policies, ordered by id.
        async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>>;

        /// Replaces a policy (matched by id and tenant).
        async fn update_policy(&self, policy: &Policy) -> Result<()>;

        /// Deletes a policy; `PolicyInUse` while a key that is not terminal references it.
        async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()>;
    }
    provided {
        /// [`get_policy`](Self::get_policy) answered at once, when the store can
        /// without I/O; `None` means "await `get_policy`" (the default).
        fn get_policy_ready(&self, tenant: &Tenant, id: PolicyId) -> Option<Result<Option<Arc<Policy>>>> {
            let _ = (tenant, id);
            None
        }
    }
}

store_trait! {
    /// The scope registry.
    pub trait ScopeStore: Send + Sync {
        /// Registers a scope; `AlreadyExists` if the tenant has one of that name.
        async fn insert_scope(&self, scope: &Scope) -> Result<()>;

        /// The tenant's scopes, ordered by name.
        async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>>;

        /// Removes a scope from the registry (keys keep the names they hold).
        async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()>;
    }
}

store_trait! {
    /// Usage records and their roll-ups.
    pub trait UsageStore: Send + Sync {
        /// Writes `batch` in one write: each of its records once (by id; a
        /// record stored already counts nothing again), and adds the records
        /// written and the batch's deltas (once per batch id) to their keys'
        /// hourly, daily and monthly roll-ups, one upsert per roll-up row.
        async fn write_usage(&self, batch: &UsageBatch<'_>) -> Result<()>;

        /// Deletes at most `limit` raw records (of every tenant) numbered before
        /// `before` (a record's id is a UUIDv7 made when its request was, so
        /// this is by its primary key, below
        /// [`UsageId::first_uuid_at`](crate::UsageId::first_uuid_at)), and every
        /// id of a batch written before it (however few records expired; at
        /// most `limit` a statement); returns how many records it deleted.
        /// Roll-ups are untouched.
        async fn delete_usage_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;

        /// Deletes at most `limit` roll-ups of `period` (of every tenant) whose
        /// period starts before `before`; returns how many.
        async fn delete_aggregates_before(&self, period: Period, before: DateTime<Utc>, limit: u32) -> Result<u64>;

        /// A key's records in `range`, oldest first.
        async fn list_usage(&self, tenant: &Tenant, key_id: KeyId, range: TimeRange, page: Page)
            -> Result<Vec<UsageRecord>>;

        /// A key's aggregates whose period starts in `range`, oldest first.
        async fn usage_aggregates(&self, tenant: &Tenant, key_id: KeyId, period: Period, range: TimeRange)
            -> Result<Vec<UsageAggregate>>;

        /// The tenant's totals per period (all keys summed), oldest first.
        async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>>;

        /// A lineage's totals per period (every key whose
        /// [`lineage_id`](crate::Key::lineage_id) is `lineage`, summed) whose
        /// period starts in `range`, oldest first: what quotas count.
        async fn lineage_usage(&self, tenant: &Tenant, lineage: KeyId, period: Period, range: TimeRange)
            -> Result<Vec<UsageTotal>>;

        /// An owner's totals per period (every key of `tenant` whose
        /// [`owner_id`](crate::Key::owner_id) is `owner_id`, summed) whose
        /// period starts in `range`, oldest first: what quotas count under a
        /// policy with `limit_by: owner`.
        async fn owner_usage(&self, tenant: &Tenant, owner_id: &str, period: Period, range: TimeRange)
            -> Result<Vec<UsageTotal>>;
    }
    provided {
        /// Writes the records and adds them to their keys' roll-ups, in one
        /// write ([`write_usage`](Self::write_usage) of a batch without deltas).
        async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
            self.write_usage(&UsageBatch::of_records(records)).await
        }
    }
}

/// The requests of all of a tenant's keys (or a lineage's, or an owner's)
/// in one period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageTotal {
    /// Hour, day or month.
    pub period: Period,
    /// The period's first instant.
    pub period_start: DateTime<Utc>,
    /// Requests that passed.
    pub requests: u64,
    /// Of which errors.
    pub errors: u64,
    /// The passed requests by status class.
    #[serde(default)]
    pub status: StatusClasses,
    /// Requests refused, by reason.
    #[serde(default)]
    pub refused: Refused,
}

impl UsageTotal {
    /// The total of `counts` for the `period` starting at `period_start`.
    #[must_use]
    pub fn new(period: Period, period_start: DateTime<Utc>, counts: UsageCounts) -> Self {
        Self {
            period,
            period_start,
            requests: counts.requests,
            errors: counts.errors,
            status: counts.status,
            refused: counts.refused,
        }
    }
}

store_trait! {
    /// Rotation history.
    pub trait RotationStore: Send + Sync {
        /// Rotations involving the key (as old or new key), oldest first.
        async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>>;
    }
}

store_trait! {
    /// A complete backend. Object-safe: engines hold an `Arc<dyn Store>`.
    pub trait Store: KeyStore + PolicyStore + ScopeStore + UsageStore + RotationStore + Debug {
        /// Brings the schema up to date; safe to run on every start.
        async fn migrate(&self) -> Result<()>;

        /// Checks that the backend answers.
        async fn ping(&self) -> Result<()>;

        /// Releases connections; later calls fail.
        async fn close(&self);
    }
    optional {
        /// Appends `change` to the store's change log, logged at `at`: the
        /// second path by which the engines of a fleet hear of a change,
        /// taken by an engine whose [change feed](crate::feed) would not
        /// publish it, and read by every engine's feed task
        /// ([`changes_after`](Self::changes_after)). The change is kept as
        /// the feed carries it ([`Change::to_json`]): ids and key hashes,
        /// never a secret or an entity's contents. False when the store
        /// keeps no change log (the default, for stores written before it):
        /// then a change whose publish failed reaches other engines only
        /// when their cache entries expire.
        async fn log_change(&self, change: &Change, at: DateTime<Utc>) -> Result<bool> {
            let _ = (change, at);
            Ok(false)
        }

        /// The rows logged after sequence number `after`, oldest first, at
        /// most `limit`, with the highest sequence number the log holds
        /// now ([`LoggedChanges::latest`]). With `after` `None` (an engine's
        /// first read) no row, only that number, so that a new engine does
        /// not replay history. A row that is not a change, or whose payload
        /// is over [`MAX_LOGGED_CHANGE_LEN`] (not fetched), comes back as
        /// `None` ([`LoggedChanges::parse`]) so that the reader records its
        /// number. `None` when the store keeps no change log (the default).
        async fn changes_after(&self, after: Option<u64>, limit: u32) -> Result<Option<LoggedChanges>> {
            let _ = (after, limit);
            Ok(None)
        }

        /// Deletes at most `limit` changes logged before `before`; returns
        /// how many (0 for a store that keeps no change log, the default).
        async fn delete_changes_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
            let _ = (before, limit);
            Ok(0)
        }
    }
}

/// What [`Store::changes_after`] found in a store's change log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggedChanges {
    /// The highest sequence number the log holds at the read (its
    /// `MAX(seq)`), `None` when it holds no row. A reader that has seen a
    /// higher number knows the log was renumbered (truncated with its
    /// numbering reset, restored from a backup); an empty log tells it
    /// nothing (pruning empties it too).
    pub latest: Option<u64>,
    /// The rows logged after the sequence number asked after, with their
    /// sequence numbers, oldest first: the change, or `None` for a row that
    /// is not one or is too large to be ([`parse`](Self::parse)).
    pub changes: Vec<(u64, Option<Change>)>,
}

impl LoggedChanges {
    /// The change a row's payload holds, as every store reads it: `None`
    /// when the payload was not fetched (over [`MAX_LOGGED_CHANGE_LEN`]) or
    /// is not a change (a row written by hand).
    #[must_use]
    pub fn parse(payload: Option<&str>) -> Option<Change> {
        payload
            .filter(|payload| payload.len() <= MAX_LOGGED_CHANGE_LEN)
            .and_then(|payload| Change::from_json(payload).ok())
    }
}

/// The longest change log payload a store fetches, in bytes (or characters,
/// where the database counts so). A change is ids and hashes: the largest
/// one, a rotation with the longest tenant ids, every character escaped,
/// is under 2 KiB; a longer row was not written by an engine.
pub const MAX_LOGGED_CHANGE_LEN: usize = 16 * 1024;

/// What [`Engine::builder`](crate::Engine::builder) accepts as its store: any
/// [`Store`] by value, in an `Arc`, or an `Arc<dyn Store>`.
pub trait IntoStore {
    /// The store, shared.
    fn into_store(self) -> Arc<dyn Store>;
}

impl IntoStore for Arc<dyn Store> {
    fn into_store(self) -> Arc<dyn Store> {
        self
    }
}

impl<S: Store + 'static> IntoStore for Arc<S> {
    fn into_store(self) -> Arc<dyn Store> {
        self
    }
}

impl<S: Store + 'static> IntoStore for S {
    fn into_store(self) -> Arc<dyn Store> {
        Arc::new(self)
    }
}
