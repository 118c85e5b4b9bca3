//! Daily and monthly quotas counted in Redis, so a quota is exact across
//! every instance sharing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::limit::Subject;
use keysmith_core::usage::{QuotaCounter, QuotaRemaining, stored_requests};
use keysmith_core::{Key, Period, Quota, Result, Store};
use redis::Script;

use crate::config::{Health, OutagePolicy, RedisConfig, backend, invoke};

/// Checks and counts one request in one step. `KEYS`: the day's and the
/// month's counters; `ARGV`: daily and monthly limits (`-1`: none), their
/// lifetimes in seconds, and optionally the counts to start a missing
/// counter from. Answers `{0, day, month}` counted, with the day's and the
/// month's counts after it (what is left follows from the limits), `{1}`
/// day full, `{2}` month full, `{-1}` a counter is missing and no start
/// was given.
const CONSUME: &str = r"
local day, month = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if not day or not month then
  if ARGV[5] == nil then return {-1} end
  if not day then day = ARGV[5]; redis.call('SET', KEYS[1], day, 'EX', ARGV[3]) end
  if not month then month = ARGV[6]; redis.call('SET', KEYS[2], month, 'EX', ARGV[4]) end
end
local daily, monthly = tonumber(ARGV[1]), tonumber(ARGV[2])
if monthly >= 0 and tonumber(month) >= monthly then return {2} end
if daily >= 0 and tonumber(day) >= daily then return {1} end
return {0, redis.call('INCRBY', KEYS[1], 1), redis.call('INCRBY', KEYS[2], 1)}
";

/// Gives back one request from each counter that holds one.
const REFUND: &str = r"
for _, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n > 0 then redis.call('DECRBY', key, 1) end
end
return 1
";

/// During an outage: per subject (its
/// [`storage_key`](Subject::storage_key)) and period, the period's start
/// and the requests counted in it.
type LocalCounts = HashMap<(String, Period), (DateTime<Utc>, u64)>;

/// How long a period's counter is kept after the period ends (instances'
/// clocks differ a little; the counter of an ended period is never read).
const KEEP_AFTER_PERIOD_SECS: i64 = 3600;

/// A [`QuotaCounter`] shared by every instance pointed at one Redis: each
/// subject (a key's lineage, or its owner under `limit_by: owner`) has a
/// counter per UTC day and month (`{prefix}:{<lineage id>}:q:day:<date>`,
/// `…:q:month:<date>`; an owner's hash tag is `{owner:…}`, as
/// [`RedisConfig::subject_key`] names it) that expires after its period;
/// check and count are one script, so a quota is exact across instances and
/// a refused request counts nothing. The script answers the counts after
/// the request, so a passed request knows what is left of its day and
/// month ([`QuotaRemaining`]).
///
/// A counter missing from Redis (first use, or Redis restarted) starts from
/// what the store has recorded for the period, so a restart loses only the
/// requests not yet written by the usage recorder.
///
/// When Redis cannot be reached: under [`OutagePolicy::FailOpen`] requests
/// are counted in process, from the store's records plus what this
/// instance accepted during the outage (a quota then holds per instance);
/// under [`OutagePolicy::FailClosed`] it is an error (503).
#[derive(Debug)]
pub struct RedisQuotas {
    config: RedisConfig,
    consume: Script,
    refund: Arc<Script>,
    health: Arc<Health>,
    local: Arc<Mutex<LocalCounts>>,
}

impl RedisQuotas {
    /// Quotas on `config`'s connection, prefix and outage policy.
    #[must_use]
    pub fn new(config: RedisConfig) -> Self {
        Self {
            config,
            consume: Script::new(CONSUME),
            refund: Arc::new(Script::new(REFUND)),
            health: Arc::new(Health::new("quota")),
            local: Arc::default(),
        }
    }

    fn keys(&self, subject: Subject<'_>, at: DateTime<Utc>) -> [String; 2] {
        [Period::Day, Period::Month].map(|period| {
            let start = period.start_of(at).format("%Y-%m-%d");
            self.config.subject_key(subject, &format!("q:{}:{start}", period.as_str()))
        })
    }

    /// Counts in process while Redis is unreachable.
    async fn consume_locally(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>> {
        let holder = subject.storage_key();
        let mut counts = [0; 2];
        for (count, period) in counts.iter_mut().zip([Period::Day, Period::Month]) {
            let start = period.start_of(now);
            let known = self.lock().get(&(holder.clone(), period)).filter(|(s, _)| *s == start).map(|(_, n)| *n);
            *count = match known {
                Some(n) => n,
                None => stored_requests(store, &key.tenant, subject, period, now).await?,
            };
        }
        let mut local = self.lock();
        let mut used = [0; 2];
        for ((used, seeded), period) in used.iter_mut().zip(counts).zip([Period::Day, Period::Month]) {
            let start = period.start_of(now);
            let entry = local.entry((holder.clone(), period)).or_insert((start, seeded));
            if entry.0 != start {
                *entry = (start, seeded);
            }
            *used = entry.1;
        }
        let left = match QuotaRemaining::check(quota, used[0], used[1]) {
            Ok(left) => left,
            Err(period) => return Ok(Err(period)),
        };
        for period in [Period::Day, Period::Month] {
            if let Some(entry) = local.get_mut(&(holder.clone(), period)) {
                entry.1 += 1;
            }
        }
        Ok(Ok(left))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalCounts> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Redis answered: what was counted in process belongs to the outage.
    fn recovered(&self) {
        self.health.ok();
        let mut local = self.lock();
        if !local.is_empty() {
            local.clear();
        }
    }
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

#[async_trait]
impl QuotaCounter for RedisQuotas {
    async fn try_consume(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>> {
        let keys = self.keys(subject, now);
        let ttl = [Period::Day, Period::Month]
            .map(|p| (p.next_start(now) - now).num_seconds().max(0) + KEEP_AFTER_PERIOD_SECS);
        let mut seeds: Option<[u64; 2]> = None;
        loop {
            let mut call = self.consume.key(&keys[0]);
            call.key(&keys[1]).arg(limit_arg(quota.daily)).arg(limit_arg(quota.monthly)).arg(ttl[0]).arg(ttl[1]);
            if let Some(seeds) = seeds {
                call.arg(seeds[0]).arg(seeds[1]);
            }
            let answer: redis::RedisResult<Vec<i64>> = invoke(&call, &self.config.link).await;
            match answer {
                Ok(answer) if answer == [-1] && seeds.is_none() => {
                    seeds = Some([
                        stored_requests(store, &key.tenant, subject, Period::Day, now).await?,
                        stored_requests(store, &key.tenant, subject, Period::Month, now).await?,
                    ]);
                }
                Ok(answer) => {
                    self.recovered();
                    let count = |n: i64| u64::try_from(n).unwrap_or(0);
                    return Ok(match answer[..] {
                        [0, day, month] => Ok(QuotaRemaining::left(quota, count(day), count(month))),
                        [2] => Err(Period::Month),
                        _ => Err(Period::Day),
                    });
                }
                Err(error) => {
                    self.health.failed(self.config.outage, &error);
                    return match self.config.outage {
                        OutagePolicy::FailOpen => self.consume_locally(store, key, subject, quota, now).await,
                        OutagePolicy::FailClosed => Err(backend(error)),
                    };
                }
            }
        }
    }

    /// Starts the give-back in the background (on the current tokio
    /// runtime; without one, nothing is given back).
    fn refund(&self, subject: Subject<'_>, at: DateTime<Utc>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (script, conn, keys) = (Arc::clone(&self.refund), Arc::clone(&self.config.link), self.keys(subject, at));
        let holder = subject.storage_key();
        let (health, outage, local) = (Arc::clone(&self.health), self.config.outage, Arc::clone(&self.local));
        runtime.spawn(async move {
            let mut call = script.key(&keys[0]);
            call.key(&keys[1]);
            let done: redis::RedisResult<i64> = invoke(&call, &conn).await;
            match done {
                Ok(_) => health.ok(),
                Err(error) => {
                    health.failed(outage, &error);
                    let mut local = local.lock().unwrap_or_else(PoisonError::into_inner);
                    for period in [Period::Day, Period::Month] {
                        if let Some(entry) = local.get_mut(&(holder.clone(), period))
                            && entry.0 == period.start_of(at)
                        {
                            entry.1 = entry.1.saturating_sub(1);
                        }
                    }
                }
            }
        });
    }
}
