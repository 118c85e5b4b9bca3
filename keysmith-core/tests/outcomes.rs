//! Usage at scale: refusals counted by reason (never charged), hourly
//! roll-ups, usage modes, retention, and the recorder's accounting.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::http::{Gate, Outcome, RequestFacts, ScopeRequirement};
use keysmith_core::store::{Page, TimeRange};
use keysmith_core::usage::{RefusalReason, UsageConfig};
use keysmith_core::{
    Clock, Engine, ManualClock, MemoryStore, NewKey, Period, PolicySpec, RequestContext, Store, UsageMode,
    UsageRetention,
};
use support::{t0, usage_record};

fn engine(store: Arc<dyn Store>, clock: &ManualClock, mode: UsageMode) -> Engine {
    Engine::builder(store).with_clock(clock.clone()).with_usage_mode(mode).build().unwrap()
}

#[tokio::test]
async fn refusals_of_a_known_key_are_counted_by_reason_and_never_charged() {
    let clock = ManualClock::new(t0());
    let engine = engine(Arc::new(MemoryStore::new()), &clock, UsageMode::Records);
    let acme = engine.tenant("app", "acme");
    let policy = acme
        .create_policy(PolicySpec::new("metered").with_rate_limit(2, Duration::from_secs(60)).with_quota(Some(5), None))
        .await
        .unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(["read"])).await.unwrap();
    let raw = created.raw.expose();
    let ctx = RequestContext::new();
    for _ in 0..2 {
        engine.validate(raw, &ctx).await.unwrap();
    }
    for _ in 0..3 {
        assert!(engine.validate(raw, &ctx).await.is_err(), "over the rate limit");
    }
    let scoped = RequestContext::new().with_required_scopes(&["write"]);
    assert!(engine.validate(raw, &scoped).await.is_err(), "insufficient scope");
    // An unknown key has no tenant: a metric only.
    assert!(engine.validate("sk_live_00000000000000000000000000000000000000", &ctx).await.is_err());
    engine.flush_usage().await;

    for period in [Period::Hour, Period::Day, Period::Month] {
        let rows = acme.usage_aggregates(created.key.id, period, TimeRange::default()).await.unwrap();
        assert_eq!(rows.len(), 1, "{period}");
        let row = &rows[0];
        assert_eq!(row.requests, 0, "refusals are never requests ({period})");
        assert_eq!(row.refused.get(RefusalReason::RateLimited), 3);
        assert_eq!(row.refused.get(RefusalReason::InsufficientScope), 1);
        assert_eq!(row.refused.total(), 4);
        assert_eq!(row.period_start, period.start_of(t0()));
    }
    let totals = acme.usage_totals(Period::Hour, TimeRange::default()).await.unwrap();
    assert_eq!(totals[0].refused.rate_limited, 3);

    // Nothing was charged: after the window the quota still has 5 - 2 = 3.
    clock.advance(Duration::from_secs(3600));
    for _ in 0..2 {
        engine.validate(raw, &ctx).await.unwrap();
    }
    clock.advance(Duration::from_secs(3600));
    engine.validate(raw, &ctx).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    let refused = engine.validate(raw, &ctx).await.unwrap_err();
    assert_eq!(refused.refusal().map(keysmith_core::Refusal::code), Some("quota_exceeded"));
    assert_eq!(engine.usage_stats().dropped, 0);
}

#[tokio::test]
async fn passed_requests_roll_up_by_hour_and_status_class() {
    let clock = ManualClock::new(t0());
    let engine = engine(Arc::new(MemoryStore::new()), &clock, UsageMode::Records);
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("k")).await.unwrap();
    let key = created.key.id;
    for (minutes, status) in [(0, 200), (10, 301), (70, 404), (75, 503), (80, 204)] {
        let at = t0() + chrono::Duration::minutes(minutes);
        engine.record_usage(usage_record(created.key.id, &created.key.tenant, at, status));
    }
    engine.flush_usage().await;
    let hours = acme.usage_aggregates(key, Period::Hour, TimeRange::default()).await.unwrap();
    assert_eq!(hours.len(), 2);
    assert_eq!((hours[0].requests, hours[0].status.success, hours[0].status.redirection), (2, 1, 1));
    assert_eq!(hours[1].period_start, t0() + chrono::Duration::hours(1));
    let status = hours[1].status;
    assert_eq!((hours[1].requests, hours[1].errors), (3, 2));
    assert_eq!((status.success, status.client_error, status.server_error), (1, 1, 1));
    let days = acme.usage_aggregates(key, Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!((days[0].requests, days[0].errors), (5, 2));
}

#[tokio::test]
async fn every_mode_keeps_roll_ups_and_quotas_exact() {
    for (mode, raw_rows) in [(UsageMode::Records, 10), (UsageMode::Aggregates, 0), (UsageMode::Sampled(3), 4)] {
        let clock = ManualClock::new(t0());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let engine = engine(Arc::clone(&store), &clock, mode);
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("k")).await.unwrap();
        for i in 0..10 {
            let status = if i == 0 { 500 } else { 200 };
            engine.record_usage(usage_record(created.key.id, &created.key.tenant, clock.now(), status));
        }
        engine.flush_usage().await;
        let records = acme.list_usage(created.key.id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(records.len(), raw_rows, "{mode:?}");
        for period in Period::ALL {
            let rows = acme.usage_aggregates(created.key.id, period, TimeRange::default()).await.unwrap();
            assert_eq!((rows[0].requests, rows[0].errors), (10, 1), "{mode:?} {period}");
            assert_eq!(rows[0].status.server_error, 1);
        }
        assert_eq!(engine.usage_stats().written, 10);

        // A quota counts what the roll-ups hold, whatever the mode.
        let policy = acme.create_policy(PolicySpec::new("q").with_quota(Some(3), None)).await.unwrap();
        let metered = acme.create_key(NewKey::new("m").with_policy(policy.id)).await.unwrap();
        let raw = metered.raw.expose();
        for _ in 0..3 {
            let ok = engine.validate(raw, &RequestContext::new()).await.unwrap();
            engine.record_usage(usage_record(ok.key.id, &ok.key.tenant, clock.now(), 200));
        }
        engine.flush_usage().await;
        let other = Engine::builder(Arc::clone(&store)).with_clock(clock.clone()).build().unwrap();
        assert!(other.validate(raw, &RequestContext::new()).await.is_err(), "{mode:?}: the quota is used up");
        engine.shutdown().await;
    }
}

#[test]
fn a_sample_of_zero_is_refused() {
    let error = Engine::builder(MemoryStore::new()).with_usage_mode(UsageMode::Sampled(0)).build().unwrap_err();
    assert!(matches!(error, keysmith_core::Error::InvalidInput { field: "usage_mode", .. }), "{error:?}");
}

#[tokio::test]
async fn the_sweeper_deletes_only_expired_usage_and_quotas_are_unaffected() {
    let clock = ManualClock::new(t0());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let retention = UsageRetention::default()
        .with_records(Duration::from_secs(2 * 86_400))
        .with_hourly(Duration::from_secs(86_400))
        .with_batch(2);
    let engine = Engine::builder(Arc::clone(&store)).with_clock(clock.clone()).with_usage_retention(retention);
    let engine = engine.build().unwrap();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("q").with_quota(None, Some(10))).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    // Five requests now (March 14th), then three days later one more.
    for _ in 0..5 {
        let ok = engine.validate(raw, &RequestContext::new()).await.unwrap();
        engine.record_usage(usage_record(ok.key.id, &ok.key.tenant, clock.now(), 200));
    }
    engine.flush_usage().await;
    clock.advance(Duration::from_secs(3 * 86_400));
    let ok = engine.validate(raw, &RequestContext::new()).await.unwrap();
    engine.record_usage(usage_record(ok.key.id, &ok.key.tenant, clock.now(), 200));
    engine.flush_usage().await;

    let report = engine.sweep().await.unwrap();
    assert_eq!((report.usage_records_deleted, report.hourly_rollups_deleted), (5, 1));
    let records = acme.list_usage(created.key.id, TimeRange::default(), Page::default()).await.unwrap();
    assert_eq!(records.len(), 1, "the recent record stays");
    let hours = acme.usage_aggregates(created.key.id, Period::Hour, TimeRange::default()).await.unwrap();
    assert_eq!(hours.len(), 1, "the recent hour stays");
    let days = acme.usage_aggregates(created.key.id, Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 6, "daily roll-ups are kept");
    assert_eq!(engine.sweep().await.unwrap().usage_records_deleted, 0, "a second sweep deletes nothing");

    // The monthly quota still counts all six: four more pass, then none.
    let fresh = Engine::builder(Arc::clone(&store)).with_clock(clock.clone()).build().unwrap();
    for _ in 0..4 {
        fresh.validate(raw, &RequestContext::new()).await.unwrap();
    }
    assert!(fresh.validate(raw, &RequestContext::new()).await.is_err());
}

#[test]
fn every_accepted_request_is_written_or_dropped_and_counted_under_a_full_queue_and_across_shutdown() {
    let clock = ManualClock::new(t0());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        let config = UsageConfig {
            queue_capacity: 50,
            batch_size: 7,
            flush_interval: Duration::from_secs(3600),
            ..UsageConfig::default()
        };
        for mode in [UsageMode::Records, UsageMode::Aggregates, UsageMode::Sampled(4)] {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let engine = Engine::builder(Arc::clone(&store))
                .with_clock(clock.clone())
                .with_usage_config(config)
                .with_usage_mode(mode);
            let engine = engine.build().unwrap();
            let acme = engine.tenant("app", "acme");
            let policy = acme.create_policy(PolicySpec::new("p").with_rate_limit(2, Duration::from_secs(60))).await;
            let policy = policy.unwrap().id;
            // More keys than the queue has places: a key's counts take one
            // place per hour, a raw record one each.
            let mut keys = Vec::new();
            for i in 0..80 {
                keys.push(acme.create_key(NewKey::new(format!("k{i}")).with_policy(policy)).await.unwrap());
            }
            let mut accepted = 0u64;
            for i in 0..400 {
                // Passed requests and refusals (rate-limited) share the queue.
                let raw = keys[i % keys.len()].raw.expose();
                if let Ok(ok) = engine.validate(raw, &RequestContext::new()).await {
                    engine.record_usage(usage_record(ok.key.id, &ok.key.tenant, clock.now(), 200));
                }
                accepted += 1;
                if i % 60 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            engine.shutdown().await;
            for _ in 0..5 {
                // After shutdown: refused, dropped and counted.
                assert!(engine.validate(keys[0].raw.expose(), &RequestContext::new()).await.is_err());
                accepted += 1;
            }
            let stats = engine.usage_stats();
            assert!(stats.dropped > 0, "{mode:?}: the queue was full");
            assert_eq!(stats.written + stats.dropped + stats.failed, accepted, "{mode:?}: {stats:?}");
            let mut counted = 0;
            for key in &keys {
                let rows = acme.usage_aggregates(key.key.id, Period::Day, TimeRange::default()).await.unwrap();
                counted += rows.iter().map(|r| r.requests + r.refused.total()).sum::<u64>();
            }
            assert_eq!(counted, stats.written, "{mode:?}: what was written is in the roll-ups");
        }
    });
}

#[test]
fn in_aggregates_mode_a_passed_request_is_a_counter_and_takes_no_place_in_the_queue() {
    let clock = ManualClock::new(t0());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        let config =
            UsageConfig { queue_capacity: 4, flush_interval: Duration::from_secs(3600), ..UsageConfig::default() };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let engine = Engine::builder(Arc::clone(&store))
            .with_clock(clock.clone())
            .with_usage_config(config)
            .with_usage_mode(UsageMode::Aggregates)
            .build()
            .unwrap();
        let acme = engine.tenant("app", "acme");
        let (a, b) =
            (acme.create_key(NewKey::new("a")).await.unwrap(), acme.create_key(NewKey::new("b")).await.unwrap());
        // On a current-thread runtime the writer cannot run until we yield:
        // 10 000 requests of two keys in one hour hold two places of four.
        for i in 0..10_000 {
            let key = if i % 2 == 0 { &a.key } else { &b.key };
            engine.record_usage(usage_record(
                key.id,
                &key.tenant,
                clock.now(),
                if (i / 2) % 10 == 0 { 503 } else { 200 },
            ));
        }
        assert_eq!(engine.usage_stats().dropped, 0);
        // Three more keys in the same hour: two find a place, one is dropped.
        for name in ["c", "d", "e"] {
            let key = acme.create_key(NewKey::new(name)).await.unwrap().key;
            engine.record_usage(usage_record(key.id, &key.tenant, clock.now(), 200));
        }
        assert_eq!(engine.usage_stats().dropped, 1);
        // Nothing is lost on shutdown: the counters are flushed.
        engine.shutdown().await;
        let stats = engine.usage_stats();
        assert_eq!((stats.written, stats.dropped, stats.failed), (10_002, 1, 0));
        for key in [&a, &b] {
            assert!(acme.list_usage(key.key.id, TimeRange::default(), Page::default()).await.unwrap().is_empty());
            let hours = acme.usage_aggregates(key.key.id, Period::Hour, TimeRange::default()).await.unwrap();
            assert_eq!((hours.len(), hours[0].requests, hours[0].errors), (1, 5000, 500));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn the_background_sweep_runs_on_its_interval_until_shutdown() {
    let clock = ManualClock::new(t0());
    let retention = UsageRetention::default().with_records(Duration::from_secs(86_400));
    let engine = Engine::builder(MemoryStore::new())
        .with_clock(clock.clone())
        .with_usage_retention(retention)
        .with_background_sweep(Duration::from_secs(600))
        .build()
        .unwrap();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("k")).await.unwrap();
    let doomed = acme.create_key(NewKey::new("d").with_expires_at(t0() + chrono::Duration::hours(1))).await.unwrap();
    let record = |at| usage_record(created.key.id, &created.key.tenant, at, 200);
    let listed = || acme.list_usage(created.key.id, TimeRange::default(), Page::default());
    engine.record_usage(record(clock.now()));
    engine.flush_usage().await;

    // Two days later (engine clock), the next tick (Tokio's paused clock,
    // advanced when every task waits) sweeps: the key expires, the record goes.
    clock.advance(Duration::from_secs(2 * 86_400));
    engine.record_usage(record(clock.now()));
    engine.flush_usage().await;
    assert_eq!(listed().await.unwrap().len(), 2, "nothing swept between ticks");
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(listed().await.unwrap().len(), 1, "the expired record is swept, the recent one kept");
    assert_eq!(acme.get_key(doomed.key.id).await.unwrap().state, keysmith_core::KeyState::Expired);

    // After shutdown no tick sweeps any more.
    engine.shutdown().await;
    clock.advance(Duration::from_secs(2 * 86_400));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(listed().await.unwrap().len(), 1, "stopped by shutdown");
}

#[test]
fn a_background_sweep_of_no_interval_is_refused() {
    let error = Engine::builder(MemoryStore::new()).with_background_sweep(Duration::ZERO).build().unwrap_err();
    assert!(matches!(error, keysmith_core::Error::InvalidInput { field: "sweep_interval", .. }), "{error:?}");
}

#[test]
fn refusals_of_keys_that_were_not_identified_go_to_the_metric_by_code() {
    let clock = ManualClock::new(t0());
    let counters = support::counters_recorded(|| async {
        let validating = engine(Arc::new(MemoryStore::new()), &clock, UsageMode::Records);
        // A well-formed key that this engine's store does not hold.
        let elsewhere = engine(Arc::new(MemoryStore::new()), &clock, UsageMode::Records);
        let unknown = elsewhere.tenant("app", "acme").create_key(NewKey::new("k")).await.unwrap();
        let ctx = RequestContext::new();
        for _ in 0..2 {
            assert!(validating.validate(unknown.raw.expose(), &ctx).await.is_err());
        }
        assert!(validating.validate("not-a-key", &ctx).await.is_err());
    });
    let mut counted: Vec<(&str, u64)> = counters
        .iter()
        .filter_map(|(name, n)| name.strip_prefix("keysmith_refusals_unattributed_total{").map(|labels| (labels, *n)))
        .collect();
    counted.sort();
    assert_eq!(counted, [("code=invalid_key}", 2), ("code=malformed_key}", 1)]);
}

/// A request's answer from `gate`: the refusal code, or `pass`.
async fn answer(gate: &Gate, headers: &[(&str, String)]) -> &'static str {
    match gate.authorize(&RequestFacts::new("GET", "/things", None, headers)).await {
        Outcome::Refuse(response) => response.code,
        Outcome::Pass(admitted) => {
            admitted.finish(200);
            "pass"
        }
        Outcome::Anonymous => "anonymous",
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn requests_the_gate_refuses_before_or_without_validation_go_to_the_metric_by_code() {
    let clock = ManualClock::new(t0());
    let counters = support::counters_recorded(|| async {
        let store = Arc::new(MemoryStore::new());
        let engine = engine(Arc::clone(&store) as Arc<dyn Store>, &clock, UsageMode::Records);
        let acme = engine.tenant("app", "acme");
        let raw = acme.create_key(NewKey::new("a")).await.unwrap().raw.expose().to_owned();
        let other = acme.create_key(NewKey::new("b")).await.unwrap().raw.expose().to_owned();
        let gate = Gate::new(engine.clone());
        assert_eq!(answer(&gate, &[]).await, "missing_key");
        let two = [("authorization", format!("Bearer {raw}")), ("x-api-key", other.clone())];
        assert_eq!(answer(&gate, &two).await, "ambiguous_key");
        // A scope-guarded route reached without a key (optional mode).
        let optional = gate.clone().with_optional(true);
        assert_eq!(answer(&optional, &[]).await, "anonymous", "not a refusal");
        assert!(optional.scope_refusal(&ScopeRequirement::all(["read"]), None).is_some());
        // A pass counts nothing here.
        assert_eq!(answer(&gate, &[("x-api-key", raw)]).await, "pass");
        // A key not yet cached, checked while the store is down.
        store.close().await;
        assert_eq!(answer(&gate, &[("x-api-key", other)]).await, "unavailable");
    });
    let mut counted: Vec<(&str, u64)> = counters
        .iter()
        .filter_map(|(name, n)| name.strip_prefix("keysmith_refusals_unattributed_total{").map(|labels| (labels, *n)))
        .collect();
    counted.sort_unstable();
    assert_eq!(counted, [("code=ambiguous_key}", 1), ("code=missing_key}", 2), ("code=unavailable}", 1)]);
}
