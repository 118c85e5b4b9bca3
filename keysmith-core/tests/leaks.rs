//! Leaked keys: what `Engine::report_leaks` does under each tenant's leak
//! policy, that a report is idempotent, that a foreign token costs no store
//! call, and that the change reaches another engine over the change feed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::feed::LocalChangeFeed;
use keysmith_core::leak::{LeakAction, LeakLabel, LeakPolicies, LeakPolicy, LeakReport};
use keysmith_core::store::CacheConfig;
use keysmith_core::{
    Engine, Event, KeyState, MemoryStore, NewKey, Refusal, RequestContext, RotationReason, Store, ValidationError,
};
use sha2::{Digest, Sha256};
use support::Recorder;

const URL: &str = "https://github.com/octo/app/blob/main/.env";

/// The `KeyLeaked` events `recorder` saw.
fn leaks(recorder: &Recorder) -> Vec<Event> {
    recorder.0.lock().unwrap().iter().filter(|event| matches!(event, Event::KeyLeaked { .. })).cloned().collect()
}

fn engine(policies: LeakPolicies) -> (Engine, Recorder) {
    let recorder = Recorder::default();
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .with_cache(CacheConfig::default())
        .with_leak_policies(policies)
        .with_plugin(recorder.clone())
        .build()
        .unwrap();
    (engine, recorder)
}

fn report(token: &str) -> LeakReport<'_> {
    LeakReport { token, source: "content", url: URL }
}

async fn refusal(engine: &Engine, raw: &str) -> Option<Refusal> {
    match engine.validate(raw, &RequestContext::new()).await {
        Ok(_) => None,
        Err(ValidationError::Refused(refusal)) => Some(refusal),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_leaked_key_is_revoked_with_the_url_as_reason_and_the_event_never_carries_the_token() {
    let (engine, recorder) = engine(LeakPolicies::default());
    let acme = engine.tenant("billing", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let raw = created.raw.expose();
    assert_eq!(refusal(&engine, raw).await, None, "validates (and is cached) before the leak");
    recorder.clear();

    let findings = engine.report_leaks(&[report(raw)]).await.unwrap();

    assert_eq!(findings[0].label, LeakLabel::TruePositive);
    assert_eq!(findings[0].key, Some(created.key.id));
    assert_eq!(findings[0].action, Some(LeakAction::Revoked));
    assert_eq!(findings[0].token_hash, hex(Sha256::digest(raw.as_bytes()).as_slice()));
    let key = acme.get_key(created.key.id).await.unwrap();
    assert_eq!(key.state, KeyState::Revoked);
    assert_eq!(key.revoked_reason.as_deref(), Some(format!("leaked: {URL}").as_str()));
    assert_eq!(refusal(&engine, raw).await, Some(Refusal::Revoked), "the engine's own cache saw the change");
    assert_eq!(recorder.names()[..2], ["key_revoked", "key_leaked"]);
    let Event::KeyLeaked { key_id, tenant, source, url, action } = &leaks(&recorder)[0] else { unreachable!() };
    assert_eq!((*key_id, tenant, source.as_str(), url.as_str()), (created.key.id, &key.tenant, "content", URL));
    assert_eq!(*action, LeakAction::Revoked);
    let dump = format!("{} {findings:?}", recorder.debug_dump());
    assert!(!dump.contains(raw), "the raw key leaked into an event or a finding");
}

#[tokio::test]
async fn a_second_report_is_a_true_positive_that_changes_and_fires_nothing_under_every_policy() {
    for policy in LeakPolicy::ALL {
        let (engine, recorder) = engine(LeakPolicies::new(policy));
        let acme = engine.tenant("billing", "acme");
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        let raw = created.raw.expose();
        let first = engine.report_leaks(&[report(raw)]).await.unwrap();
        assert!(first[0].action.is_some(), "{policy}: the first report acts");
        let after_first = acme.get_key(created.key.id).await.unwrap();
        recorder.clear();

        let again = engine.report_leaks(&[report(raw)]).await.unwrap();

        assert_eq!(again[0].label, LeakLabel::TruePositive, "{policy}");
        assert_eq!(again[0].action, None, "{policy}");
        assert!(recorder.names().is_empty(), "{policy}: {:?}", recorder.names());
        assert_eq!(acme.get_key(created.key.id).await.unwrap(), after_first, "{policy}: the key is untouched");
    }
}

#[tokio::test]
async fn suspend_policy_suspends_with_the_leak_as_reason_and_reactivation_clears_it() {
    let (engine, recorder) = engine(LeakPolicies::new(LeakPolicy::Suspend));
    let acme = engine.tenant("billing", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let raw = created.raw.expose();

    let findings = engine.report_leaks(&[report(raw)]).await.unwrap();

    assert_eq!(findings[0].action, Some(LeakAction::Suspended));
    let key = acme.get_key(created.key.id).await.unwrap();
    assert_eq!(key.state, KeyState::Suspended);
    assert_eq!(key.revoked_reason.as_deref(), Some(format!("leaked: {URL}").as_str()));
    assert_eq!(refusal(&engine, raw).await, Some(Refusal::Suspended));
    assert!(recorder.names().contains(&"key_suspended"));
    let reactivated = acme.reactivate_key(created.key.id).await.unwrap();
    assert_eq!(reactivated.revoked_reason, None);
    assert_eq!(refusal(&engine, raw).await, None);
}

#[tokio::test]
async fn a_rotated_key_still_in_its_grace_is_revoked_even_under_suspend() {
    let (engine, _) = engine(LeakPolicies::new(LeakPolicy::Suspend));
    let acme = engine.tenant("billing", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let rotated =
        acme.rotate_key(created.key.id, RotationReason::Scheduled, Some(Duration::from_secs(3600))).await.unwrap();

    let findings = engine.report_leaks(&[report(created.raw.expose())]).await.unwrap();

    assert_eq!(findings[0].action, Some(LeakAction::Revoked));
    assert_eq!(refusal(&engine, created.raw.expose()).await, Some(Refusal::Revoked));
    assert_eq!(refusal(&engine, rotated.raw.expose()).await, None, "the replacement is untouched");
}

#[tokio::test]
async fn notify_policy_changes_nothing_and_fires_key_leaked_once() {
    let (engine, recorder) = engine(LeakPolicies::new(LeakPolicy::Notify));
    let acme = engine.tenant("billing", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let before = acme.get_key(created.key.id).await.unwrap();
    recorder.clear();

    let findings = engine.report_leaks(&[report(created.raw.expose())]).await.unwrap();

    assert_eq!((findings[0].label, findings[0].action), (LeakLabel::TruePositive, Some(LeakAction::Notified)));
    assert_eq!(recorder.names(), ["key_leaked"]);
    assert_eq!(acme.get_key(created.key.id).await.unwrap(), before);
    assert_eq!(refusal(&engine, created.raw.expose()).await, None);
}

#[tokio::test]
async fn each_tenant_gets_its_own_leak_policy() {
    let policies = LeakPolicies::new(LeakPolicy::Revoke).with_tenant("billing", "sandbox", LeakPolicy::Notify);
    let (engine, _) = engine(policies);
    let acme = engine.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let sandbox = engine.tenant("billing", "sandbox").create_key(NewKey::new("ci")).await.unwrap();

    let findings = engine.report_leaks(&[report(acme.raw.expose()), report(sandbox.raw.expose())]).await.unwrap();

    assert_eq!(findings[0].action, Some(LeakAction::Revoked));
    assert_eq!(findings[1].action, Some(LeakAction::Notified));
    assert_eq!(engine.leak_policy(&sandbox.key.tenant), LeakPolicy::Notify);
    assert_eq!(refusal(&engine, sandbox.raw.expose()).await, None);
}

#[tokio::test]
async fn someone_elses_token_is_a_false_positive_without_any_store_call() {
    let (store, calls) = support::counting_store();
    let engine = Engine::builder(store).build().unwrap();
    let ours = engine.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let mut tampered = ours.raw.expose().to_owned();
    tampered.pop();
    tampered.push(if ours.raw.expose().ends_with('A') { 'B' } else { 'A' });
    let before = calls.calls();

    let findings = engine
        .report_leaks(&[report("ghp_16C7e42F292c6912E7710c838347Ae178B4a"), report(&tampered), report("")])
        .await
        .unwrap();

    assert!(findings.iter().all(|finding| finding.label == LeakLabel::FalsePositive && finding.key.is_none()));
    assert_eq!(calls.calls(), before, "a token that is not ours never reaches the store");
}

#[tokio::test]
async fn a_well_formed_token_no_tenant_has_is_a_false_positive() {
    let (engine, recorder) = engine(LeakPolicies::default());
    let other = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let elsewhere = other.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();

    let findings = engine.report_leaks(&[report(elsewhere.raw.expose())]).await.unwrap();

    assert_eq!(findings[0].label, LeakLabel::FalsePositive);
    assert!(leaks(&recorder).is_empty());
}

#[tokio::test]
async fn a_token_reported_twice_in_one_batch_acts_once_and_gets_feedback_twice() {
    let (engine, recorder) = engine(LeakPolicies::default());
    let created = engine.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let raw = created.raw.expose();
    recorder.clear();

    let findings = engine.report_leaks(&[report(raw), report("nope"), report(raw)]).await.unwrap();

    assert_eq!(findings.len(), 3);
    assert_eq!(findings[0].action, Some(LeakAction::Revoked));
    assert_eq!((findings[2].label, findings[2].action), (LeakLabel::TruePositive, None));
    assert_eq!(findings[1].label, LeakLabel::FalsePositive);
    assert_eq!(leaks(&recorder).len(), 1);
}

#[tokio::test]
async fn a_revocation_for_a_leak_reaches_another_engine_over_the_change_feed() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let feed = Arc::new(LocalChangeFeed::new());
    // A positive TTL long enough that only the feed explains the eviction.
    let cache = CacheConfig::default().with_positive_ttl(Duration::from_secs(3600));
    let build = || {
        Engine::builder(Arc::clone(&store))
            .with_cache(cache.clone())
            .with_change_feed(Arc::clone(&feed))
            .build()
            .unwrap()
    };
    let (reporter, other) = (build(), build());
    let created = reporter.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let raw = created.raw.expose();
    for engine in [&reporter, &other] {
        while !engine.feed_status().unwrap().subscribed {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(refusal(&other, raw).await, None, "the other engine caches the key as active");

    reporter.report_leaks(&[report(raw)]).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refusal(&other, raw).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the other engine still validates the leaked key");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(refusal(&other, raw).await, Some(Refusal::Revoked));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
