//! GCRA per credential in Redis: one script call per check decides and
//! counts atomically, so any number of instances share one budget.
//!
//! The arithmetic is the in-process limiter's, to the nanosecond: a request
//! costs one emission interval `T` (`window / requests`), fits when the
//! theoretical arrival time (TAT) is at most `T × (burst - 1)` ahead of now,
//! and moves the TAT to `max(TAT, now) + T`; a changed limit keeps the
//! requests counted and not yet refilled; a refund moves the TAT back by `T`.
//!
//! Time is the `now` the engine hands in (its clock), not Redis's `TIME`:
//! the engine decides expiry and grace periods on that clock too, tests
//! inject it, and every figure (`reset`, `retry_after`) is relative to it.
//! Instances whose clocks differ by `d` shift a key's budget by at most
//! `d / T` requests (NTP keeps `d` to milliseconds).
//!
//! Lua numbers are doubles, exact below 2^53: the TAT is kept as whole
//! seconds plus nanoseconds, and only differences from now (exact within
//! 104 days) are computed in nanoseconds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::limit::{GcraRateLimiter, RateLimitStatus, RateLimiter};
use keysmith_core::{Error, KeyId, RateLimit, Result};
use redis::Script;

use crate::config::{Health, OutagePolicy, RedisConfig, backend};

/// Counts one request. `KEYS[1]`: the credential's hash; `ARGV`: now
/// (seconds, nanoseconds), `T`, tolerance, burst, the limit's signature.
/// Answers `{allowed, remaining, reset, retry_after}` (nanoseconds).
const CHECK: &str = r"
local now_s, now_n = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval, tolerance, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local sig = ARGV[6]
local state = redis.call('HMGET', KEYS[1], 's', 'n', 'i', 'l')
local ahead = 0
local resized = true
if state[1] then
  ahead = (tonumber(state[1]) - now_s) * 1000000000 + (tonumber(state[2]) - now_n)
  if state[4] == sig then
    resized = false
  else
    local old = tonumber(state[3])
    local used = 0
    if ahead > 0 then
      used = math.floor(ahead / old)
      if used * old < ahead then used = used + 1 end
    end
    ahead = used * interval
  end
end
local function store(rel)
  local total = now_n + rel
  local carry = math.floor(total / 1000000000)
  redis.call('HSET', KEYS[1], 's', now_s + carry, 'n', total - carry * 1000000000, 'i', ARGV[3], 'l', sig)
  local ms = math.floor(math.max(rel, 0) / 1000000) + 1000
  redis.call('PEXPIRE', KEYS[1], ms)
end
if ahead > tolerance then
  if resized then store(ahead) end
  return {0, 0, ahead, ahead - tolerance}
end
local next = math.max(ahead, 0) + interval
store(next)
local remaining = math.floor((tolerance + interval - next) / interval)
if remaining > burst - 1 then remaining = burst - 1 end
return {1, remaining, next, 0}
";

/// Gives back one request. `KEYS[1]`: the credential's hash; `ARGV[1]`: the
/// limit's signature (a budget resized since holds nothing to give back).
const REFUND: &str = r"
local state = redis.call('HMGET', KEYS[1], 's', 'n', 'i', 'l')
if not state[1] or state[4] ~= ARGV[1] then return 0 end
local total = tonumber(state[2]) - tonumber(state[3])
local carry = math.floor(total / 1000000000)
redis.call('HSET', KEYS[1], 's', tonumber(state[1]) + carry, 'n', total - carry * 1000000000)
return 1
";

/// How a [`RedisRateLimiter`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisLimiterMode {
    /// Every check is one script call: exact across any number of
    /// instances, at the cost of one round trip per request.
    #[default]
    Strict,
}

/// A [`RateLimiter`] whose budgets live in Redis, shared by every instance
/// pointed at it. Keys: `{prefix}:{<lineage id>}:rl`.
///
/// When Redis cannot be reached: under [`OutagePolicy::FailOpen`] the check
/// is decided by an in-process [`GcraRateLimiter`] (limits then hold per
/// instance), under [`OutagePolicy::FailClosed`] it is an error (503). The
/// connection is re-established on its own once Redis is back. A Redis
/// restart (without persistence) loses every budget: each key starts again
/// with its full burst.
#[derive(Debug)]
pub struct RedisRateLimiter {
    config: RedisConfig,
    mode: RedisLimiterMode,
    check: Arc<Script>,
    refund: Arc<Script>,
    fallback: Arc<GcraRateLimiter>,
    health: Arc<Health>,
}

/// What the scripts need of a [`RateLimit`], computed as the in-process
/// limiter does (and refused for the same limits).
struct Gcra {
    interval: u64,
    tolerance: u64,
    burst: u32,
    signature: String,
}

impl Gcra {
    fn new(limit: &RateLimit, now: u64) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidInput { field: "rate_limit", reason: reason.to_owned() };
        if limit.requests == 0 {
            return Err(invalid("requests and window must be greater than zero"));
        }
        let burst = limit.burst.filter(|b| *b > 0).unwrap_or(limit.requests);
        let interval = u64::try_from((limit.window / limit.requests).as_nanos()).unwrap_or(u64::MAX);
        if interval == 0 {
            return Err(invalid("requests and window must be greater than zero"));
        }
        let tolerance = interval
            .checked_mul(u64::from(burst - 1))
            .filter(|t| now.checked_add(*t).and_then(|t| t.checked_add(interval)).is_some())
            .ok_or_else(|| invalid("the time to refill a full burst is too long"))?;
        let burst_part = limit.burst.map_or_else(|| "-".to_owned(), |b| b.to_string());
        let signature = format!("{}:{}:{burst_part}", limit.requests, limit.window.as_nanos());
        Ok(Self { interval, tolerance, burst, signature })
    }
}

impl RedisRateLimiter {
    /// A strict limiter on `config`'s connection, prefix and outage policy.
    #[must_use]
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            mode: RedisLimiterMode::Strict,
            check: Arc::new(Script::new(CHECK)),
            refund: Arc::new(Script::new(REFUND)),
            fallback: Arc::new(GcraRateLimiter::new()),
            health: Arc::new(Health::new("rate_limit")),
        }
    }

    /// How this limiter decides.
    #[must_use]
    pub fn mode(&self) -> RedisLimiterMode {
        self.mode
    }

    /// Gives back one request of `key` counted at `at` against `limit`, and
    /// waits for Redis to confirm: true if there was one to give back (a
    /// budget resized or expired since holds nothing of it).
    /// [`RateLimiter::refund`] does this in the background.
    ///
    /// # Errors
    /// A limit the in-process limiter refuses too; Redis failed.
    pub async fn give_back(&self, key: KeyId, limit: &RateLimit, at: DateTime<Utc>) -> Result<bool> {
        let gcra = Gcra::new(limit, split(at).2)?;
        let done: i64 = self
            .refund
            .key(self.key(key))
            .arg(gcra.signature)
            .invoke_async(&mut self.config.connection())
            .await
            .map_err(backend)?;
        Ok(done == 1)
    }

    fn key(&self, lineage: KeyId) -> String {
        self.config.key(lineage, "rl")
    }
}

/// `at` as whole seconds and nanoseconds since the epoch (0 before it).
fn split(at: DateTime<Utc>) -> (u64, u32, u64) {
    let secs = u64::try_from(at.timestamp()).unwrap_or(0);
    let nanos = if secs == 0 && at.timestamp() < 0 { 0 } else { at.timestamp_subsec_nanos() };
    (secs, nanos, secs.saturating_mul(1_000_000_000).saturating_add(u64::from(nanos)))
}

fn nanos(value: i64) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(0))
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        let (secs, subsec, total) = split(now);
        let gcra = Gcra::new(limit, total)?;
        let answer: redis::RedisResult<(i64, i64, i64, i64)> = self
            .check
            .key(self.key(key))
            .arg(secs)
            .arg(subsec)
            .arg(gcra.interval)
            .arg(gcra.tolerance)
            .arg(gcra.burst)
            .arg(&gcra.signature)
            .invoke_async(&mut self.config.connection())
            .await;
        match answer {
            Ok((allowed, remaining, reset, retry_after)) => {
                self.health.ok();
                Ok(RateLimitStatus {
                    allowed: allowed == 1,
                    limit: gcra.burst,
                    remaining: u32::try_from(remaining).unwrap_or(0),
                    reset: nanos(reset),
                    retry_after: (allowed != 1).then(|| nanos(retry_after)),
                })
            }
            Err(error) => {
                self.health.failed(self.config.outage, &error);
                match self.config.outage {
                    OutagePolicy::FailOpen => self.fallback.check(key, limit, now).await,
                    OutagePolicy::FailClosed => Err(backend(error)),
                }
            }
        }
    }

    /// Starts the give-back in the background (on the current tokio
    /// runtime; without one, nothing is given back). If Redis cannot be
    /// reached the in-process fallback gets the refund.
    fn refund(&self, key: KeyId, limit: &RateLimit, at: DateTime<Utc>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(gcra) = Gcra::new(limit, split(at).2) else {
            return;
        };
        let (script, mut conn, name) = (Arc::clone(&self.refund), self.config.connection(), self.key(key));
        let (fallback, health, outage, limit) =
            (Arc::clone(&self.fallback), Arc::clone(&self.health), self.config.outage, *limit);
        runtime.spawn(async move {
            let done: redis::RedisResult<i64> = script.key(name).arg(gcra.signature).invoke_async(&mut conn).await;
            match done {
                Ok(_) => health.ok(),
                Err(error) => {
                    health.failed(outage, &error);
                    fallback.refund(key, &limit, at);
                }
            }
        });
    }
}
