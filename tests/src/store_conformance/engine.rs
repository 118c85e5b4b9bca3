//! Cases through an engine on the store: shared budgets, quota reloads, input it refuses.

#[allow(clippy::wildcard_imports)]
use super::*;

/// An engine on `store` with a manual clock at [`t0`].
pub(super) fn engine_on(store: Arc<dyn Store>, clock: &ManualClock) -> Engine {
    let config = UsageConfig { quota_refresh: Duration::from_secs(5), ..UsageConfig::default() };
    engine_builder(store).with_clock(clock.clone()).with_usage_config(config).build().unwrap()
}

/// The usage record of a validated request.
pub(super) fn record_of(validation: &Validation) -> UsageRecord {
    UsageRecord { timestamp: validation.checked_at(), ..usage(&validation.key, validation.checked_at(), 200) }
}

#[track_caller]
pub(super) fn refusal_of(result: Result<Validation, ValidationError>) -> Refusal {
    match result {
        Err(ValidationError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Rotation keeps the credential's budget: both secrets share one rate
/// limit and one quota (also as read back from the store by another
/// engine), the new key keeps `expires_at`, and a rotation for
/// `compromised` with no grace stops the old key at once.
pub async fn rotation_shares_the_lineage_budget_and_keeps_the_expiry(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("billing", "acme");
    let spec = PolicySpec::new("metered")
        .with_rate_limit(3, Duration::from_secs(3600))
        .with_quota(Some(4), None)
        .with_rotation_grace(Duration::from_secs(3600));
    let policy = acme.create_policy(spec).await.unwrap();
    let expires_at = at(86_400 * 30);
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_expires_at(expires_at)).await.unwrap();
    let ctx = RequestContext::new();
    let mut remaining = Vec::new();
    let first = engine.validate(created.raw.expose(), &ctx).await.unwrap();
    remaining.push(first.rate_limits[0].remaining);
    engine.record_usage(record_of(&first));

    let rotated = acme.rotate_key(created.key.id, RotationReason::Scheduled, None).await.unwrap();
    assert_eq!(rotated.record.grace_ttl, Duration::from_secs(3600), "the policy's grace");
    assert_eq!(rotated.key.expires_at, Some(expires_at), "the new key keeps the expiry");
    assert_eq!(rotated.key.lineage_id, created.key.id);
    assert_eq!(acme.get_key(rotated.key.id).await.unwrap().expires_at, Some(expires_at));

    // Old and new secret draw on one rate limit.
    for raw in [rotated.raw.expose(), created.raw.expose()] {
        let passed = engine.validate(raw, &ctx).await.unwrap();
        remaining.push(passed.rate_limits[0].remaining);
        engine.record_usage(record_of(&passed));
    }
    assert_eq!(remaining, [2, 1, 0]);
    assert!(matches!(refusal_of(engine.validate(rotated.raw.expose(), &ctx).await), Refusal::RateLimited { .. }));
    engine.flush_usage().await;

    // Another engine (a restart) reads the lineage's quota from the store:
    // three of four spent, whichever secret spent them.
    let restarted = engine_on(Arc::clone(&store), &clock);
    let passed = restarted.validate(rotated.raw.expose(), &ctx).await.unwrap();
    restarted.record_usage(record_of(&passed));
    assert!(matches!(refusal_of(restarted.validate(rotated.raw.expose(), &ctx).await), Refusal::QuotaExceeded { .. }));

    // Compromised, no grace given: the old secret stops at once, and the
    // replacement starts from the lineage's spent quota.
    let acme = restarted.tenant("billing", "acme");
    let replaced = acme.rotate_key(rotated.key.id, RotationReason::Compromised, None).await.unwrap();
    assert_eq!(replaced.record.grace_ttl, Duration::ZERO);
    assert_eq!(refusal_of(restarted.validate(rotated.raw.expose(), &ctx).await), Refusal::Revoked);
    assert!(matches!(refusal_of(restarted.validate(replaced.raw.expose(), &ctx).await), Refusal::QuotaExceeded { .. }));
    restarted.flush_usage().await;

    // Without a policy grace: the engine's default of 24 hours.
    let plain = acme.create_key(NewKey::new("plain")).await.unwrap();
    let rotated = acme.rotate_key(plain.key.id, RotationReason::Manual, None).await.unwrap();
    assert_eq!(rotated.record.grace_ttl, Duration::from_secs(24 * 3600));
}

/// Holds the next usage batch after the store has written it and before
/// the writer learns so.
#[derive(Debug, Default)]
pub(super) struct HoldWrittenBatch {
    armed: std::sync::atomic::AtomicBool,
    written: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl StoreProbe for HoldWrittenBatch {
    async fn after(&self, op: StoreOp) {
        if op == StoreOp::write_usage && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.written.notify_one();
            self.release.notified().await;
        }
    }
}

/// A quota re-read that lands after the store wrote a batch but before the
/// writer marked it written does not count the batch twice: a daily quota
/// of 10 admits 10.
pub async fn a_quota_reload_racing_a_batch_write_counts_the_batch_once(store: Arc<dyn Store>) {
    let probe = Arc::new(HoldWrittenBatch::default());
    let probed: Arc<dyn Store> = Arc::new(ProbedStore::new(store, Arc::clone(&probe)));
    let clock = ManualClock::new(t0());
    let engine = engine_on(probed, &clock);
    let acme = engine.tenant("billing", "acme");
    let policy = acme.create_policy(PolicySpec::new("ten a day").with_quota(Some(10), None)).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let (raw, ctx) = (created.raw.expose(), RequestContext::new());
    let mut admitted = 0;
    let first = engine.validate(raw, &ctx).await.unwrap();
    engine.record_usage(record_of(&first));
    admitted += 1;

    probe.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let flush = tokio::spawn({
        let engine = engine.clone();
        async move { engine.flush_usage().await }
    });
    probe.written.notified().await;
    // The re-read sees the batch in the aggregates while it is still
    // pending here.
    clock.advance(Duration::from_secs(6));
    let racing = engine.validate(raw, &ctx).await.unwrap();
    engine.record_usage(record_of(&racing));
    admitted += 1;
    probe.release.notify_one();
    flush.await.unwrap();

    // Within the same refresh interval, the racing read is not counted on
    // top of the pending requests.
    for _ in 0..20 {
        match engine.validate(raw, &ctx).await {
            Ok(passed) => {
                engine.record_usage(record_of(&passed));
                admitted += 1;
            }
            Err(refused) => {
                assert!(matches!(refusal_of(Err(refused)), Refusal::QuotaExceeded { .. }));
                break;
            }
        }
    }
    assert_eq!(admitted, 10, "a daily quota of 10 admits 10");
    engine.flush_usage().await;
    clock.advance(Duration::from_secs(6));
    assert!(matches!(refusal_of(engine.validate(raw, &ctx).await), Refusal::QuotaExceeded { .. }), "re-read");
    let totals = acme.usage_totals(Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!(totals.iter().map(|t| t.requests).sum::<u64>(), 10);
}

// ---------------------------------------------------------------- input the engine refuses

/// NUL and other control characters in names, descriptions, reasons and
/// metadata are `InvalidInput` from the engine on every store (PostgreSQL
/// cannot store NUL and would fail with a store error), and leave nothing
/// behind; other Unicode round-trips.
pub async fn control_characters_are_refused_before_the_store(store: Arc<dyn Store>) {
    let engine = engine_builder(Arc::clone(&store)).build().unwrap();
    let tenant = engine.tenant("billing", "acme");
    let key = tenant.create_key(keysmith_core::NewKey::new("kept")).await.unwrap().key;
    let nul_metadata = || {
        let mut metadata = serde_json::Map::new();
        metadata.insert("nested".to_owned(), serde_json::json!({"list": ["ok", "a\u{0}b"]}));
        metadata
    };
    let invalid = |result: Result<(), Error>, field: &str| match result {
        Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{field}: expected InvalidInput, got {other:?}"),
    };
    for text in ["nul\0", "esc\u{1b}[31m", "del\u{7f}"] {
        invalid(tenant.create_key(keysmith_core::NewKey::new(text)).await.map(drop), "name");
        invalid(tenant.create_policy(keysmith_core::PolicySpec::new(text)).await.map(drop), "name");
        invalid(tenant.create_scope("read", text).await.map(drop), "description");
        invalid(tenant.revoke_key(key.id, text).await.map(drop), "reason");
    }
    let with_metadata = keysmith_core::NewKey::new("k").with_metadata(nul_metadata());
    invalid(tenant.create_key(with_metadata).await.map(drop), "metadata");
    let mut spec = keysmith_core::PolicySpec::new("p");
    spec.metadata = nul_metadata();
    invalid(tenant.create_policy(spec).await.map(drop), "metadata");

    let keys = store.list_keys(&acme(), &KeyFilter::default()).await.unwrap();
    assert_eq!(keys.iter().map(|k| (k.name.as_str(), k.state)).collect::<Vec<_>>(), [("kept", KeyState::Active)]);
    assert!(store.list_policies(&acme(), Page::default()).await.unwrap().is_empty());
    assert!(store.list_scopes(&acme()).await.unwrap().is_empty());

    let mut metadata = serde_json::Map::new();
    metadata.insert("note".to_owned(), "línea ☕ 🔑 \u{200b}".into());
    let unicode = keysmith_core::NewKey::new("clé ☕").with_metadata(metadata.clone());
    let created = tenant.create_key(unicode).await.unwrap().key;
    let stored = store.get_key(&acme(), created.id).await.unwrap().unwrap();
    assert_eq!((stored.key.name.as_str(), &stored.key.metadata), ("clé ☕", &metadata));
}

/// Under `UsageMode::Aggregates` the store gets roll-ups only, exact to the
/// request: none is lost (written + dropped + failed = accepted, nothing
/// dropped below the queue's capacity in keys), shutdown flushes the
/// counters, and a quota counts them.
pub async fn aggregates_mode_writes_exact_roll_ups_only_and_loses_nothing(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    // A place per key and hour in each thread's buffer: far fewer than
    // the requests.
    let config = UsageConfig { queue_capacity: 16, ..UsageConfig::default() };
    let engine = engine_builder(Arc::clone(&store))
        .with_clock(clock.clone())
        .with_usage_config(config)
        .with_usage_mode(keysmith_core::UsageMode::Aggregates)
        .build()
        .unwrap();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("q").with_quota(Some(30), None)).await.unwrap();
    let metered = acme.create_key(NewKey::new("m").with_policy(policy.id)).await.unwrap();
    let plain = acme.create_key(NewKey::new("p")).await.unwrap();
    let ctx = RequestContext::new();
    for _ in 0..30 {
        let validation = engine.validate(metered.raw.expose(), &ctx).await.unwrap();
        engine.record_usage(record_of(&validation));
    }
    for i in 0..3000 {
        engine.record_usage(usage(&plain.key, t0(), if i % 3 == 0 { 500 } else { 200 }));
    }
    engine.shutdown().await;
    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.dropped, stats.failed), (3030, 0, 0));
    let all = TimeRange::default();
    for (key, requests, errors) in [(&metered, 30, 0), (&plain, 3000, 1000)] {
        assert!(acme.list_usage(key.key.id, all, Page::default()).await.unwrap().is_empty(), "no raw records");
        for period in Period::ALL {
            let rows = acme.usage_aggregates(key.key.id, period, all).await.unwrap();
            let sums = rows.iter().fold((0, 0), |(r, e), row| (r + row.requests, e + row.errors));
            assert_eq!(sums, (requests, errors), "{period}");
        }
    }
    // Another engine reads the quota from the roll-ups: used up.
    let other = engine_builder(Arc::clone(&store)).with_clock(clock.clone()).build().unwrap();
    let refusal = refusal_of(other.validate(metered.raw.expose(), &ctx).await);
    assert!(matches!(refusal, Refusal::QuotaExceeded { .. }), "{refusal:?}");
}

/// Times are kept whatever the year (a DATETIME-like column holds 1000 to
/// 9999): an expiry past 2038 reads back and is enforced, a key made in
/// 2039 is used and swept in 2039, and the last day a store can hold
/// round-trips.
pub async fn times_past_2038_are_kept_and_enforced(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("app", "acme");
    let late = Utc.with_ymd_and_hms(2040, 6, 1, 0, 0, 0).unwrap();
    let last = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    let soon = acme.create_key(NewKey::new("2040").with_expires_at(late)).await.unwrap();
    let never = acme.create_key(NewKey::new("9999").with_expires_at(last)).await.unwrap();
    assert_eq!(acme.get_key(soon.key.id).await.unwrap().expires_at, Some(late));
    assert_eq!(acme.get_key(never.key.id).await.unwrap().expires_at, Some(last));

    let ctx = RequestContext::new();
    clock.set(Utc.with_ymd_and_hms(2039, 1, 1, 0, 0, 0).unwrap());
    engine.validate(soon.raw.expose(), &ctx).await.unwrap();
    let made_in_2039 = acme.create_key(NewKey::new("2039").with_expires_at(late)).await.unwrap();
    engine.validate(made_in_2039.raw.expose(), &ctx).await.unwrap();
    engine.flush_usage().await;
    let used = acme.get_key(made_in_2039.key.id).await.unwrap();
    assert_eq!(used.created_at, Utc.with_ymd_and_hms(2039, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(used.last_used_at, Some(used.created_at));

    clock.set(late + chrono::Duration::days(1));
    assert_eq!(refusal_of(engine.validate(soon.raw.expose(), &ctx).await), Refusal::Expired);
    assert_eq!(acme.get_key(soon.key.id).await.unwrap().state, KeyState::Expired);
    let swept = engine.sweep().await.unwrap();
    assert_eq!(swept.expired, 1, "the 2039 key expires in the sweep: {swept:?}");
    assert_eq!(acme.get_key(made_in_2039.key.id).await.unwrap().state, KeyState::Expired);
    engine.validate(never.raw.expose(), &ctx).await.unwrap();

    // Past what every store holds: refused before the store, nothing written.
    let beyond = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
    let refused = acme.create_key(NewKey::new("beyond").with_expires_at(beyond)).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidInput { field: "expires_at", .. }), "{refused:?}");
    let row = |created_at| keysmith_core::ImportRow {
        hash: "ab".repeat(32),
        created_at: Some(created_at),
        ..keysmith_core::ImportRow::default()
    };
    let ancient = Utc.with_ymd_and_hms(999, 12, 31, 0, 0, 0).unwrap();
    let options = keysmith_core::ImportOptions::new();
    let report = acme.import_keys(&[row(ancient)], &options).await.unwrap();
    assert_eq!((report.imported, report.refused.len()), (0, 1), "{report:?}");
    assert!(report.refused[0].reason.contains("created_at"), "{report:?}");
    let oldest = Utc.with_ymd_and_hms(1000, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(acme.import_keys(&[row(oldest)], &options).await.unwrap().imported, 1);
    assert_eq!(acme.list_keys(&KeyFilter::default()).await.unwrap().len(), 4);
}

/// A usage record whose method, endpoint or user agent is longer than any
/// store keeps (an extension method, a long raw path) is cut to the bounds
/// every store holds, so it never fails the batch that also carries other
/// keys' and tenants' records.
pub async fn oversized_usage_texts_are_cut_and_fail_no_batch(store: Arc<dyn Store>) {
    use keysmith_core::usage::{MAX_ENDPOINT_LEN, MAX_METHOD_LEN, MAX_USER_AGENT_LEN, SharedStr};

    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("app", "acme").create_key(NewKey::new("acme")).await.unwrap();
    let globex = engine.tenant("app", "globex").create_key(NewKey::new("globex")).await.unwrap();
    for _ in 0..10 {
        engine.record_usage(usage(&acme.key, t0(), 200));
    }
    let long = UsageRecord {
        method: SharedStr::copied(&"X".repeat(MAX_METHOD_LEN + 1)),
        // Multi-byte characters across the bound: cut at a character.
        endpoint: SharedStr::copied(&format!("/{}", "é".repeat(MAX_ENDPOINT_LEN))),
        user_agent: Some(SharedStr::copied(&"a".repeat(70_000))),
        ..usage(&globex.key, t0(), 200)
    };
    engine.record_usage(long);
    for _ in 0..10 {
        engine.record_usage(usage(&acme.key, t0(), 201));
    }
    engine.flush_usage().await;
    let stats = engine.usage_stats();
    assert_eq!((stats.written, stats.failed, stats.dropped), (21, 0, 0), "{stats:?}");

    let all = TimeRange::default();
    let acme_records = store.list_usage(&acme.key.tenant, acme.key.id, all, Page::default()).await.unwrap();
    assert_eq!(acme_records.len(), 20);
    let kept = store.list_usage(&globex.key.tenant, globex.key.id, all, Page::default()).await.unwrap();
    let [kept] = &kept[..] else { panic!("{kept:?}") };
    assert_eq!(&*kept.method, "X".repeat(MAX_METHOD_LEN));
    assert!(
        kept.endpoint.len() <= MAX_ENDPOINT_LEN && kept.endpoint.len() > MAX_ENDPOINT_LEN - 2,
        "{}",
        kept.endpoint.len()
    );
    assert!(kept.endpoint.starts_with("/é"));
    assert_eq!(kept.user_agent.as_deref().map(str::len), Some(MAX_USER_AGENT_LEN));
}

/// A key past its expiry or its policy's maximum age that no validation or
/// sweep has marked yet is expired for rotation and suspension too: neither
/// renews nor parks a dead credential, and the key ends `expired`.
pub async fn a_key_past_its_expiry_is_neither_rotated_nor_suspended(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("app", "acme");
    let aged = acme.create_policy(PolicySpec::new("aged").with_max_key_age(Duration::from_secs(3600))).await.unwrap();
    let dated =
        acme.create_key(NewKey::new("dated").with_expires_at(t0() + chrono::Duration::minutes(30))).await.unwrap();
    let old = acme.create_key(NewKey::new("old").with_policy(aged.id)).await.unwrap();
    let young = acme.create_key(NewKey::new("young")).await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));

    for key in [&dated, &old] {
        let rotated = acme.rotate_key(key.key.id, RotationReason::Scheduled, None).await.unwrap_err();
        assert!(
            matches!(rotated, Error::InvalidTransition { from: KeyState::Expired, to: KeyState::Rotated }),
            "{rotated:?}"
        );
        assert_eq!(acme.get_key(key.key.id).await.unwrap().state, KeyState::Expired);
        assert!(acme.list_rotations(key.key.id).await.unwrap().is_empty());
        let suspended = acme.suspend_key(key.key.id).await.unwrap_err();
        assert!(matches!(suspended, Error::InvalidTransition { from: KeyState::Expired, .. }), "{suspended:?}");
    }
    let other = acme.create_key(NewKey::new("other").with_policy(aged.id)).await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let suspended = acme.suspend_key(other.key.id).await.unwrap_err();
    assert!(matches!(suspended, Error::InvalidTransition { from: KeyState::Expired, .. }), "{suspended:?}");
    assert_eq!(acme.get_key(other.key.id).await.unwrap().state, KeyState::Expired);
    // A key within its time rotates and suspends as before.
    acme.rotate_key(young.key.id, RotationReason::Scheduled, None).await.unwrap();
    let fresh = acme.create_key(NewKey::new("fresh").with_policy(aged.id)).await.unwrap();
    assert_eq!(acme.suspend_key(fresh.key.id).await.unwrap().state, KeyState::Suspended);
}
