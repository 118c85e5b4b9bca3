//! Usage recording, queries, quotas and `last_used_at`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keysmith_core::store::{Page, TimeRange};
use keysmith_core::usage::UsageConfig;
use keysmith_core::{
    Engine, Error, KeyId, ManualClock, MemoryStore, NewKey, Period, PolicySpec, Refusal, RequestContext, Store, Tenant,
    UsageId, UsageRecord, ValidationError,
};
use support::{t0, usage_record};

fn engine_on(store: Arc<dyn Store>, clock: &ManualClock, config: UsageConfig) -> Engine {
    Engine::builder(store).with_clock(clock.clone()).with_usage_config(config).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_across_fifty_keys_arrive_exactly_once() {
    let clock = ManualClock::new(t0());
    let config = UsageConfig { batch_size: 256, ..UsageConfig::default() };
    let engine = engine_on(Arc::new(MemoryStore::new()), &clock, config);
    let acme = engine.tenant("app", "acme");
    let mut keys = Vec::new();
    for i in 0..50 {
        keys.push(acme.create_key(NewKey::new(format!("k{i}"))).await.unwrap().key.id);
    }
    // Spread over two UTC days; every seventh request is an error.
    let day2 = Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap();
    for i in 0..10_000u32 {
        let at = if (i / 50) % 2 == 0 { t0() } else { day2 + chrono::Duration::seconds(i64::from(i)) };
        let status = if i % 7 == 0 { 500 } else { 200 };
        engine.record_usage(usage_record(keys[(i % 50) as usize], acme.tenant(), at, status));
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    engine.shutdown().await;

    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.dropped, stats.failed), (10_000, 0, 0));
    let mut total_records = 0;
    let (mut day_requests, mut day_errors, mut month_requests) = (0, 0, 0);
    for key in &keys {
        let records = acme.list_usage(*key, TimeRange::default(), Page::new(1000, 0)).await.unwrap();
        assert_eq!(records.len(), 200);
        let mut ids: Vec<UsageId> = records.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 200, "no record twice");
        total_records += records.len();
        let days = acme.usage_aggregates(*key, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.len(), 2);
        day_requests += days.iter().map(|a| a.requests).sum::<u64>();
        day_errors += days.iter().map(|a| a.errors).sum::<u64>();
        let months = acme.usage_aggregates(*key, Period::Month, TimeRange::default()).await.unwrap();
        month_requests += months.iter().map(|a| a.requests).sum::<u64>();
    }
    assert_eq!(total_records, 10_000);
    assert_eq!((day_requests, month_requests), (10_000, 10_000));
    assert_eq!(day_errors, (0..10_000).filter(|i| i % 7 == 0).count() as u64);

    let totals = acme.usage_totals(Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!(
        totals.iter().map(|t| (t.period_start, t.requests)).collect::<Vec<_>>(),
        [(Period::Day.start_of(t0()), 5_000), (day2, 5_000)]
    );
}

#[test]
fn a_full_queue_drops_and_counts_records() {
    let clock = ManualClock::new(t0());
    let counters = support::counters_recorded(|| async {
        let config = UsageConfig {
            queue_capacity: 10,
            batch_size: 1000,
            flush_interval: Duration::from_secs(3600),
            ..UsageConfig::default()
        };
        let engine = engine_on(Arc::new(MemoryStore::new()), &clock, config);
        let tenant = Tenant::new("app", "acme");
        let key = KeyId::new();
        // On a current-thread runtime the writer cannot run until we yield:
        // exactly the queue's capacity gets in.
        for _ in 0..1000 {
            engine.record_usage(usage_record(key, &tenant, t0(), 200));
        }
        assert_eq!(engine.usage_stats().dropped, 990);
        engine.shutdown().await;
        assert_eq!(engine.usage_stats().written, 10);
        engine.record_usage(usage_record(key, &tenant, t0(), 200));
        assert_eq!(engine.usage_stats().dropped, 991, "after shutdown records are dropped and counted");
    });
    assert_eq!(counters["keysmith_usage_dropped_total{}"], 991);
}

/// An engine over a memory store that fails every write from the start,
/// with five records of one key (one lane, one batch) queued.
async fn five_records_on_a_failing_store(config: UsageConfig) -> Engine {
    let clock = ManualClock::new(t0());
    let store = Arc::new(MemoryStore::new());
    let engine = engine_on(store.clone(), &clock, config);
    store.close().await;
    let (tenant, key) = (Tenant::new("app", "acme"), KeyId::new());
    for _ in 0..5 {
        engine.record_usage(usage_record(key, &tenant, t0(), 200));
    }
    engine
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_counts_lost_records() {
    let engine = five_records_on_a_failing_store(UsageConfig::default()).await;
    // A shutdown does not ride out the outage: three attempts, 50 and 100 ms
    // apart (tokio's clock, paused, moves only as the writer waits).
    let started = tokio::time::Instant::now();
    engine.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.failed, stats.retried_writes), (0, 5, 2));
}

#[tokio::test(start_paused = true)]
async fn a_batch_the_store_fails_is_tried_again_for_the_retry_window_then_counted() {
    let config = UsageConfig { write_retry: Duration::from_secs(10), ..UsageConfig::default() };
    let engine = five_records_on_a_failing_store(config).await;
    let started = tokio::time::Instant::now();
    engine.flush_usage().await;
    // Tried again after 50 ms, then waits doubling (0.1, 0.2 … 3.2 s): the
    // eighth attempt fails at 6.35 s, and the next wait (5 s, the longest)
    // would end past the 10 s window, so the batch is given up there.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(6350) && elapsed < Duration::from_secs(7), "{elapsed:?}");
    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.failed, stats.retried_writes), (0, 5, 7));
    // Counted once: a shutdown after it has nothing left to fail.
    engine.shutdown().await;
    assert_eq!(engine.usage_stats().failed, 5);
}

fn quota_refusal(result: Result<keysmith_core::Validation, ValidationError>) -> Option<DateTime<Utc>> {
    match result {
        Ok(_) => None,
        Err(ValidationError::Refused(Refusal::QuotaExceeded { resets_at, .. })) => Some(resets_at),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn quota_is_exhausted_then_resets_at_the_utc_day_and_month_boundaries() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 30, 22, 0, 0).unwrap());
    let engine = engine_on(Arc::new(MemoryStore::new()), &clock, UsageConfig::default());
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("metered").with_quota(Some(3), Some(5))).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    let ctx = RequestContext::new();

    for _ in 0..3 {
        assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), None);
    }
    let next_day = Utc.with_ymd_and_hms(2026, 3, 31, 0, 0, 0).unwrap();
    for _ in 0..3 {
        assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), Some(next_day), "refusals consume nothing");
    }

    clock.set(next_day);
    assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), None);
    assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), None);
    let next_month = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), Some(next_month), "5 this month");

    clock.set(next_month);
    assert_eq!(quota_refusal(engine.validate(raw, &ctx).await), None);
}

#[tokio::test]
async fn recorded_usage_is_not_counted_twice_and_other_instances_usage_counts() {
    let clock = ManualClock::new(t0());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = UsageConfig { quota_refresh: Duration::from_secs(5), ..UsageConfig::default() };
    let first = engine_on(Arc::clone(&store), &clock, config);
    let acme = first.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("metered").with_quota(Some(4), None)).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    let ctx = RequestContext::new();

    // The first instance serves two requests and records them.
    for _ in 0..2 {
        let ok = first.validate(raw, &ctx).await.unwrap();
        first.record_usage(usage_record(ok.key.id, &ok.key.tenant, clock_now(&clock), 200));
    }
    first.flush_usage().await;
    clock.advance(Duration::from_secs(6));
    // After a refresh it still counts two, not four.
    assert_eq!(quota_refusal(first.validate(raw, &ctx).await), None);
    first.record_usage(usage_record(created.key.id, acme.tenant(), clock_now(&clock), 200));
    first.flush_usage().await;

    // A second instance on the same store sees the three written requests.
    let second = engine_on(Arc::clone(&store), &clock, config);
    assert_eq!(quota_refusal(second.validate(raw, &ctx).await), None);
    assert!(quota_refusal(second.validate(raw, &ctx).await).is_some());
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use keysmith_core::Clock;
    clock.now()
}

#[tokio::test]
async fn last_used_at_is_written_off_the_request_path_at_most_once_per_interval() {
    let clock = ManualClock::new(t0());
    let config = UsageConfig { last_used_interval: Duration::from_secs(60), ..UsageConfig::default() };
    let engine = engine_on(Arc::new(MemoryStore::new()), &clock, config);
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("k")).await.unwrap();
    let raw = created.raw.expose();
    assert_eq!(created.key.last_used_at, None);

    engine.validate(raw, &RequestContext::new()).await.unwrap();
    engine.flush_usage().await;
    assert_eq!(acme.get_key(created.key.id).await.unwrap().last_used_at, Some(t0()));

    clock.advance(Duration::from_secs(59));
    engine.validate(raw, &RequestContext::new()).await.unwrap();
    engine.flush_usage().await;
    assert_eq!(acme.get_key(created.key.id).await.unwrap().last_used_at, Some(t0()), "within the interval");

    clock.advance(Duration::from_secs(1));
    engine.validate(raw, &RequestContext::new()).await.unwrap();
    engine.flush_usage().await;
    assert_eq!(acme.get_key(created.key.id).await.unwrap().last_used_at, Some(t0() + chrono::Duration::seconds(60)));
}

#[tokio::test]
async fn usage_queries_page_by_time_and_stay_within_the_tenant() {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::new(MemoryStore::new()), &clock, UsageConfig::default());
    let a = engine.tenant("app", "a");
    let b = engine.tenant("app", "b");
    let key = b.create_key(NewKey::new("k")).await.unwrap().key;
    for minute in 0..10 {
        engine.record_usage(usage_record(key.id, b.tenant(), t0() + chrono::Duration::minutes(minute), 200));
    }
    engine.flush_usage().await;

    let range =
        TimeRange { from: Some(t0() + chrono::Duration::minutes(2)), to: Some(t0() + chrono::Duration::minutes(8)) };
    let page1 = b.list_usage(key.id, range, Page::new(4, 0)).await.unwrap();
    let page2 = b.list_usage(key.id, range, Page::new(4, 4)).await.unwrap();
    let minutes =
        |records: &[UsageRecord]| records.iter().map(|r| (r.timestamp - t0()).num_minutes()).collect::<Vec<_>>();
    assert_eq!(minutes(&page1), [2, 3, 4, 5]);
    assert_eq!(minutes(&page2), [6, 7]);

    assert!(matches!(a.list_usage(key.id, TimeRange::default(), Page::default()).await, Err(Error::NotFound { .. })));
    assert!(matches!(a.usage_aggregates(key.id, Period::Day, TimeRange::default()).await, Err(Error::NotFound { .. })));
    assert!(a.usage_totals(Period::Month, TimeRange::default()).await.unwrap().is_empty());
    assert_eq!(b.usage_totals(Period::Month, TimeRange::default()).await.unwrap()[0].requests, 10);
}

#[test]
fn usage_recorder_started_in_main_outlives_the_runtimes_that_record() {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::new(MemoryStore::new()), &clock, UsageConfig::default());
    // Outside a runtime nothing starts, and nothing is spoiled for later.
    assert!(!engine.start());

    let main = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tenant = Tenant::new("app", "acme");
    let key = main.block_on(engine.tenant("app", "acme").create_key(NewKey::new("k"))).unwrap().key.id;
    assert!(main.block_on(async { engine.start() }));

    // A request runtime (an actix worker, say) records and then stops.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            worker.block_on(async {
                for _ in 0..3 {
                    engine.record_usage(usage_record(key, &tenant, t0(), 200));
                }
            });
        });
    });

    main.block_on(engine.shutdown());
    assert_eq!(engine.usage_stats().written, 3);
}

/// Records wait in their thread's buffer until it fills or the writer's
/// tick takes it; a flush and a shutdown take every buffer, so a record
/// queued before either is written, from whatever thread it came.
#[test]
fn buffered_records_of_every_thread_are_written_by_flush_and_shutdown() {
    let clock = ManualClock::new(t0());
    // A tick that never comes during the test: only flush and shutdown
    // can take what the threads buffered.
    let config = UsageConfig { flush_interval: Duration::from_secs(3600), ..UsageConfig::default() };
    let main = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let engine = main.block_on(async { engine_on(Arc::new(MemoryStore::new()), &clock, config) });
    let tenant = Tenant::new("app", "acme");
    let key = KeyId::new();
    let record_from_threads = |threads: usize, each: usize| {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..each {
                        engine.record_usage(usage_record(key, &tenant, t0(), 200));
                    }
                });
            }
        });
    };

    // Fewer than a buffer's worth per thread.
    record_from_threads(8, 5);
    main.block_on(engine.flush_usage());
    assert_eq!(engine.usage_stats().written, 40);

    // Some buffers fill and go to the queue, others stay partial.
    record_from_threads(6, 101);
    main.block_on(engine.shutdown());
    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.dropped, stats.failed), (40 + 606, 0, 0));
    let days = main.block_on(engine.store().usage_aggregates(&tenant, key, Period::Day, TimeRange::default()));
    assert_eq!(days.unwrap().iter().map(|day| day.requests).sum::<u64>(), 646);

    record_from_threads(2, 1);
    assert_eq!(engine.usage_stats().dropped, 2, "after shutdown records are dropped and counted");
}
