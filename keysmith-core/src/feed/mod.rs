//! The change feed: how engines on many instances hear of each other's
//! state changes, so that what one revokes the others stop accepting within
//! a second rather than when their caches expire.
//!
//! An engine built [`with_change_feed`](crate::EngineBuilder::with_change_feed)
//! publishes a [`Change`] after every state change it commits (key revoked,
//! suspended, reactivated, rotated, expired, its scopes changed; a key
//! lineage's or an owner's credits set or topped up; policy updated or
//! deleted) and, when it has a cache
//! ([`with_cache`](crate::EngineBuilder::with_cache)), evicts what every
//! change it receives makes stale. A change to what a lineage shares evicts
//! every key of the lineage, not only the key it was made through.
//!
//! The feed is advisory. While the engine is not subscribed (before the
//! first subscription, and from a lost subscription until it is back) its
//! cache keeps found keys and policies only for the short
//! [outage TTL](crate::store::CacheConfig::with_outage_ttl) (1 s by
//! default), and the whole cache is dropped when the subscription is lost
//! and again when it is back: a change missed in between is seen at most
//! that long. Publishing failures are counted and logged; they never fail
//! the operation that was committed.
//!
//! A change whose publish failed is written to the store's change log
//! ([`Store::log_change`](crate::Store::log_change)), which every engine
//! with a cache reads once per heartbeat interval
//! ([`Store::changes_after`](crate::Store::changes_after)), applying what it
//! finds as if the feed had carried it. So an engine cut off from the feed
//! alone, while the rest of the fleet still hears heartbeats and keeps its
//! normal TTL, is heard within the heartbeat deadline (when its publish
//! gives up) plus one interval: 2.5 s by default. A store that keeps no
//! change log (one written before it) leaves that case to the positive TTL.
//!
//! A subscription that stays open but carries nothing (a partition, a hung
//! proxy) is lost too. An engine whose subscription has been quiet for the
//! [heartbeat interval](FeedHeartbeat) publishes a [`Change::Heartbeat`],
//! and one whose subscription carries nothing at all, heartbeats included,
//! for the heartbeat deadline (2 s by default) treats it as lost. During
//! any feed fault a change made elsewhere is therefore seen within the
//! heartbeat deadline plus the outage TTL: 3 s by default. This works for
//! every [`ChangeFeed`]: heartbeats are changes like any other to a feed.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keysmith_core::feed::LocalChangeFeed;
//! use keysmith_core::store::CacheConfig;
//! use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext};
//!
//! // Two engines on one store, each with its own cache, sharing a feed.
//! let store = Arc::new(MemoryStore::new());
//! let feed = Arc::new(LocalChangeFeed::new());
//! let engine = |store: &Arc<MemoryStore>| {
//!     Engine::builder(Arc::clone(store)).with_cache(CacheConfig::default()).with_change_feed(Arc::clone(&feed)).build()
//! };
//! let (a, b) = (engine(&store)?, engine(&store)?);
//! while !b.feed_status().is_some_and(|status| status.subscribed) {
//!     tokio::task::yield_now().await;
//! }
//!
//! let created = a.tenant("my-app", "acme").create_key(NewKey::new("ci")).await?;
//! let ctx = RequestContext::new();
//! assert!(b.validate(created.raw.expose(), &ctx).await.is_ok()); // now cached by b
//! a.tenant("my-app", "acme").revoke_key(created.key.id, "leaked").await?;
//! while b.validate(created.raw.expose(), &ctx).await.is_ok() {
//!     tokio::task::yield_now().await; // b evicts it as soon as the change arrives
//! }
//! # Ok::<(), keysmith_core::Error>(())
//! # }).unwrap();
//! ```

mod heartbeat;
mod local;
pub(crate) mod subscriber;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use heartbeat::FeedHeartbeat;
pub use local::LocalChangeFeed;
pub use subscriber::FeedStatus;

use crate::{Key, KeyHash, KeyId, PolicyId, Result, RotationRecord, Tenant};

/// One committed state change, as published on a [`ChangeFeed`]: which
/// entities are stale, never their contents and never a secret (a key's
/// SHA-256 is what stores keep, not the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// A key's state or scopes changed: revoked, suspended, reactivated,
    /// expired, or given other scopes.
    Key {
        /// The key's tenant.
        tenant: Tenant,
        /// The key.
        key_id: KeyId,
        /// Its hash, when the engine that changed it had it at hand; a
        /// subscriber without it finds the hash from the id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<KeyHash>,
    },
    /// A key was rotated: the old key changed state and a new key exists.
    Rotated {
        /// The keys' tenant.
        tenant: Tenant,
        /// The rotated (old) key.
        key_id: KeyId,
        /// The old key's hash.
        old_hash: KeyHash,
        /// The new key.
        new_key_id: KeyId,
        /// The new key's hash (a subscriber may have cached it as unknown).
        new_hash: KeyHash,
    },
    /// A policy was updated or deleted.
    Policy {
        /// The policy's tenant.
        tenant: Tenant,
        /// The policy.
        policy_id: PolicyId,
    },
    /// Something every key of a lineage shares changed (its credits were
    /// set, removed or topped up through any of its keys): a subscriber
    /// drops every key of the lineage it has cached, the old key of a
    /// rotation still in its grace as well as the new one.
    Lineage {
        /// The lineage's tenant.
        tenant: Tenant,
        /// The lineage: the [`lineage_id`](Key::lineage_id) of its keys.
        lineage_id: KeyId,
    },
    /// An owner's credits were set, removed or topped up: a subscriber that
    /// remembers the owner as having no credits forgets it, so the owner's
    /// next request spends from the store.
    Owner {
        /// The owner's tenant (owner ids are unique per tenant).
        tenant: Tenant,
        /// The application's id of the owner.
        owner_id: String,
    },
    /// Nothing changed: the feed is alive. An engine publishes one when its
    /// subscription has been quiet for a while ([`FeedHeartbeat`]), and
    /// counts a subscription that carries nothing at all, heartbeats
    /// included, for the heartbeat deadline as lost. Subscribers count it
    /// ([`FeedStatus::heartbeats_received`]) and evict nothing.
    ///
    /// [`to_json`](Self::to_json) writes it as an owner change for the
    /// tenant with empty ids, which no engine can have
    /// (`{"kind":"owner","tenant":{"app_id":"","tenant_id":""},"owner_id":"keysmith:heartbeat"}`):
    /// an engine from before heartbeats applies that as a no-op, where a
    /// kind it did not know would drop its whole cache at every heartbeat.
    /// [`from_json`](Self::from_json) reads both that and `{"kind":"heartbeat"}`.
    Heartbeat,
    /// A change of a kind this version does not know, sent by a newer
    /// engine of the fleet (during a rolling upgrade, say). What it made
    /// stale cannot be told, so a subscriber drops its whole cache and
    /// counts it ([`FeedStatus::unknown`]); engines never publish it.
    #[serde(other)]
    Unknown,
}

impl Change {
    /// The change of `key`'s state or scopes.
    #[must_use]
    pub fn key(key: &Key, hash: Option<KeyHash>) -> Self {
        Self::Key { tenant: key.tenant.clone(), key_id: key.id, hash }
    }

    /// The change a rotation makes.
    #[must_use]
    pub fn rotated(record: &RotationRecord) -> Self {
        Self::Rotated {
            tenant: record.tenant.clone(),
            key_id: record.key_id,
            old_hash: record.old_hash,
            new_key_id: record.new_key_id,
            new_hash: record.new_hash,
        }
    }

    /// The change of policy `policy_id`.
    #[must_use]
    pub fn policy(tenant: &Tenant, policy_id: PolicyId) -> Self {
        Self::Policy { tenant: tenant.clone(), policy_id }
    }

    /// The change of what `key`'s lineage shares (its credits).
    #[must_use]
    pub fn lineage(key: &Key) -> Self {
        Self::Lineage { tenant: key.tenant.clone(), lineage_id: key.lineage_id }
    }

    /// The change of owner `owner_id`'s credits.
    #[must_use]
    pub fn owner(tenant: &Tenant, owner_id: &str) -> Self {
        Self::Owner { tenant: tenant.clone(), owner_id: owner_id.to_owned() }
    }

    /// The change as the JSON text that feeds carry (a heartbeat in the
    /// form engines from before heartbeats ignore, see [`Change::Heartbeat`]).
    ///
    /// # Errors
    /// Never in practice (every field serializes); kept fallible for feeds
    /// that forward the error.
    pub fn to_json(&self) -> Result<String> {
        let text = match self {
            Self::Heartbeat => serde_json::to_string(&heartbeat_on_the_wire()),
            change => serde_json::to_string(change),
        };
        text.map_err(crate::Error::feed)
    }

    /// A change from its JSON text.
    ///
    /// # Errors
    /// [`Error::Feed`](crate::Error::Feed) if the text is not a change.
    pub fn from_json(text: &str) -> Result<Self> {
        let change: Self = serde_json::from_str(text).map_err(crate::Error::feed)?;
        Ok(if change == heartbeat_on_the_wire() { Self::Heartbeat } else { change })
    }
}

/// What [`Change::Heartbeat`] travels as: a change to an owner of the tenant
/// with empty ids, which no engine can have, so that engines that do not
/// know heartbeats forget an owner they never cached and keep the rest.
fn heartbeat_on_the_wire() -> Change {
    Change::Owner { tenant: Tenant::new("", ""), owner_id: "keysmith:heartbeat".to_owned() }
}

/// The changes a subscription delivers. An `Err` item, or the end of the
/// stream, means the subscription is lost and changes may have been missed:
/// the engine drops its cache and subscribes again.
pub type ChangeStream = BoxStream<'static, Result<Change>>;

/// A channel that carries [`Change`]s between the engines of a fleet
/// (PostgreSQL `LISTEN`/`NOTIFY`, Redis pub/sub, or in one process
/// [`LocalChangeFeed`]).
///
/// Delivery is at most once and unordered across publishers; a subscriber
/// that may have missed changes must say so by ending its stream or yielding
/// an error. Applying a change twice, or one's own, is harmless.
#[async_trait]
pub trait ChangeFeed: Send + Sync + fmt::Debug + 'static {
    /// Sends `change` to every subscriber (including the publisher's own).
    ///
    /// # Errors
    /// The feed could not send it.
    async fn publish(&self, change: &Change) -> Result<()>;

    /// Subscribes. When this returns, every change published afterwards is
    /// delivered on the stream until the stream reports a loss.
    ///
    /// # Errors
    /// The feed could not subscribe (the caller retries).
    async fn subscribe(&self) -> Result<ChangeStream>;
}

#[async_trait]
impl<F: ChangeFeed + ?Sized> ChangeFeed for Arc<F> {
    async fn publish(&self, change: &Change) -> Result<()> {
        (**self).publish(change).await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        (**self).subscribe().await
    }
}

#[cfg(test)]
mod tests;
