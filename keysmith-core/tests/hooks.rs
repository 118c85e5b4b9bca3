//! Hooks: which events fire, that a failing plugin fails nothing, the
//! built-in audit and metrics plugins, and that no secret ever shows.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use keysmith_core::hooks::{AuditEntry, AuditPlugin, MetricsPlugin};
use keysmith_core::{
    BoxError, Engine, Event, ManualClock, MemoryStore, NewKey, Period, Plugin, PolicySpec, RequestContext,
    RotationReason,
};
use support::{Recorder, t0};

#[derive(Debug)]
struct Failing;

#[async_trait]
impl Plugin for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }
    async fn on_event(&self, _: &Event) -> Result<(), BoxError> {
        Err("the audit database is down".into())
    }
}

fn engine_with(
    plugins: impl FnOnce(keysmith_core::EngineBuilder) -> keysmith_core::EngineBuilder,
) -> (Engine, ManualClock) {
    let clock = ManualClock::new(t0());
    let builder = Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock.clone());
    (plugins(builder).build().unwrap(), clock)
}

#[tokio::test]
async fn every_operation_fires_its_event_and_no_event_shows_a_secret() {
    let recorder = Recorder::default();
    let (engine, clock) = engine_with(|b| b.with_plugin(recorder.clone()));
    let acme = engine.tenant("app", "acme");
    let ctx = RequestContext::new();

    let a = acme.create_key(NewKey::new("a")).await.unwrap();
    engine.validate(a.raw.expose(), &ctx).await.unwrap();
    let rotated = acme.rotate_key(a.key.id, RotationReason::Compromised, Some(Duration::ZERO)).await.unwrap();
    engine.validate(a.raw.expose(), &ctx).await.unwrap_err();
    acme.suspend_key(rotated.key.id).await.unwrap();
    acme.reactivate_key(rotated.key.id).await.unwrap();
    acme.revoke_key(rotated.key.id, "done").await.unwrap();
    let b = acme.create_key(NewKey::new("b").with_expires_at(t0() + chrono::Duration::seconds(1))).await.unwrap();
    clock.advance(Duration::from_secs(1));
    engine.validate(b.raw.expose(), &ctx).await.unwrap_err();
    engine.validate("sk_live_garbage", &ctx).await.unwrap_err();

    assert_eq!(
        recorder.names(),
        [
            "key_created",
            "key_validated",
            "key_rotated",
            "key_validation_failed",
            "key_suspended",
            "key_reactivated",
            "key_revoked",
            "key_created",
            "key_expired",
            "key_validation_failed",
            "key_validation_failed",
        ]
    );
    let events = recorder.0.lock().unwrap().clone();
    match &events[3] {
        Event::KeyValidationFailed { reason, key_id, tenant, .. } => {
            assert_eq!(reason.code(), "key_revoked");
            assert_eq!(*key_id, Some(a.key.id));
            assert_eq!(tenant.as_ref(), Some(acme.tenant()));
        }
        other => panic!("{other:?}"),
    }
    match events.last().unwrap() {
        Event::KeyValidationFailed { reason, key_id: None, tenant: None, .. } => {
            assert_eq!(reason.code(), "malformed_key");
        }
        other => panic!("{other:?}"),
    }

    let dump = recorder.debug_dump();
    for secret in [a.raw.expose(), rotated.raw.expose(), b.raw.expose()] {
        let random = &secret["sk_live_".len()..];
        assert!(!dump.contains(random), "an event shows a raw key");
        assert!(!dump.contains(&random[..16]));
    }
}

#[tokio::test]
async fn a_refusal_by_limit_or_quota_fires_its_event_with_when_to_retry() {
    let recorder = Recorder::default();
    let entries = Arc::new(Mutex::new(Vec::<AuditEntry>::new()));
    let sink = Arc::clone(&entries);
    let audit = AuditPlugin::new().with_sink(move |entry| sink.lock().unwrap().push(entry.clone()));
    let (engine, _clock) = engine_with(|b| b.with_plugin(recorder.clone()).with_plugin(audit));
    let acme = engine.tenant("app", "acme");
    let ctx = RequestContext::new();
    let limited =
        acme.create_policy(PolicySpec::new("limited").with_rate_limit(1, Duration::from_secs(60))).await.unwrap();
    let monthly = acme.create_policy(PolicySpec::new("monthly").with_quota(Some(5), Some(1))).await.unwrap();
    let a = acme.create_key(NewKey::new("a").with_policy(limited.id)).await.unwrap();
    let b = acme.create_key(NewKey::new("b").with_policy(monthly.id)).await.unwrap();
    for key in [&a, &b] {
        engine.validate(key.raw.expose(), &ctx).await.unwrap();
        engine.validate(key.raw.expose(), &ctx).await.unwrap_err();
    }

    let events = recorder.0.lock().unwrap().clone();
    let limited_event = events.iter().find(|e| matches!(e, Event::KeyRateLimited { .. })).unwrap();
    match limited_event {
        Event::KeyRateLimited { key_id, tenant, retry_after } => {
            assert_eq!((*key_id, tenant), (a.key.id, acme.tenant()));
            assert_eq!(*retry_after, Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
    let quota_event = events.iter().find(|e| matches!(e, Event::QuotaExceeded { .. })).unwrap();
    match quota_event {
        Event::QuotaExceeded { key_id, tenant, period, resets_at } => {
            assert_eq!((*key_id, tenant), (b.key.id, acme.tenant()));
            // The monthly quota (1) was used up, not the daily one (5).
            assert_eq!(*period, Period::Month);
            assert_eq!(*resets_at, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap());
        }
        other => panic!("{other:?}"),
    }
    let entries = entries.lock().unwrap().clone();
    let quota_entry = entries.iter().find(|entry| entry.event == "quota_exceeded").unwrap();
    assert_eq!(quota_entry.detail.as_deref(), Some("month quota used up until 2026-04-01T00:00:00+00:00"));
}

#[tokio::test]
async fn no_public_type_prints_a_raw_key() {
    let recorder = Recorder::default();
    let (engine, _) = engine_with(|b| b.with_plugin(recorder.clone()));
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("a").with_scopes(["read"])).await.unwrap();
    let raw = created.raw.expose().to_owned();
    let validation = engine.validate(&raw, &RequestContext::new()).await.unwrap();
    let rotated = acme.rotate_key(created.key.id, RotationReason::Manual, None).await.unwrap();
    let new_raw = rotated.raw.expose().to_owned();
    let need = vec!["admin".to_owned()];
    let refused = engine.validate(&new_raw, &RequestContext::new().with_required_scopes(&need)).await.unwrap_err();
    let malformed = engine.validate(&format!("{raw}x"), &RequestContext::new()).await.unwrap_err();
    let transition_error = acme.reactivate_key(created.key.id).await.unwrap_err();

    let printed = [
        format!("{created:?}"),
        format!("{created:#?}"),
        format!("{rotated:?}"),
        format!("{:?}", created.raw),
        format!("{}", created.raw),
        format!("{validation:?}"),
        format!("{refused:?} {refused}"),
        format!("{malformed:?} {malformed}"),
        format!("{transition_error:?} {transition_error}"),
        format!("{engine:?} {acme:?}"),
        recorder.debug_dump(),
    ];
    for text in &printed {
        for secret in [&raw, &new_raw] {
            assert!(!text.contains(&secret["sk_live_".len()..]), "secret printed in {text}");
        }
    }
    assert!(printed[0].contains("REDACTED"));
}

#[tokio::test]
async fn a_failing_plugin_fails_nothing_and_later_plugins_still_hear() {
    let recorder = Recorder::default();
    let (engine, _) = engine_with(|b| b.with_plugin(Failing).with_plugin(recorder.clone()));
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("a")).await.unwrap();
    engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
    acme.revoke_key(created.key.id, "x").await.unwrap();
    assert_eq!(recorder.names(), ["key_created", "key_validated", "key_revoked"]);
}

#[tokio::test]
async fn audit_plugin_writes_one_entry_per_management_event_to_its_sink() {
    let entries = Arc::new(Mutex::new(Vec::<AuditEntry>::new()));
    let sink = Arc::clone(&entries);
    let audit = AuditPlugin::new().with_sink(move |entry| sink.lock().unwrap().push(entry.clone()));
    let (engine, _) = engine_with(|b| b.with_plugin(audit));
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("a")).await.unwrap();
    engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
    acme.revoke_key(created.key.id, "customer left").await.unwrap();
    engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap_err();

    let entries = entries.lock().unwrap().clone();
    let id = created.key.id.to_string();
    assert_eq!(
        entries,
        [
            AuditEntry {
                event: "key_created",
                tenant: Some(acme.tenant().clone()),
                subject: Some(id.clone()),
                detail: None
            },
            AuditEntry {
                event: "key_revoked",
                tenant: Some(acme.tenant().clone()),
                subject: Some(id.clone()),
                detail: Some("customer left".into())
            },
            AuditEntry {
                event: "key_validation_failed",
                tenant: Some(acme.tenant().clone()),
                subject: Some(id),
                detail: Some("key_revoked".into())
            },
        ],
        "successful validations are not audited by default"
    );
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn audit_plugin_logs_structured_tracing_events_under_keysmith_audit() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (engine, _) = engine_with(|b| b.with_plugin(AuditPlugin::new().with_successful_validations()));
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("a")).await.unwrap();
    engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, event) in lines.iter().zip(["key_created", "key_validated"]) {
        assert_eq!(line["target"], "keysmith::audit");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["event"], event);
        assert_eq!(line["fields"]["tenant_id"], "acme");
        assert_eq!(line["fields"]["subject"], created.key.id.to_string());
    }
    assert!(!text.contains(&created.raw.expose()["sk_live_".len()..]));
}

#[test]
fn metrics_plugin_counts_outcomes_and_times_validations() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (engine, _) = engine_with(|b| b.with_plugin(MetricsPlugin::new()));
            let acme = engine.tenant("app", "acme");
            let created = acme.create_key(NewKey::new("a")).await.unwrap();
            let ctx = RequestContext::new();
            engine.validate(created.raw.expose(), &ctx).await.unwrap();
            engine.validate(created.raw.expose(), &ctx).await.unwrap();
            engine.validate("nonsense", &ctx).await.unwrap_err();
        });
    });

    let mut counters = std::collections::HashMap::new();
    let mut histogram_samples = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        match value {
            DebugValue::Counter(n) => {
                counters.insert(format!("{}{{{}}}", key.name(), labels.join(",")), n);
            }
            DebugValue::Histogram(samples) => histogram_samples += samples.len(),
            DebugValue::Gauge(_) => {}
        }
    }
    assert_eq!(counters["keysmith_validations_total{outcome=valid}"], 2);
    assert_eq!(counters["keysmith_validations_total{outcome=malformed_key}"], 1);
    assert_eq!(counters["keysmith_events_total{event=key_created}"], 1);
    assert_eq!(histogram_samples, 3);
}
