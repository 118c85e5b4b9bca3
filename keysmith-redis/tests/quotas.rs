//! `RedisQuotas` against a real Redis: one quota across engines, nothing
//! spent by a refused request, refunds, outages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::limit::Subject;
use keysmith_core::{
    Clock as _, Engine, LimitBy, ManualClock, MemoryStore, NewKey, Period, PolicySpec, Quota, Refusal, RequestContext,
    Store, UsageId, UsageRecord, Validation, ValidationError,
};
use keysmith_redis::{OutagePolicy, RedisConfig, RedisQuotas};

fn clock() -> ManualClock {
    ManualClock::new(chrono::DateTime::parse_from_rfc3339("2026-05-05T10:00:00Z").unwrap().to_utc())
}

/// `engines` engines on one store, each with its own quota counter (and
/// connection) on `url`, and a key with `quota`.
async fn fleet(configs: Vec<RedisConfig>, clock: &ManualClock, quota: Quota) -> (Vec<Engine>, String) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engines: Vec<Engine> = configs
        .into_iter()
        .map(|c| {
            Engine::builder(Arc::clone(&store))
                .with_clock(clock.clone())
                .with_quotas(RedisQuotas::new(c))
                .build()
                .unwrap()
        })
        .collect();
    let acme = engines[0].tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec { quota: Some(quota), ..PolicySpec::new("q") }).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    (engines, created.raw.expose().to_owned())
}

async fn connections(url: &str, prefix: &str, n: usize, outage: OutagePolicy) -> Vec<RedisConfig> {
    let mut configs = Vec::new();
    for _ in 0..n {
        configs.push(common::connect(url).await.with_prefix(prefix).with_outage_policy(outage));
    }
    configs
}

#[tokio::test]
async fn a_daily_quota_is_exact_across_four_engines_under_concurrency() {
    let Some(url) = common::redis_url() else { return };
    let clock = clock();
    let configs = connections(&url, &common::unique_prefix(), 4, OutagePolicy::FailClosed).await;
    let (engines, raw) = fleet(configs, &clock, Quota { daily: Some(10), monthly: None }).await;
    let admitted =
        common::admitted(&engines, &raw, 64, |e| matches!(e, ValidationError::Refused(Refusal::QuotaExceeded { .. })))
            .await;
    assert_eq!(admitted, 10);
    // The next day starts afresh.
    clock.advance(Duration::from_secs(24 * 3600));
    assert!(engines[2].validate(&raw, &RequestContext::new()).await.is_ok());
}

#[tokio::test]
async fn a_monthly_quota_refuses_with_the_month_reset_and_refused_requests_spend_nothing() {
    let Some(url) = common::redis_url() else { return };
    let clock = clock();
    let configs = connections(&url, &common::unique_prefix(), 2, OutagePolicy::FailClosed).await;
    let (engines, raw) = fleet(configs, &clock, Quota { daily: Some(3), monthly: Some(4) }).await;
    let ctx = RequestContext::new();
    // Each passed request knows what is left of its day and month, whichever
    // engine counted the ones before.
    let mut answers = Vec::new();
    for engine in [&engines[0], &engines[1], &engines[0]] {
        answers.push(left(&engine.validate(&raw, &ctx).await.unwrap()));
    }
    assert_eq!(answers, [(Some(2), Some(3)), (Some(1), Some(2)), (Some(0), Some(1))]);
    // Refused by the day's quota (of 3), many times: none of these is counted.
    for _ in 0..5 {
        let refused = engines[1].validate(&raw, &ctx).await.unwrap_err();
        let ValidationError::Refused(Refusal::QuotaExceeded { resets_at, period, quota }) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!((resets_at.to_rfc3339().as_str(), period, quota), ("2026-05-06T00:00:00+00:00", Period::Day, 3));
    }
    clock.advance(Duration::from_secs(24 * 3600));
    let last = engines[1].validate(&raw, &ctx).await.unwrap();
    assert_eq!(left(&last), (Some(2), Some(0)), "the month had one request left");
    let refused = engines[0].validate(&raw, &ctx).await.unwrap_err();
    let ValidationError::Refused(Refusal::QuotaExceeded { resets_at, period, quota }) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!((resets_at.to_rfc3339().as_str(), period, quota), ("2026-06-01T00:00:00+00:00", Period::Month, 4));
}

/// What is left of the day and of the month, for the validation.
fn left(validation: &Validation) -> (Option<u64>, Option<u64>) {
    (validation.quota.daily(), validation.quota.monthly())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_the_request_back_to_every_engine() {
    let Some(url) = common::redis_url() else { return };
    let clock = clock();
    let configs = connections(&url, &common::unique_prefix(), 2, OutagePolicy::FailClosed).await;
    let (engines, raw) = fleet(configs, &clock, Quota { daily: Some(2), monthly: None }).await;
    let ctx = RequestContext::new();
    assert!(engines[0].validate(&raw, &ctx).await.is_ok());
    let last = engines[0].validate(&raw, &ctx).await.unwrap();
    assert!(engines[1].validate(&raw, &ctx).await.is_err());
    assert!(engines[0].refund(&last));
    // The give-back runs in the background: wait (boundedly) for it to land.
    assert!(common::passes_soon(&engines[1], &raw).await, "the refunded request was never given back");
    assert!(engines[1].validate(&raw, &ctx).await.is_err(), "exactly one request was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_limit_by_owner_two_engines_share_one_quota_for_all_of_an_owners_keys() {
    let Some(url) = common::redis_url() else { return };
    let clock = clock();
    let prefix = common::unique_prefix();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut engines = Vec::new();
    for config in connections(&url, &prefix, 2, OutagePolicy::FailClosed).await {
        let quotas = RedisQuotas::new(config);
        engines
            .push(Engine::builder(Arc::clone(&store)).with_clock(clock.clone()).with_quotas(quotas).build().unwrap());
    }
    let acme = engines[0].tenant("app", "acme");
    let spec = PolicySpec::new("per-customer").with_quota(Some(4), None).with_limit_by(LimitBy::Owner);
    let policy = acme.create_policy(spec).await.unwrap();
    let mut raw = Vec::new();
    for owner in ["cust_1", "cust_1", "cust_2", "cust_2"] {
        let created = acme.create_key(NewKey::new("k").with_owner(owner).with_policy(policy.id)).await.unwrap();
        raw.push(created.raw.expose().to_owned());
    }
    let ctx = RequestContext::new();
    let quota_exceeded = |engine: &Engine, raw: &str| {
        let (engine, raw) = (engine.clone(), raw.to_owned());
        async move {
            matches!(
                engine.validate(&raw, &RequestContext::new()).await,
                Err(ValidationError::Refused(Refusal::QuotaExceeded { .. }))
            )
        }
    };

    // cust_1's two keys, through two engines, spend one quota of 4.
    for (engine, key) in [(0, 0), (1, 1), (0, 1), (1, 0)] {
        assert!(engines[engine].validate(&raw[key], &ctx).await.is_ok());
    }
    for (engine, key) in [(0, 0), (1, 1), (1, 0)] {
        assert!(quota_exceeded(&engines[engine], &raw[key]).await, "engine {engine}, key {key}");
    }
    // cust_2 has its own; a request given back on one engine is back for
    // every key of the owner on the other.
    for (engine, key) in [(1, 2), (0, 3), (1, 3)] {
        assert!(engines[engine].validate(&raw[key], &ctx).await.is_ok());
    }
    let last = engines[0].validate(&raw[2], &ctx).await.unwrap();
    assert!(quota_exceeded(&engines[1], &raw[3]).await);
    assert!(engines[0].refund(&last));
    assert!(common::passes_soon(&engines[1], &raw[3]).await, "the refunded request was never given back");
    assert!(quota_exceeded(&engines[0], &raw[2]).await, "exactly one request was given back");

    // The owners' counters (and when each was started) carry the prefix and
    // the owner's hash tag; no counter was kept per key.
    let mut admin = common::admin(&url).await;
    let mut names: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut admin).await.unwrap();
    names.sort();
    let owner = |id: &str, counter: &str| format!("{prefix}:{{owner:3:app:4:acme:{id}}}:q:{counter}");
    let expected = [
        owner("cust_1", "day:2026-05-05"),
        owner("cust_1", "day:2026-05-05:born"),
        owner("cust_1", "month:2026-05-01"),
        owner("cust_1", "month:2026-05-01:born"),
        owner("cust_2", "day:2026-05-05"),
        owner("cust_2", "day:2026-05-05:born"),
        owner("cust_2", "month:2026-05-01"),
        owner("cust_2", "month:2026-05-01:born"),
    ];
    assert_eq!(names, expected);
}

#[tokio::test]
async fn quotas_fail_open_count_in_process_and_fail_closed_answer_unavailable_until_redis_is_back() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let clock = clock();
    let prefix = common::unique_prefix();
    let mut configs = connections(&server.url(), &prefix, 1, OutagePolicy::FailOpen).await;
    configs.extend(connections(&server.url(), &prefix, 1, OutagePolicy::FailClosed).await);
    let (engines, raw) = fleet(configs, &clock, Quota { daily: Some(2), monthly: None }).await;
    let (open, closed) = (&engines[0], &engines[1]);
    let ctx = RequestContext::new();
    assert!(open.validate(&raw, &ctx).await.is_ok());

    server.stop();
    // Fail open: counted here alone (the store has recorded nothing yet),
    // and what is left said from that count.
    assert_eq!(left(&open.validate(&raw, &ctx).await.unwrap()), (Some(1), None));
    assert_eq!(left(&open.validate(&raw, &ctx).await.unwrap()), (Some(0), None));
    assert!(
        matches!(open.validate(&raw, &ctx).await, Err(ValidationError::Refused(Refusal::QuotaExceeded { .. }))),
        "the in-process count holds the quota per instance"
    );
    let failed = closed.validate(&raw, &ctx).await.unwrap_err();
    assert!(matches!(failed, ValidationError::Failed(keysmith_core::Error::Store { .. })), "{failed:?}");

    // Redis restarted empty: the counters start again from the store.
    server.restart().await;
    let mut back = false;
    for _ in 0..200 {
        if closed.validate(&raw, &ctx).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "fail_closed never recovered");
}

#[tokio::test]
async fn what_an_instance_admitted_during_a_partition_counts_in_redis_once_it_heals() {
    let Some((proxy, behind, url)) = common::behind_silent_proxy().await else { return };
    let prefix = common::unique_prefix();
    let cut_off = behind.with_prefix(&prefix).with_retry_interval(Duration::from_millis(20));
    let direct = common::connect(&url).await.with_prefix(&prefix);
    let clock = clock();
    let (engines, raw) = fleet(vec![cut_off, direct], &clock, Quota { daily: Some(6), monthly: None }).await;
    let (partitioned, other) = (&engines[0], &engines[1]);
    let ctx = RequestContext::new();
    let lineage = partitioned.validate(&raw, &ctx).await.unwrap().key.lineage_id;

    proxy.go_silent();
    // Fail open: counted in process (from the store, which has recorded
    // nothing yet).
    assert!(partitioned.validate(&raw, &ctx).await.is_ok());
    assert!(partitioned.validate(&raw, &ctx).await.is_ok());
    proxy.recover();

    // Redis kept its counter (1) through the partition: once the probe hears
    // Redis, the two admitted during it are added before anything else is
    // counted there, so the fleet has 6 - 3 left, not 6 - 1.
    let counter =
        common::connect(&url).await.with_prefix(&prefix).subject_key(Subject::Key(lineage), "q:day:2026-05-05");
    let mut admin = common::admin(&url).await;
    let mut caught_up = false;
    for _ in 0..200 {
        let count: Option<u64> = redis::cmd("GET").arg(&counter).query_async(&mut admin).await.unwrap();
        if count == Some(3) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(caught_up, "the requests admitted during the partition never reached Redis");
    let mut passed = 0;
    for engine in [other, partitioned, other, partitioned, other] {
        passed += u32::from(engine.validate(&raw, &ctx).await.is_ok());
    }
    assert_eq!(passed, 3, "the day's quota of 6 held across the partition");
}

#[tokio::test]
async fn after_redis_lost_its_counters_an_instance_adds_only_what_it_admitted_since_they_started_again() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    if common::cluster() {
        // The one-node cluster takes a while to own its slots again after a
        // restart; the single-node run covers the restart.
        return;
    }
    let prefix = common::unique_prefix();
    let connect = |every| {
        let url = server.url();
        let prefix = prefix.clone();
        async move { common::connect(&url).await.with_prefix(prefix).with_retry_interval(every) }
    };
    // `late` hears Redis back well after `early` has counted there again.
    let (early, late) = (connect(Duration::from_millis(20)).await, connect(Duration::from_secs(1)).await);
    let clock = clock();
    let (engines, raw) = fleet(vec![early, late], &clock, Quota { daily: Some(1000), monthly: None }).await;
    let (early, late) = (&engines[0], &engines[1]);
    let ctx = RequestContext::new();
    let lineage = early.validate(&raw, &ctx).await.unwrap().key.lineage_id;
    assert!(late.validate(&raw, &ctx).await.is_ok());

    server.stop();
    // Both count in process (from the store, which holds no records here).
    for engine in [early, late, late] {
        assert!(engine.validate(&raw, &ctx).await.is_ok());
    }
    // Admitted clearly before the counter starts again (times are the wall
    // clock's and Redis's, kept in slices of 100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis comes back empty: the counter starts again from the store's
    // records (which, in a real fleet, hold what was admitted so far) when
    // `early` counts there.
    server.restart().await;
    let counter = common::connect(&server.url())
        .await
        .with_prefix(&prefix)
        .subject_key(Subject::Key(lineage), "q:day:2026-05-05");
    let admin = common::admin(&server.url()).await;
    let count = || {
        let (counter, mut admin) = (counter.clone(), admin.clone());
        async move { redis::cmd("GET").arg(&counter).query_async::<Option<u64>>(&mut admin).await.unwrap() }
    };
    let mut started = None;
    for _ in 0..200 {
        assert!(early.validate(&raw, &ctx).await.is_ok());
        started = count().await;
        if started.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = started.expect("early never counted in Redis again");
    // Every request `late` admits from then on counts once, in process
    // until it hears Redis (then added) or in Redis; the two it admitted
    // before the counter started again are not added to it.
    let mut admitted = 0;
    let mut caught_up = false;
    for _ in 0..300 {
        assert!(late.validate(&raw, &ctx).await.is_ok());
        admitted += 1;
        let now = count().await.unwrap();
        assert!(now <= started + admitted, "counted twice: {now} > {started} + {admitted}");
        if now == started + admitted {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(caught_up, "late's requests since the counter started again never all reached it");
}

/// Records `validation` as the adapters do after the response.
fn record(engine: &Engine, validation: &Validation, clock: &ManualClock) {
    engine.record_usage(UsageRecord {
        id: UsageId::new(),
        key_id: validation.key.id,
        tenant: (&validation.key).into(),
        endpoint: "/".into(),
        method: "GET".into(),
        status: 200,
        ip: None,
        user_agent: None,
        latency: Duration::ZERO,
        timestamp: clock.now(),
    });
}

/// The refusal `validate` answers, once Redis answers again (a call may
/// fail while the connection is re-established).
async fn refusal_once_back(engine: &Engine, raw: &str) -> Option<Refusal> {
    for _ in 0..200 {
        match engine.validate(raw, &RequestContext::new()).await {
            Ok(_) => return None,
            Err(ValidationError::Refused(refusal)) => return Some(refusal),
            Err(ValidationError::Failed(_)) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("Redis never answered again")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flush_or_a_restart_the_counters_start_again_from_what_the_store_recorded() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let clock = clock();
    let configs = connections(&server.url(), &common::unique_prefix(), 2, OutagePolicy::FailClosed).await;
    let (engines, raw) = fleet(configs, &clock, Quota { daily: Some(5), monthly: Some(8) }).await;
    let ctx = RequestContext::new();
    // Four requests: three recorded and written, one still in flight.
    for i in 0..4 {
        let validation = engines[i % 2].validate(&raw, &ctx).await.unwrap();
        if i < 3 {
            record(&engines[0], &validation, &clock);
        }
    }
    engines[0].flush_usage().await;

    // FLUSHALL: the counters start from the three the store holds, so the
    // request in flight is the only one lost (the day admits 5 + 1).
    let mut admin = common::admin(&server.url()).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut admin).await.unwrap();
    let mut answers = Vec::new();
    for engine in [&engines[1], &engines[0]] {
        let validation = engine.validate(&raw, &ctx).await.unwrap();
        answers.push(left(&validation));
        record(&engines[0], &validation, &clock);
    }
    assert_eq!(answers, [(Some(1), Some(4)), (Some(0), Some(3))], "what is left counts what the store holds");
    let refused = engines[1].validate(&raw, &ctx).await.unwrap_err();
    let ValidationError::Refused(Refusal::QuotaExceeded { resets_at, .. }) = refused else { panic!("{refused:?}") };
    assert_eq!(resets_at.to_rfc3339(), "2026-05-06T00:00:00+00:00");
    engines[0].flush_usage().await;

    // A restart (no persistence) likewise: five written today, day full.
    server.restart().await;
    assert!(
        matches!(refusal_once_back(&engines[0], &raw).await, Some(Refusal::QuotaExceeded { .. })),
        "the day's counter was not rebuilt from the store"
    );
    // The next day's counter starts at zero and the month's at the five
    // written: three more this month.
    clock.advance(Duration::from_secs(24 * 3600));
    for engine in [&engines[0], &engines[1], &engines[0]] {
        let answer = engine.validate(&raw, &ctx).await;
        assert!(answer.is_ok(), "{answer:?}");
    }
    let refused = engines[1].validate(&raw, &ctx).await.unwrap_err();
    let ValidationError::Refused(Refusal::QuotaExceeded { resets_at, .. }) = refused else { panic!("{refused:?}") };
    assert_eq!(resets_at.to_rfc3339(), "2026-06-01T00:00:00+00:00", "the month is full");
}
