//! Daily and monthly quotas counted in Redis, so a quota is exact across
//! every instance sharing it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::limit::{GiveBack, Subject};
use keysmith_core::usage::{QuotaCounter, QuotaRemaining, stored_requests};
use keysmith_core::{Key, Period, Quota, Result, Store};
use redis::Script;

use crate::config::{Health, Link, OutagePolicy, Recovery, RedisConfig, backend, detach, invoke};

/// Checks and counts one request in one step. `KEYS`: the day's and the
/// month's counters, then when each was started (`…:born`); `ARGV`: daily
/// and monthly limits (`-1`: none), their lifetimes in seconds, and
/// optionally the counts to start a missing counter from (its `born` is
/// then set to Redis's clock, milliseconds). Answers `{0, day, month}`
/// counted, with the day's and the month's counts after it (what is left
/// follows from the limits), `{1}` day full, `{2}` month full, `{-1}` a
/// counter is missing and no start was given.
const CONSUME: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local day, month = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if not day or not month then
  if ARGV[5] == nil then return {-1} end
  if not day then
    day = ARGV[5]
    redis.call('SET', KEYS[1], day, 'EX', ARGV[3])
    redis.call('SET', KEYS[3], now, 'EX', ARGV[3])
  end
  if not month then
    month = ARGV[6]
    redis.call('SET', KEYS[2], month, 'EX', ARGV[4])
    redis.call('SET', KEYS[4], now, 'EX', ARGV[4])
  end
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

/// Adds what an instance admitted during an outage to a counter: `KEYS[1]`
/// the counter, `KEYS[2]` when it was started (Redis's clock, ms); `ARGV`
/// triples of a slice of time's start and end (wall clock, ms) and the
/// requests admitted in it, then the width of one slice (ms). Only what
/// was admitted after the counter started is added (a slice of one width
/// that straddles the start whole, since its last moments were not yet
/// written to the store; a wider one, merged, its share by time): a
/// counter started during the outage (a new day, a new key, or
/// Redis lost its data) began from the store's records, which hold what
/// was admitted before. A missing counter is left missing (it starts from
/// the store's records). Answers the count, or `-1` when missing.
const REPLAY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local born = tonumber(redis.call('GET', KEYS[2]) or '0')
local add = 0
local width = tonumber(ARGV[#ARGV])
for i = 1, #ARGV - 1, 3 do
  local s, e, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if s >= born or (e > born and e - s <= width) then
    add = add + n
  elseif e > born then
    add = add + math.floor(n * (e - born) / (e - s) + 0.5)
  end
end
if add == 0 then return tonumber(redis.call('GET', KEYS[1])) end
return redis.call('INCRBY', KEYS[1], add)
";

/// Admissions during an outage are kept by time in slices this long
/// (wall clock, ms), to be told apart from a counter's start.
const ADMISSION_SLICE_MS: u64 = 100;

/// Past this many slices a subject's are merged two by two (each spanning
/// both), so a long outage costs bounded memory and coarser times.
const MAX_ADMISSION_SLICES: usize = 1024;

/// What one instance admitted during an outage, by time: (slice start and
/// end, wall clock ms; requests), in order.
#[derive(Debug, Default)]
struct Admissions(Vec<(u64, u64, u64)>);

impl Admissions {
    fn add(&mut self, at_ms: u64) {
        let slice = at_ms - at_ms % ADMISSION_SLICE_MS;
        match self.0.last_mut() {
            Some((start, _, n)) if *start >= slice => *n += 1,
            _ => self.0.push((slice, slice + ADMISSION_SLICE_MS, 1)),
        }
        if self.0.len() > MAX_ADMISSION_SLICES {
            self.0 = self
                .0
                .chunks(2)
                .map(|pair| (pair[0].0, pair[pair.len() - 1].1, pair.iter().map(|(_, _, n)| n).sum()))
                .collect();
        }
    }

    /// Takes one back (a refund), from the latest.
    fn take_back(&mut self) {
        if let Some((_, _, n)) = self.0.last_mut() {
            *n -= 1;
            if *n == 0 {
                self.0.pop();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn merge(&mut self, other: Self) {
        self.0.extend(other.0);
        self.0.sort_unstable_by_key(|(start, _, _)| *start);
    }
}

/// The wall clock in milliseconds since the epoch, which Redis's clock (the
/// counters' starts) is compared with.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// During an outage: per subject (its
/// [`storage_key`](Subject::storage_key)), period and the period's start,
/// what this instance counts in process (a period that ended during the
/// outage is kept until its admissions are sent).
type LocalCounts = HashMap<(String, Period, DateTime<Utc>), LocalCount>;

/// One subject's period counted in process during an outage.
#[derive(Debug)]
struct LocalCount {
    /// The requests counted in it: the store's records when the outage
    /// began, and what this instance admitted since.
    count: u64,
    /// What this instance admitted during the outage (refunds taken off),
    /// by time, added to Redis's counter once Redis answers again.
    admitted: Admissions,
    /// The period's counter in Redis.
    counter: String,
}

/// How long a period's counter is kept after the period ends (instances'
/// clocks differ a little; the counter of an ended period is never read).
const KEEP_AFTER_PERIOD_SECS: i64 = 3600;

/// A [`QuotaCounter`] shared by every instance pointed at one Redis: each
/// subject (a key's lineage, or its owner under `limit_by: owner`) has a
/// counter per UTC day and month (`{prefix}:{<lineage id>}:q:day:<date>`,
/// `…:q:month:<date>`, each with `…:born`, when it was started, by Redis's
/// clock; an owner's hash tag is `{owner:…}`, as
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
/// under [`OutagePolicy::FailClosed`] it is an error (503). Once Redis
/// answers again, each instance adds what it admitted during the outage to
/// the counters Redis kept, before it counts there again, so the requests
/// admitted during a partition count against the rest of the day and
/// month (a counter Redis lost starts again from the store's records).
#[derive(Debug)]
pub struct RedisQuotas {
    config: RedisConfig,
    consume: Script,
    refund: Arc<Script>,
    health: Arc<Health>,
    local: Arc<Mutex<LocalCounts>>,
    /// Set (under `local`'s lock) when a request was counted in process, so
    /// that a request counted in Redis takes the lock only when there is
    /// something to drop.
    counted_locally: AtomicBool,
}

impl RedisQuotas {
    /// Quotas on `config`'s connection, prefix and outage policy.
    #[must_use]
    pub fn new(config: RedisConfig) -> Self {
        let local: Arc<Mutex<LocalCounts>> = Arc::default();
        let (replay, link, counts) = (Arc::new(Script::new(REPLAY)), Arc::clone(&config.link), Arc::clone(&local));
        let recovery: Recovery = Arc::new(move || {
            let (replay, link, counts) = (Arc::clone(&replay), Arc::clone(&link), Arc::clone(&counts));
            Box::pin(async move { catch_up(&replay, &link, &counts).await })
        });
        Self {
            health: Arc::new(Health::new("quota", &config).with_recovery(recovery)),
            config,
            consume: Script::new(CONSUME),
            refund: Arc::new(Script::new(REFUND)),
            local,
            counted_locally: AtomicBool::new(false),
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
        let periods = [Period::Day, Period::Month];
        let mut seeds = [0; 2];
        for (seed, period) in seeds.iter_mut().zip(periods) {
            let start = period.start_of(now);
            let known = lock(&self.local).get(&(holder.clone(), period, start)).map(|c| c.count);
            *seed = match known {
                Some(n) => n,
                None => stored_requests(store, &key.tenant, subject, period, now).await?,
            };
        }
        let counters = self.keys(subject, now);
        let mut local = lock(&self.local);
        self.counted_locally.store(true, Ordering::Relaxed);
        let mut used = [0; 2];
        for (((used, seed), period), counter) in used.iter_mut().zip(seeds).zip(periods).zip(counters) {
            let fresh = || LocalCount { count: seed, admitted: Admissions::default(), counter };
            *used = local.entry((holder.clone(), period, period.start_of(now))).or_insert_with(fresh).count;
        }
        let left = match QuotaRemaining::check(quota, used[0], used[1]) {
            Ok(left) => left,
            Err(period) => return Ok(Err(period)),
        };
        let at_ms = wall_clock_ms();
        for period in periods {
            if let Some(entry) = local.get_mut(&(holder.clone(), period, period.start_of(now))) {
                entry.count += 1;
                entry.admitted.add(at_ms);
            }
        }
        Ok(Ok(left))
    }

    /// A call answered while no outage is known: what an instance counted
    /// in process after the probe caught up (a request decided just as
    /// Redis came back) is dropped, so that the next outage starts from
    /// the store.
    fn recovered(&self) {
        if self.health.is_up() && self.counted_locally.load(Ordering::Relaxed) {
            let mut local = lock(&self.local);
            local.clear();
            self.counted_locally.store(false, Ordering::Relaxed);
        }
    }
}

fn lock(local: &Mutex<LocalCounts>) -> std::sync::MutexGuard<'_, LocalCounts> {
    local.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds what this instance admitted during the outage to Redis's counters,
/// once Redis answers a probe: true when every one is sent (the in-process
/// counts are then dropped), false when Redis failed meanwhile (what was
/// not sent is kept for the next probe).
async fn catch_up(replay: &Script, link: &Arc<Link>, local: &Mutex<LocalCounts>) -> bool {
    // Requests decided in process while this runs are sent by the next
    // round; a few rounds at most, then what is left goes.
    for _ in 0..3 {
        let mut pending: Vec<(String, Admissions)> = lock(local)
            .values_mut()
            .filter(|count| !count.admitted.is_empty())
            .map(|count| (count.counter.clone(), std::mem::take(&mut count.admitted)))
            .collect();
        if pending.is_empty() {
            break;
        }
        for i in 0..pending.len() {
            let (counter, admitted) = &pending[i];
            let mut call = replay.key(counter);
            call.key(format!("{counter}:born"));
            for (start, end, n) in &admitted.0 {
                call.arg(*start).arg(*end).arg(*n);
            }
            call.arg(ADMISSION_SLICE_MS);
            if invoke::<i64>(&call, link).await.is_err() {
                // Kept for the next probe: this one and those not yet sent.
                let mut local = lock(local);
                for (counter, admitted) in pending.drain(i..) {
                    if let Some(count) = local.values_mut().find(|count| count.counter == counter) {
                        count.admitted.merge(admitted);
                    }
                }
                return false;
            }
        }
    }
    lock(local).clear();
    true
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

#[async_trait]
impl QuotaCounter for RedisQuotas {
    async fn try_consume(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>> {
        if !self.health.available() {
            return match self.config.outage {
                OutagePolicy::FailOpen => self.consume_locally(store, key, subject, quota, now).await,
                OutagePolicy::FailClosed => Err(self.health.unavailable()),
            };
        }
        let keys = self.keys(subject, now);
        let ttl = [Period::Day, Period::Month]
            .map(|p| (p.next_start(now) - now).num_seconds().max(0) + KEEP_AFTER_PERIOD_SECS);
        let mut seeds: Option<[u64; 2]> = None;
        loop {
            let mut call = self.consume.key(&keys[0]);
            call.key(&keys[1]).key(format!("{}:born", keys[0])).key(format!("{}:born", keys[1]));
            call.arg(limit_arg(quota.daily)).arg(limit_arg(quota.monthly)).arg(ttl[0]).arg(ttl[1]);
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
                    self.health.failed(&error);
                    return match self.config.outage {
                        OutagePolicy::FailOpen => self.consume_locally(store, key, subject, quota, now).await,
                        OutagePolicy::FailClosed => Err(backend(error)),
                    };
                }
            }
        }
    }

    /// Starts the give-back in the background (on the current tokio
    /// runtime; without one, nothing is given back). While Redis is known
    /// down the request was counted in process, and is given back there.
    fn refund(&self, subject: Subject<'_>, at: DateTime<Utc>) {
        detach(self.refund_then(subject, at));
    }

    /// [`refund`](QuotaCounter::refund)'s give-back to await: one round
    /// trip to Redis (`None` when Redis is known down: given back in
    /// process).
    fn refund_then(&self, subject: Subject<'_>, at: DateTime<Utc>) -> Option<GiveBack> {
        let holder = subject.storage_key();
        let local = Arc::clone(&self.local);
        let give_back_locally = move || {
            let mut local = lock(&local);
            for period in [Period::Day, Period::Month] {
                if let Some(entry) = local.get_mut(&(holder.clone(), period, period.start_of(at))) {
                    entry.count = entry.count.saturating_sub(1);
                    entry.admitted.take_back();
                }
            }
        };
        if !self.health.available() {
            give_back_locally();
            return None;
        }
        let (script, conn, keys) = (Arc::clone(&self.refund), Arc::clone(&self.config.link), self.keys(subject, at));
        let health = Arc::clone(&self.health);
        Some(Box::pin(async move {
            let mut call = script.key(&keys[0]);
            call.key(&keys[1]);
            let done: redis::RedisResult<i64> = invoke(&call, &conn).await;
            if let Err(error) = done {
                health.failed(&error);
                give_back_locally();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admissions_of_a_long_outage_stay_bounded_and_keep_their_span_and_count() {
        let mut admitted = Admissions::default();
        let start = 1_800_000_000_000;
        // One request every 50 ms for 200 s: 4 000 slices' worth.
        for i in 0..4_000 {
            admitted.add(start + i * 50);
        }
        assert!(admitted.0.len() <= MAX_ADMISSION_SLICES, "{}", admitted.0.len());
        assert_eq!(admitted.0.iter().map(|(_, _, n)| n).sum::<u64>(), 4_000);
        // Merged slices span what they hold: contiguous, from the first
        // slice's start to the last one's end.
        assert_eq!(admitted.0[0].0, start);
        assert_eq!(admitted.0[admitted.0.len() - 1].1, start + 200_000);
        for pair in admitted.0.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "{pair:?}");
        }
        // A refund takes one back from the latest.
        admitted.take_back();
        assert_eq!(admitted.0.iter().map(|(_, _, n)| n).sum::<u64>(), 3_999);
    }
    /// Against the test Redis (`KEYSMITH_TEST_REDIS_URL`, one server): what a
    /// catch-up adds to a counter started at a known time.
    #[tokio::test]
    async fn a_catch_up_adds_what_was_admitted_after_the_counter_started() {
        let url = match std::env::var("KEYSMITH_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() && std::env::var("KEYSMITH_TEST_REDIS_CLUSTER_URL").is_err() => url,
            _ => return,
        };
        let config = RedisConfig::connect(&url).await.unwrap();
        let counter = format!("keysmith-test-{}:{{catch-up}}:q:day:2026-05-05", keysmith_core::KeyId::new());
        let mut conn = config.connection();
        let born = 1_000_000_u64;
        redis::pipe().set(&counter, 10).set(format!("{counter}:born"), born).exec_async(&mut conn).await.unwrap();
        let admitted = Admissions(vec![
            // Ended as the counter started: in the store's records.
            (born - 100, born, 5),
            // One slice straddling the start: whole.
            (born - 50, born + 50, 2),
            // Merged, straddling: its share after the start, half.
            (born - 10_000, born + 10_000, 10),
            // After.
            (born + 100, born + 200, 3),
        ]);
        let local = Mutex::new(LocalCounts::from([(
            ("k".to_owned(), Period::Day, chrono::DateTime::UNIX_EPOCH),
            LocalCount { count: 0, admitted, counter: counter.clone() },
        )]));
        assert!(catch_up(&Script::new(REPLAY), &config.link, &local).await);
        let count: u64 = redis::cmd("GET").arg(&counter).query_async(&mut conn).await.unwrap();
        assert_eq!(count, 10 + 2 + 5 + 3);
        assert!(lock(&local).is_empty(), "the in-process counts are dropped once sent");
        redis::cmd("DEL").arg(&counter).arg(format!("{counter}:born")).exec_async(&mut conn).await.unwrap();
    }
}
