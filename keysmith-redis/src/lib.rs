//! Redis-backed state for a fleet of Keysmith instances: every instance
//! that points at the same Redis shares one rate-limit budget and one quota
//! per credential.
//!
//! ```no_run
//! # async fn run(store: keysmith_core::MemoryStore) -> Result<(), keysmith_core::Error> {
//! use std::time::Duration;
//!
//! use keysmith_core::Engine;
//! use keysmith_redis::{OutagePolicy, RedisChangeFeed, RedisConfig, RedisQuotas, RedisRateLimiter};
//!
//! let redis = RedisConfig::connect("redis://127.0.0.1:6379").await?.with_outage_policy(OutagePolicy::FailClosed);
//! let engine = Engine::builder(store)
//!     // Exact across instances, one round trip per check; or decide locally
//!     // first, within the bound `local_first` states:
//!     .with_rate_limiter(RedisRateLimiter::new(redis.clone()).local_first(Duration::from_millis(100))?)
//!     .with_quotas(RedisQuotas::new(redis))
//!     .with_change_feed(RedisChangeFeed::connect("redis://127.0.0.1:6379").await?)
//!     .build()?;
//! # Ok(())
//! # }
//! ```
//!
//! The client is [redis-rs](https://docs.rs/redis) with its tokio
//! [`ConnectionManager`](redis::aio::ConnectionManager): one multiplexed
//! connection per process, cloned freely, reconnecting on its own after a
//! server restart (so recovery needs no restart of the app), and a
//! [`Script`](redis::Script) type that sends `EVALSHA` and reloads the
//! script after `NOSCRIPT`. It is the most widely used Redis client in Rust
//! and pulls in little besides tokio; fred offers more (pools, client-side
//! caching), none of which one script call per request needs.
//!
//! **Redis Cluster**: [`RedisConfig::connect_cluster`] and
//! [`RedisChangeFeed::connect_cluster`] take the URLs of one or more of its
//! nodes, and redis-rs's cluster connection sends each script to the master
//! of its keys' slot. Every key this crate writes is named
//! `{prefix}:{<credential id>}:…`, with the credential's id (or the owner's)
//! inside a hash tag, so all of one credential's keys land on one slot and a
//! script may touch them together. The prefix (`keysmith` by default) lets
//! several apps share one Redis; on a cluster it must not hold an empty
//! hash tag (`{}`), which would make each key its own tag.

mod config;
mod feed;
mod limiter;
mod quotas;

pub use config::{DEFAULT_RETRY_INTERVAL, OutagePolicy, RedisConfig, RedisConnection};
pub use feed::RedisChangeFeed;
pub use limiter::RedisRateLimiter;
pub use quotas::RedisQuotas;
