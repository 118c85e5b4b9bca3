//! Importing keys an application issued itself, by the hash it kept of each.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::TenantEngine;
use super::tenant::validate_name;
use crate::store::{ImportOutcome, StoredKey};
use crate::{
    Change, Environment, Error, Key, KeyHash, KeyId, KeyState, Policy, PolicyId, Result, input, scope, validate_id,
};

/// The longest hint an imported key keeps, in characters.
const MAX_HINT_LEN: usize = 64;
/// The longest source id an imported key keeps, in bytes.
const MAX_EXTERNAL_ID_LEN: usize = 256;
/// The metadata field an imported key keeps its source's id in.
pub const EXTERNAL_ID_FIELD: &str = "external_id";
/// The revocation reason of a key that arrived revoked.
pub const REVOKED_BEFORE_IMPORT: &str = "revoked before import";

/// One key of the source, named after Keysmith's fields. Only `hash` is
/// required: the lowercase or uppercase hex SHA-256 of the whole raw key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportRow {
    /// Where the row came from (a file's line number, a query's row
    /// number), for the report; not stored.
    #[serde(skip)]
    pub line: u64,
    /// SHA-256 of the raw key, 64 hex characters.
    pub hash: String,
    /// What can be shown of the key (`mk_abc123`). Its part before the first
    /// `_`, when it is a valid Keysmith prefix, becomes the key's prefix, so
    /// its rotations issue keys that look alike (`mk_live_…`).
    pub hint: Option<String>,
    /// A human name (default `imported key`).
    pub name: Option<String>,
    /// The application's id of the user or customer the key belongs to.
    pub owner_id: Option<String>,
    /// When the key was created (default: the import's time).
    pub created_at: Option<DateTime<Utc>>,
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked: the key arrives `revoked`.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it expires (a time past arrives `expired`).
    pub expires_at: Option<DateTime<Utc>>,
    /// Scopes granted (the import's default scopes when absent).
    pub scopes: Option<Vec<String>>,
    /// The source's id of the key, kept in the key's metadata
    /// (`external_id`).
    pub external_id: Option<String>,
}

/// How an import treats its rows.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ImportOptions {
    environment: Option<Environment>,
    policy_id: Option<PolicyId>,
    scopes: Vec<String>,
    dry_run: bool,
}

impl ImportOptions {
    /// The engine's environment, no policy, no scopes, and a real import.
    pub fn new() -> Self {
        Self::default()
    }

    /// The environment every imported key is of (its rotations issue keys
    /// of it); the engine's default otherwise.
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Holds every imported key to this policy (`max_active_keys_per_owner
    /// = 1` keeps a source's "one active key per user").
    pub fn with_policy(mut self, policy_id: PolicyId) -> Self {
        self.policy_id = Some(policy_id);
        self
    }

    /// The scopes of rows that name none.
    pub fn with_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Says what would be imported and refused, writing nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// A row that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRefusal {
    /// The row's [`line`](ImportRow::line).
    pub line: u64,
    /// Its source id, if it had one.
    pub external_id: Option<String>,
    /// Why, for a person.
    pub reason: String,
}

/// What one call of [`TenantEngine::import_keys`] did (or, in a dry run,
/// would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Keys written (or, in a dry run, that would be).
    pub imported: u64,
    /// Of which arrived revoked or expired.
    pub imported_inactive: u64,
    /// Rows the tenant held already (by hash): an earlier run's.
    pub skipped: u64,
    /// Rows not imported, with their line and reason: bad rows, hashes of
    /// another tenant's keys, keys past their owner's limit.
    pub refused: Vec<ImportRefusal>,
    /// Rows of batches refused whole (a bad row makes its batch write
    /// nothing): not imported, though only the bad rows are in `refused`.
    pub not_written: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl ImportReport {
    /// Adds another batch's report to this one.
    pub fn merge(&mut self, other: ImportReport) {
        self.imported += other.imported;
        self.imported_inactive += other.imported_inactive;
        self.skipped += other.skipped;
        self.refused.extend(other.refused);
        self.not_written += other.not_written;
        self.dry_run |= other.dry_run;
    }
}

/// An import in several batches, one [`TenantEngine::import_batch`] call
/// each. A real run writes each batch, so later batches see what earlier ones
/// wrote; a dry run writes nothing, so the run carries what its earlier
/// batches would have written (hashes, source ids, owners' live keys) into
/// the later ones: a dry run reports what the real run would do.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ImportRun {
    options: ImportOptions,
    carried: Carried,
}

/// What the earlier batches of a dry run would have written, as far as it
/// changes what becomes of a later row.
#[derive(Debug, Clone, Default)]
struct Carried {
    hashes: HashSet<KeyHash>,
    external_ids: HashSet<String>,
    /// Keys that count toward their owner's limit under a policy.
    owned: Vec<StoredKey>,
}

impl ImportRun {
    /// A run with these options, before its first batch.
    pub fn new(options: ImportOptions) -> Self {
        Self { options, carried: Carried::default() }
    }

    /// A dry run of one batch from where this run stands, which carries
    /// nothing back: to say what else a batch that will not be written (it
    /// has a bad row) would have refused.
    pub fn checking(&self) -> Self {
        Self { options: self.options.clone().dry_run(true), carried: self.carried.clone() }
    }
}

impl TenantEngine {
    /// The most rows one call imports (one batch).
    pub const MAX_IMPORT_BATCH: usize = 10_000;

    /// Imports one batch of keys the application issued itself, by the
    /// SHA-256 of each raw key, so that its clients keep their keys: they
    /// validate as they are once the engine accepts their format
    /// ([`LegacyKeys`](crate::LegacyKeys)), and rotating one issues a
    /// Keysmith key.
    ///
    /// The batch is all or nothing: a row that cannot be a key (a hash that
    /// is not 64 hex characters, a bad owner id, name, scope or time) is
    /// refused with its line and reason and nothing of the batch is written.
    /// Otherwise, in one store transaction: rows whose hash the tenant
    /// already holds, or whose `external_id` one of the tenant's keys was
    /// imported from (by an earlier run or an earlier row), are skipped (so
    /// running an import again is a no-op, even after the source changed a
    /// secret),
    /// rows whose hash another tenant's key has and rows past the policy's
    /// `max_active_keys_per_owner` are refused, the others are written.
    /// Revoked rows arrive `revoked`, rows past their expiry `expired`.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids, the options' scopes or a batch
    /// over [`MAX_IMPORT_BATCH`](Self::MAX_IMPORT_BATCH) rows; `NotFound`
    /// for a policy that is not the tenant's; a store error (nothing written).
    pub async fn import_keys(&self, rows: &[ImportRow], options: &ImportOptions) -> Result<ImportReport> {
        self.import_batch(&mut ImportRun::new(options.clone()), rows).await
    }

    /// Imports the next batch of `run`, as [`import_keys`](Self::import_keys)
    /// does; a dry run counts what the run's earlier batches would have
    /// written (see [`ImportRun`]).
    ///
    /// # Errors
    /// As [`import_keys`](Self::import_keys).
    pub async fn import_batch(&self, run: &mut ImportRun, rows: &[ImportRow]) -> Result<ImportReport> {
        let options = &run.options;
        let tenant = self.checked()?;
        if rows.len() > Self::MAX_IMPORT_BATCH {
            return Err(Error::invalid("rows", format!("at most {} rows per batch", Self::MAX_IMPORT_BATCH)));
        }
        for name in &options.scopes {
            scope::validate_name(name)?;
        }
        let inner = &self.engine.inner;
        if inner.strict_scopes {
            let registered = inner.store.list_scopes(tenant).await?;
            let named = rows.iter().filter_map(|row| row.scopes.as_ref()).flatten().chain(&options.scopes);
            let unknown: Vec<&str> = named
                .map(String::as_str)
                .filter(|s| !registered.iter().any(|r| r.name == *s))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !unknown.is_empty() {
                return Err(Error::invalid("scopes", format!("not registered: {}", unknown.join(", "))));
            }
        }
        let policy = match options.policy_id {
            Some(id) => Some(inner.store.get_policy(tenant, id).await?.ok_or_else(|| Error::not_found("policy", id))?),
            None => None,
        };
        let now = inner.clock.now();
        let environment = options.environment.unwrap_or(inner.environment);
        let mut report = ImportReport { dry_run: options.dry_run, ..ImportReport::default() };
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            match self.imported_key(row, options, policy.as_deref(), environment, now) {
                Ok(key) => keys.push(key),
                Err(error) => report.refused.push(refusal(row, error.to_string())),
            }
        }
        if !report.refused.is_empty() {
            report.not_written = (rows.len() - report.refused.len()) as u64;
            return Ok(report);
        }
        let outcomes = if options.dry_run {
            let owner_limited = policy.as_deref().is_some_and(|policy| policy.max_active_keys_per_owner.is_some());
            self.dry_run_outcomes(&mut run.carried, &keys, owner_limited).await?
        } else {
            inner.store.import_keys(tenant, &keys, false).await?
        };
        let options = &run.options;
        for ((row, stored), outcome) in rows.iter().zip(&keys).zip(outcomes) {
            match outcome {
                ImportOutcome::Imported => {
                    report.imported += 1;
                    if stored.key.state != KeyState::Active {
                        report.imported_inactive += 1;
                    }
                    if !options.dry_run {
                        // A lookup of this hash may have been cached as unknown.
                        self.engine
                            .forget(|| Change::Key {
                                tenant: tenant.clone(),
                                key_id: stored.key.id,
                                hash: Some(stored.hash),
                            })
                            .await;
                    }
                }
                ImportOutcome::AlreadyImported => report.skipped += 1,
                ImportOutcome::HashTaken => {
                    report.refused.push(refusal(row, "another key has this hash".to_owned()));
                }
                ImportOutcome::OwnerKeyLimit { limit } => report.refused.push(refusal(
                    row,
                    format!("the owner already holds {limit} live key(s), the policy's max_active_keys_per_owner"),
                )),
            }
        }
        Ok(report)
    }

    /// What the store would make of `keys` after the batches `carried`
    /// describes, writing nothing; then carries this batch's keys too (those
    /// that count toward their owner's limit only when the policy has one:
    /// a long dry run without keeps no copy of every key).
    async fn dry_run_outcomes(
        &self, carried: &mut Carried, keys: &[StoredKey], owner_limited: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let store = &self.engine.inner.store;
        let tenant = &self.tenant;
        let mut outcomes: Vec<Option<ImportOutcome>> = Vec::with_capacity(keys.len());
        let mut asked: Vec<StoredKey> = Vec::new();
        // The store's rules, in its order: a hash the tenant holds is
        // skipped, another tenant's is refused, then a source id held is skipped.
        for stored in keys {
            let outcome = if carried.hashes.contains(&stored.hash) {
                Some(ImportOutcome::AlreadyImported)
            } else if stored.key.external_id().is_some_and(|id| carried.external_ids.contains(id)) {
                Some(match store.find_key_by_hash(&stored.hash).await? {
                    Some(held) if held.key.tenant != *tenant => ImportOutcome::HashTaken,
                    _ => ImportOutcome::AlreadyImported,
                })
            } else {
                asked.push(stored.clone());
                None
            };
            outcomes.push(outcome);
        }
        // Earlier batches' keys of the same owners go first, so that they
        // count toward the owner limit as they would once written.
        let mut ahead: Vec<StoredKey> = carried
            .owned
            .iter()
            .filter(|held| asked.iter().any(|key| key.key.owner_id == held.key.owner_id))
            .cloned()
            .collect();
        let skip = ahead.len();
        ahead.append(&mut asked);
        let mut answered = store.import_keys(tenant, &ahead, true).await?.into_iter().skip(skip);
        let mut batch = ahead.into_iter().skip(skip);
        let mut result = Vec::with_capacity(keys.len());
        for outcome in outcomes {
            let outcome = match outcome {
                Some(outcome) => outcome,
                None => {
                    let (Some(stored), Some(outcome)) = (batch.next(), answered.next()) else {
                        return Err(Error::store("the store answered a dry run for fewer keys than it was given"));
                    };
                    if outcome == ImportOutcome::Imported {
                        carried.hashes.insert(stored.hash);
                        carried.external_ids.extend(stored.key.external_id().map(str::to_owned));
                        if owner_limited
                            && stored.key.owner_id.is_some()
                            && stored.key.policy_id.is_some()
                            && stored.key.state.counts_toward_owner_limit()
                        {
                            carried.owned.push(stored);
                        }
                    }
                    outcome
                }
            };
            result.push(outcome);
        }
        Ok(result)
    }

    /// The key a row describes; `InvalidInput` naming the field at fault.
    fn imported_key(
        &self, row: &ImportRow, options: &ImportOptions, policy: Option<&Policy>, environment: Environment,
        now: DateTime<Utc>,
    ) -> Result<StoredKey> {
        let inner = &self.engine.inner;
        if row.hash.len() != 64 {
            return Err(Error::invalid("hash", format!("must be 64 hex characters, not {}", row.hash.len())));
        }
        let hash: KeyHash = row.hash.parse().map_err(|_| Error::invalid("hash", "must be 64 hex characters"))?;
        let name = validate_name(row.name.as_deref().unwrap_or("imported key"))?;
        let hint = match &row.hint {
            Some(hint) => input::check_name(hint, MAX_HINT_LEN).map_err(|_| {
                Error::invalid("hint", format!("must be 1 to {MAX_HINT_LEN} characters, no control character"))
            })?,
            None => "imported",
        };
        if let Some(owner_id) = &row.owner_id {
            validate_id("owner_id", owner_id)?;
        }
        let mut metadata = serde_json::Map::new();
        if let Some(external_id) = &row.external_id {
            if external_id.is_empty()
                || external_id.len() > MAX_EXTERNAL_ID_LEN
                || external_id.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    "external_id",
                    format!("must be 1 to {MAX_EXTERNAL_ID_LEN} bytes, no control character"),
                ));
            }
            metadata.insert(EXTERNAL_ID_FIELD.to_owned(), external_id.clone().into());
        }
        let scopes = row_scopes(row.scopes.as_deref().unwrap_or(&options.scopes), policy)?;
        let created_at = row.created_at.unwrap_or(now);
        if created_at > now {
            return Err(Error::invalid("created_at", "is in the future"));
        }
        for (field, at) in [("last_used_at", row.last_used_at), ("revoked_at", row.revoked_at)] {
            if at.is_some_and(|at| at > now) {
                return Err(Error::invalid(field, "is in the future"));
            }
        }
        for (field, at) in [
            ("created_at", Some(created_at)),
            ("last_used_at", row.last_used_at),
            ("revoked_at", row.revoked_at),
            ("expires_at", row.expires_at),
        ] {
            if let Some(at) = at {
                input::check_time(field, at)?;
            }
        }
        let (state, updated_at, revoked_reason) = match (row.revoked_at, row.expires_at) {
            (Some(at), _) => (KeyState::Revoked, at.max(created_at), Some(REVOKED_BEFORE_IMPORT.to_owned())),
            (None, Some(at)) if at <= now => (KeyState::Expired, at.max(created_at), None),
            (None, _) => (KeyState::Active, now, None),
        };
        let prefix = hint
            .split_once('_')
            .map(|(prefix, _)| prefix)
            .filter(|prefix| crate::key::validate_prefix(prefix).is_ok())
            .unwrap_or(&inner.prefix)
            .to_owned();
        let id = KeyId::new();
        let key = Key {
            id,
            lineage_id: id,
            name,
            hint: hint.to_owned(),
            prefix,
            environment,
            state,
            scopes,
            tenant: self.tenant.clone(),
            owner_id: row.owner_id.clone(),
            credits: None,
            policy_id: policy.map(|policy| policy.id),
            expires_at: row.expires_at,
            grace_expires_at: None,
            revoked_reason,
            last_used_at: row.last_used_at,
            created_at,
            updated_at,
            metadata,
        };
        Ok(StoredKey { key: Arc::new(key), hash })
    }
}

/// A row's scopes, checked and deduplicated, inside the policy's
/// `allowed_scopes` when it has some.
fn row_scopes(requested: &[String], policy: Option<&Policy>) -> Result<Vec<String>> {
    let mut scopes: Vec<String> = Vec::with_capacity(requested.len());
    for name in requested {
        scope::validate_name(name)?;
        if !scopes.contains(name) {
            scopes.push(name.clone());
        }
    }
    if let Some(policy) = policy.filter(|policy| !policy.allowed_scopes.is_empty()) {
        let outside: Vec<&str> =
            scopes.iter().map(String::as_str).filter(|s| !scope::any_grants(&policy.allowed_scopes, s)).collect();
        if !outside.is_empty() {
            return Err(Error::invalid(
                "scopes",
                format!("not allowed by policy {}: {}", policy.name, outside.join(", ")),
            ));
        }
    }
    Ok(scopes)
}

fn refusal(row: &ImportRow, reason: String) -> ImportRefusal {
    ImportRefusal { line: row.line, external_id: row.external_id.clone(), reason }
}
