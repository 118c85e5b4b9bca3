//! Redis-backed state for a fleet of Keysmith instances: every instance
//! that points at the same Redis shares one rate-limit budget and one quota
//! per credential.
//!
//! The client is [redis-rs](https://docs.rs/redis) with its tokio
//! [`ConnectionManager`](redis::aio::ConnectionManager): one multiplexed
//! connection per process, cloned freely, reconnecting on its own after a
//! server restart (so recovery needs no restart of the app), and a
//! [`Script`](redis::Script) type that sends `EVALSHA` and reloads the
//! script after `NOSCRIPT`. It is the most widely used Redis client in Rust
//! and pulls in little besides tokio; fred offers more (pools, cluster
//! routing, client-side caching), none of which one script call per request
//! needs.
//!
//! Every key this crate writes is named `{prefix}:{<credential id>}:…`,
//! with the credential's id inside a hash tag, so all of one credential's
//! keys land on one Redis Cluster slot and a script may touch them together.
//! The prefix (`keysmith` by default) lets several apps share one Redis.

mod config;
mod feed;
mod limiter;
mod quotas;

pub use config::{OutagePolicy, RedisConfig};
pub use feed::RedisChangeFeed;
pub use limiter::RedisRateLimiter;
pub use quotas::RedisQuotas;
