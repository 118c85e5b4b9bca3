//! Shared fixtures of keysmith-core's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use keysmith_core::store::{ProbedStore, StoreOp, StoreProbe};
use keysmith_core::{
    BoxError, Engine, EngineBuilder, Event, KeyId, ManualClock, MemoryStore, Plugin, Result, Store, Tenant, UsageId,
    UsageRecord,
};

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 14, 12, 0, 0).unwrap()
}

/// An engine on a memory store, with a manual clock at [`t0`].
pub fn engine() -> (Engine, ManualClock) {
    let clock = ManualClock::new(t0());
    let engine = builder(Arc::new(MemoryStore::new())).with_clock(clock.clone()).build().unwrap();
    (engine, clock)
}

/// A usage record of a `GET /users` made at `at` (its id too, as the
/// writer numbers it) that the handler answered with `status`.
pub fn usage_record(key_id: KeyId, tenant: &Tenant, at: DateTime<Utc>, status: u16) -> UsageRecord {
    UsageRecord {
        id: UsageId::at(at),
        key_id,
        tenant: tenant.into(),
        endpoint: "/users".into(),
        method: "GET".into(),
        status,
        ip: Some(std::net::IpAddr::from([192, 0, 2, 1])),
        user_agent: Some("test".into()),
        latency: Duration::from_millis(3),
        timestamp: at,
    }
}

pub fn builder(store: Arc<dyn Store>) -> EngineBuilder {
    Engine::builder(store)
}

/// Counts every store call.
#[derive(Debug, Default)]
pub struct CallCounter(AtomicU64);

impl CallCounter {
    pub fn calls(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StoreProbe for CallCounter {
    async fn before(&self, _: StoreOp) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A memory store whose calls are counted.
pub fn counting_store() -> (Arc<dyn Store>, Arc<CallCounter>) {
    let counter = Arc::new(CallCounter::default());
    (Arc::new(ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&counter))), counter)
}

/// A plugin that keeps every event it sees.
#[derive(Debug, Default, Clone)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// The events' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(Event::name).collect()
    }

    /// Every event in both `Debug` forms, to search for what must not be there.
    pub fn debug_dump(&self) -> String {
        let events = self.0.lock().unwrap();
        format!("{events:?} {events:#?}")
    }

    /// Forgets what it saw.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

#[async_trait]
impl Plugin for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    async fn on_event(&self, event: &Event) -> std::result::Result<(), BoxError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// The counters recorded while `body` runs on a current-thread runtime
/// under a local metrics recorder, as `name{label=value,…}` → count.
pub fn counters_recorded<F: std::future::Future<Output = ()>>(body: impl FnOnce() -> F) -> HashMap<String, u64> {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(body()));
    let mut counters = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let key = key.key();
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            *counters.entry(format!("{}{{{}}}", key.name(), labels.join(","))).or_default() += n;
        }
    }
    counters
}
