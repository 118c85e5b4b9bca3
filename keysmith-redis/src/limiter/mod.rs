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

mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::limit::Subject;
use keysmith_core::limit::{GcraRateLimiter, GiveBack, RateLimitStatus, RateLimiter};
use keysmith_core::{Error, KeyId, RateLimit, Result, Tenant};
use redis::Script;

use self::local::LocalFirst;
use crate::config::{Health, OutagePolicy, RedisConfig, backend, detach, invoke};

/// Counts one request. `KEYS[1]`: the credential's hash; `ARGV`: now
/// (seconds, nanoseconds), `T`, tolerance, burst, the limit's signature,
/// then requests to add first without deciding on them (admitted by an
/// instance on its own, `local_first`) and `1` to decide on one more
/// request or `0` only to add those. Answers `{allowed, remaining, reset,
/// retry_after}` (nanoseconds; `reset` is the TAT's distance from now).
const CHECK: &str = r"
local now_s, now_n = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval, tolerance, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local sig = ARGV[6]
local replay, decide = tonumber(ARGV[7]), ARGV[8] == '1'
local state = redis.call('HMGET', KEYS[1], 's', 'n', 'i', 'l')
local ahead = 0
local dirty = false
if state[1] then
  ahead = (tonumber(state[1]) - now_s) * 1000000000 + (tonumber(state[2]) - now_n)
  if state[4] ~= sig then
    local old = tonumber(state[3])
    local used = 0
    if ahead > 0 then
      used = math.floor(ahead / old)
      if used * old < ahead then used = used + 1 end
    end
    ahead = used * interval
    dirty = true
  end
end
if replay > 0 then
  ahead = math.max(ahead, 0) + replay * interval
  dirty = true
end
local function store(rel)
  local total = now_n + rel
  local carry = math.floor(total / 1000000000)
  redis.call('HSET', KEYS[1], 's', now_s + carry, 'n', total - carry * 1000000000, 'i', ARGV[3], 'l', sig)
  local ms = math.floor(math.max(rel, 0) / 1000000) + 1000
  redis.call('PEXPIRE', KEYS[1], ms)
end
if not decide then
  if dirty then store(ahead) end
  return {1, 0, ahead, 0}
end
if ahead > tolerance then
  if dirty then store(ahead) end
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

/// A [`RateLimiter`] whose budgets live in Redis, shared by every instance
/// pointed at it. Keys: `{prefix}:{<lineage id>}:rl`.
///
/// **Strict** ([`new`](Self::new)): every check is one script call (one
/// round trip), deciding and counting atomically, so a limit is exact
/// across any number of instances. Answers and figures are the in-process
/// [`GcraRateLimiter`]'s for the same `now`, to the nanosecond while a full
/// burst refills within 104 days (within a few nanoseconds beyond: the
/// script's numbers are doubles).
///
/// **Local first** ([`local_first`](Self::local_first)): most checks are
/// decided in process from this instance's view of the budget, and the
/// requests so admitted are sent to Redis in the background; a key near or
/// over its limit is checked strictly. The accuracy bound is stated there.
///
/// When Redis cannot be reached: under [`OutagePolicy::FailOpen`] the check
/// is decided by an in-process [`GcraRateLimiter`] (limits then hold per
/// instance), under [`OutagePolicy::FailClosed`] it is an error (503). The
/// connection is re-established on its own once Redis is back. A Redis
/// restart (without persistence) loses every budget: each key starts again
/// with its full burst.
#[derive(Debug)]
pub struct RedisRateLimiter {
    remote: Arc<Remote>,
    refund: Arc<Script>,
    fallback: Arc<GcraRateLimiter>,
    health: Arc<Health>,
    local: Option<Arc<LocalFirst>>,
}

/// The connection and the checking script, shared with the background sync
/// of `local_first`.
#[derive(Debug)]
struct Remote {
    config: RedisConfig,
    check: Script,
}

/// Redis's answer to a check: the status, and where the key's TAT now is
/// (nanoseconds since the epoch), which `local_first` keeps as its view.
struct Answer {
    status: RateLimitStatus,
    tat: u64,
}

impl Remote {
    /// Adds `replay` requests admitted elsewhere, then (if `decide`) counts
    /// one more, all at `now`.
    async fn call(
        &self, key: &str, gcra: &Gcra, now: DateTime<Utc>, replay: u32, decide: bool,
    ) -> redis::RedisResult<Answer> {
        let (secs, subsec, total) = split(now);
        let mut call = self.check.key(key);
        call.arg(secs).arg(subsec).arg(gcra.interval).arg(gcra.tolerance).arg(gcra.burst).arg(&gcra.signature);
        call.arg(replay).arg(if decide { "1" } else { "0" });
        let (allowed, remaining, reset, retry_after): (i64, i64, i64, i64) = invoke(&call, &self.config.link).await?;
        let status = RateLimitStatus {
            allowed: allowed == 1,
            limit: gcra.burst,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: nanos(reset),
            retry_after: (allowed != 1).then(|| nanos(retry_after)),
        };
        let tat = total.saturating_add(u64::try_from(reset).unwrap_or(0));
        Ok(Answer { status, tat })
    }
}

/// What the scripts need of a [`RateLimit`], computed as the in-process
/// limiter does (and refused for the same limits).
#[derive(Debug, Clone)]
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

impl Remote {
    /// The Redis key of `subject`'s budget for `limit`:
    /// `{prefix}:{<lineage id>}:rl:<name>` for a key (the credential's hash
    /// tag, as its other keys have), `{prefix}:{owner:…}:rl:<name>` for an
    /// owner.
    fn bucket(&self, subject: Subject<'_>, limit: &RateLimit) -> String {
        self.config.subject_key(subject, &format!("rl:{}", limit.name))
    }
}

/// A [`Subject`] owned, for a refund finished in the background.
#[derive(Debug, Clone)]
enum OwnedSubject {
    Key(KeyId),
    Owner(Tenant, String),
}

impl OwnedSubject {
    fn of(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Key(id) => Self::Key(id),
            Subject::Owner { tenant, owner_id } => Self::Owner(tenant.clone(), owner_id.to_owned()),
        }
    }

    fn borrow(&self) -> Subject<'_> {
        match self {
            Self::Key(id) => Subject::Key(*id),
            Self::Owner(tenant, owner_id) => Subject::Owner { tenant, owner_id },
        }
    }
}

impl RedisRateLimiter {
    /// A strict limiter on `config`'s connection, prefix and outage policy.
    #[must_use]
    pub fn new(config: RedisConfig) -> Self {
        let health = Arc::new(Health::new("rate_limit", &config));
        Self {
            remote: Arc::new(Remote { config, check: Script::new(CHECK) }),
            refund: Arc::new(Script::new(REFUND)),
            fallback: Arc::new(GcraRateLimiter::new()),
            health,
            local: None,
        }
    }

    /// Decides locally first: a check is answered in process from this
    /// instance's view of the key's budget (Redis's state at its last
    /// answer, plus what this instance admitted that Redis has not counted
    /// yet), and what it admits is sent to Redis every `sync_interval` in
    /// the background (also refreshing the view of every key used since).
    /// A check goes to Redis (strict, sending this instance's unsent
    /// requests of the key first) when the key is new to this instance, its
    /// limit changed, the request would leave less than half of the burst
    /// (rounded up) in the view, or Redis has not yet counted `L` requests
    /// this instance admitted on its own, `L = ⌊burst / 20⌋` (at least 1).
    ///
    /// **Accuracy.** With `N` instances, a key gets at most `2 × N × L`
    /// requests more than its limit allows, that is at most `N × 10%` of
    /// its burst: Redis has not counted at most `L` requests of each
    /// instance at any time, so it can admit up to `N × L` too many
    /// strictly, and each instance can admit up to `L` on its own from a
    /// view older than the key's exhaustion. This holds while `N × L` is at
    /// most half the burst: up to ten instances for a burst of 20 or more,
    /// `⌈burst / 2⌉` below that (beyond, use strict). A key near its limit
    /// is checked strictly, so small bursts are exact (3 requests over 8
    /// instances: 3). Answers and figures are the in-process limiter's for
    /// this instance's view; requests decided while Redis is down (below)
    /// are outside the bound. Even under [`OutagePolicy::FailClosed`] an
    /// instance still admits, while Redis is down, up to `L` requests of a
    /// key it has a view of (they are sent once Redis is back); then it
    /// answers errors.
    ///
    /// A check decided locally costs no round trip; about one in `L`
    /// checks of a busy key, and every check of a key near its limit, costs
    /// one. [`sync`](Self::sync) sends everything now (call it before
    /// shutting down so no admitted request goes uncounted).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero `sync_interval`.
    pub fn local_first(mut self, sync_interval: Duration) -> Result<Self> {
        if sync_interval.is_zero() {
            return Err(Error::InvalidInput { field: "sync_interval", reason: "must be greater than zero".to_owned() });
        }
        self.local = Some(Arc::new(LocalFirst::new(sync_interval)));
        Ok(self)
    }

    /// Under `local_first`: sends every request this instance admitted on
    /// its own to Redis and refreshes its view of every key used since the
    /// last sync (the background task does this every `sync_interval`);
    /// keys unused since are forgotten. Nothing to do in strict mode.
    ///
    /// # Errors
    /// Redis failed for at least one key (what it could not take is kept
    /// and sent at the next sync).
    pub async fn sync(&self) -> Result<()> {
        match &self.local {
            Some(local) => local.sync(&self.remote).await.map_err(backend),
            None => Ok(()),
        }
    }

    /// Gives back one request of `key` counted at `at` against `limit`, and
    /// waits for Redis to confirm: true if there was one to give back (a
    /// budget resized or expired since holds nothing of it).
    /// [`RateLimiter::refund`] does this in the background.
    ///
    /// # Errors
    /// A limit the in-process limiter refuses too; Redis failed.
    pub async fn give_back(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) -> Result<bool> {
        let gcra = Gcra::new(limit, split(at).2)?;
        let mut call = self.refund.key(self.remote.bucket(subject, limit));
        call.arg(gcra.signature);
        let done: i64 = invoke(&call, &self.remote.config.link).await.map_err(backend)?;
        Ok(done == 1)
    }

    /// One round trip: sends this instance's unsent requests of `key`
    /// (`local_first`) and decides on this one.
    async fn check_strictly(
        &self, subject: Subject<'_>, key: &str, limit: &RateLimit, now: DateTime<Utc>,
    ) -> Result<RateLimitStatus> {
        let gcra = Gcra::new(limit, split(now).2)?;
        if !self.health.available() {
            return match self.remote.config.outage {
                OutagePolicy::FailOpen => self.fallback.check(subject, limit, now).await,
                OutagePolicy::FailClosed => Err(self.health.unavailable()),
            };
        }
        let replay = self.local.as_ref().map_or(0, |local| local.take_unsent(key));
        match self.remote.call(key, &gcra, now, replay, true).await {
            Ok(answer) => {
                if let Some(local) = &self.local {
                    local.start_sync(&self.remote);
                    local.remember(key, limit, gcra, now, (answer.tat, replay));
                }
                Ok(answer.status)
            }
            Err(error) => {
                if let Some(local) = &self.local {
                    local.keep_unsent(key, replay);
                }
                self.health.failed(&error);
                match self.remote.config.outage {
                    OutagePolicy::FailOpen => self.fallback.check(subject, limit, now).await,
                    OutagePolicy::FailClosed => Err(backend(error)),
                }
            }
        }
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
    async fn check(&self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        let key = self.remote.bucket(subject, limit);
        if let Some(status) = self.local.as_ref().and_then(|local| local.decide(&key, limit, now)) {
            return Ok(status);
        }
        self.check_strictly(subject, &key, limit, now).await
    }

    /// Under `local_first`, a check this instance can decide on its own.
    fn check_ready(
        &self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>,
    ) -> Option<Result<RateLimitStatus>> {
        let local = self.local.as_ref()?;
        local.decide(&self.remote.bucket(subject, limit), limit, now).map(Ok)
    }

    /// A request still unsent (`local_first`) is taken back here; otherwise
    /// the give-back starts in the background (on the current tokio
    /// runtime; without one, nothing is given back). If Redis cannot be
    /// reached the in-process fallback gets the refund.
    fn refund(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) {
        detach(self.refund_then(subject, limit, at));
    }

    /// [`refund`](RateLimiter::refund)'s give-back to await: one round trip
    /// to Redis (`None` when the request was still unsent under
    /// `local_first`, or decided in process while Redis is down).
    fn refund_then(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) -> Option<GiveBack> {
        let name = self.remote.bucket(subject, limit);
        if self.local.as_ref().is_some_and(|local| local.take_back(&name, limit)) {
            return None;
        }
        let gcra = Gcra::new(limit, split(at).2).ok()?;
        if !self.health.available() {
            // Redis is known down: the check was decided in process.
            self.fallback.refund(subject, limit, at);
            return None;
        }
        let (script, conn, subject) =
            (Arc::clone(&self.refund), Arc::clone(&self.remote.config.link), OwnedSubject::of(subject));
        let (fallback, health, limit) = (Arc::clone(&self.fallback), Arc::clone(&self.health), limit.clone());
        Some(Box::pin(async move {
            let mut call = script.key(name);
            call.arg(gcra.signature);
            let done: redis::RedisResult<i64> = invoke(&call, &conn).await;
            if let Err(error) = done {
                health.failed(&error);
                fallback.refund(subject.borrow(), &limit, at);
            }
        }))
    }
}
