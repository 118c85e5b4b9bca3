//! `Engine::report_leaks`: what a reported leak does to each key, by its
//! tenant's leak policy.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};

use super::Engine;
use super::tenant::MAX_REASON_LEN;
use crate::hooks::Event;
use crate::leak::{self, LeakAction, LeakFinding, LeakLabel, LeakPolicy, LeakReport};
use crate::store::{StoredKey, Transition};
use crate::{Change, Hasher as _, KeyHash, KeyState, ParsedKey, Result, Sha256Hasher};

/// Keys looked up (and acted on) at once: enough to hide a SQL round trip
/// behind others, few enough to leave the pool to requests.
const CONCURRENCY: usize = 16;

/// How long a notified key is remembered, so that a scanner's retries of one
/// report fire `KeyLeaked` once.
pub(super) const NOTIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// At most this many notified keys are remembered.
pub(super) const NOTIFIED_CAPACITY: u64 = 100_000;

/// A key found for a reported token, and what this report did to it.
type Handled = (StoredKey, Option<LeakAction>);

impl Engine {
    /// Handles tokens a secret scanner found in public: for each, whether it
    /// is one of this engine's keys, and what was done to the key.
    ///
    /// A token without the shape and checksum of a key is a false positive
    /// and costs no store call. Every other token is looked up by hash across
    /// all tenants, in the store itself (a cache could answer from before the
    /// key existed or changed). A key found is a true positive, whatever its
    /// state; its tenant's [`LeakPolicy`] (see
    /// [`EngineBuilder::with_leak_policies`](crate::EngineBuilder::with_leak_policies))
    /// then applies:
    ///
    /// - `revoke`: the key is revoked with the reason `leaked: <url>`;
    /// - `suspend`: the key is suspended with that reason (a rotated key,
    ///   which cannot be suspended, is revoked);
    /// - `notify`: nothing changes.
    ///
    /// Each change reaches this engine's cache and goes out on the change feed like
    /// any other, and fires its usual event (`KeyRevoked`, `KeySuspended`)
    /// followed by [`Event::KeyLeaked`], which never carries the token.
    ///
    /// Reporting a key again is a true positive that changes and fires
    /// nothing: a revoked key cannot be revoked again, a suspended one not
    /// suspended again (the store's compare-and-set decides between racing
    /// reports), and a notified key is remembered by this engine for
    /// 24 hours (up to 100 000 keys), which covers a scanner's retries. A key
    /// already expired or revoked is reported as a true positive with no
    /// action.
    ///
    /// The findings are in the order of `reports`.
    ///
    /// # Errors
    /// A store failure. Keys handled before it stay handled; reporting the
    /// same tokens again finishes the work.
    pub async fn report_leaks(&self, reports: &[LeakReport<'_>]) -> Result<Vec<LeakFinding>> {
        let inner = &self.inner;
        let mut findings: Vec<LeakFinding> = reports
            .iter()
            .map(|report| LeakFinding {
                token_hash: Sha256Hasher.hash(report.token).to_hex(),
                label: LeakLabel::FalsePositive,
                key: None,
                action: None,
            })
            .collect();
        // The store's hash of each well-formed token; each distinct one is
        // handled once, with the first report of it.
        let hashes: Vec<Option<KeyHash>> = reports
            .iter()
            .map(|report| ParsedKey::parse(report.token).map(|_| inner.hasher.hash(report.token)))
            .collect();
        let mut first: HashMap<KeyHash, usize> = HashMap::new();
        for (index, hash) in hashes.iter().enumerate() {
            if let Some(hash) = hash {
                first.entry(*hash).or_insert(index);
            }
        }
        // Looked up in the store, past the cache: a cached "unknown" would
        // miss a key another instance just created.
        let lookups = &inner.store;
        let handled: Vec<(KeyHash, Option<Handled>)> = stream::iter(first.clone())
            .map(|(hash, index)| async move {
                let Some(stored) = lookups.find_key_by_hash(&hash).await? else {
                    return Ok((hash, None));
                };
                let report = &reports[index];
                let action = self.handle_leak(&stored, report).await?;
                Ok::<_, crate::Error>((hash, Some((stored, action))))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let found: HashMap<KeyHash, Handled> =
            handled.into_iter().filter_map(|(hash, found)| found.map(|found| (hash, found))).collect();
        for (index, (finding, hash)) in findings.iter_mut().zip(&hashes).enumerate() {
            let Some(hash) = hash else { continue };
            let Some((stored, action)) = found.get(hash) else { continue };
            finding.label = LeakLabel::TruePositive;
            finding.key = Some(stored.key.id);
            // The action belongs to the report that caused it.
            finding.action = if first[hash] == index { *action } else { None };
        }
        Ok(findings)
    }

    /// Applies the key's tenant's policy to one leaked key: what was done,
    /// or `None` when it had been done before.
    async fn handle_leak(&self, stored: &StoredKey, report: &LeakReport<'_>) -> Result<Option<LeakAction>> {
        let inner = &self.inner;
        let key = &stored.key;
        let policy = inner.leak_policies.for_tenant(&key.tenant);
        let target = match (policy, key.state) {
            // Nothing left to do: dead already, or suspended already.
            (_, KeyState::Revoked | KeyState::Expired) | (LeakPolicy::Suspend, KeyState::Suspended) => {
                return Ok(None);
            }
            (LeakPolicy::Notify, _) => {
                let fresh = inner.notified.entry(key.id).or_insert(()).is_fresh();
                if fresh {
                    self.emit_leak(stored, report, LeakAction::Notified).await;
                }
                return Ok(fresh.then_some(LeakAction::Notified));
            }
            (LeakPolicy::Suspend, KeyState::Active) => KeyState::Suspended,
            (LeakPolicy::Revoke | LeakPolicy::Suspend, _) => KeyState::Revoked,
        };
        let transition =
            Transition::to(target, inner.clock.now()).with_reason(leak::reason(report.url, MAX_REASON_LEN));
        let Some(changed) = self.apply_transition(key, &transition).await? else {
            // Another report (or operator) changed the key first.
            return Ok(None);
        };
        self.committed(|| Change::key(&changed, Some(stored.hash))).await;
        self.emit_transition(Arc::clone(&changed)).await;
        let action = if target == KeyState::Revoked { LeakAction::Revoked } else { LeakAction::Suspended };
        self.emit_leak(stored, report, action).await;
        Ok(Some(action))
    }

    async fn emit_leak(&self, stored: &StoredKey, report: &LeakReport<'_>, action: LeakAction) {
        self.emit(|| Event::KeyLeaked {
            key_id: stored.key.id,
            tenant: stored.key.tenant.clone(),
            source: report.source.to_owned(),
            url: report.url.to_owned(),
            action,
        })
        .await;
    }

    /// The leak policy that applies to `tenant`'s keys.
    #[must_use]
    pub fn leak_policy(&self, tenant: &crate::Tenant) -> LeakPolicy {
        self.inner.leak_policies.for_tenant(tenant)
    }
}
