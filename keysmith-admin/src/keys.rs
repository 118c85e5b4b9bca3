//! `/keys`: create, list, show, rotate, revoke, suspend, reactivate, set
//! scopes, rotation history.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keysmith_core::store::KeyFilter;
use keysmith_core::{Environment, KeyId, KeyState, NewKey, RawKey, RotationReason};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::{IntoParams, ToSchema};

use crate::credits::{Credits, CreditsInput};
use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, Id, JsonBody, QueryParams};
use crate::lockout::{CallingKey, SelfLockout};
use crate::model::{page, parse_id};
use crate::schema::{metadata, metadata_ref, whole};

const DEFAULT_REVOKE_REASON: &str = "revoked through the admin API";

/// An API key: everything but its secret (which is never stored) and its
/// hash (which is never shown).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Key {
    /// The key's id.
    #[schema(value_type = String, pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$", example = "akey_01h455vb4pex5vsknk084sn02q")]
    id: KeyId,
    /// A human name.
    #[schema(example = "CI deploy key")]
    name: String,
    /// What can be shown of the key: its start and last four characters.
    #[schema(example = "sk_live_…a1B2")]
    hint: String,
    /// The key's prefix.
    #[schema(example = "sk")]
    prefix: String,
    /// The environment written into the key.
    environment: Environment,
    /// Where the key is in its lifecycle.
    state: KeyState,
    /// Scopes granted to the key.
    #[schema(example = json!(["read:users"]))]
    scopes: Vec<String>,
    /// The application's id for the user or customer the key belongs to.
    #[schema(example = "cus_42")]
    owner_id: Option<String>,
    /// The key's prepaid uses, if it has any.
    credits: Option<Credits>,
    /// The policy the key is held to.
    #[schema(value_type = Option<String>, pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    policy_id: Option<keysmith_core::PolicyId>,
    /// When the key expires.
    expires_at: Option<DateTime<Utc>>,
    /// When a `rotated` key stops validating.
    grace_expires_at: Option<DateTime<Utc>>,
    /// Why the key was revoked.
    revoked_reason: Option<String>,
    /// When the key last validated (updated at most once per interval).
    last_used_at: Option<DateTime<Utc>>,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// Time of the last change.
    updated_at: DateTime<Utc>,
    /// Application data (a JSON object).
    #[schema(schema_with = metadata_ref)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl From<keysmith_core::Key> for Key {
    fn from(key: keysmith_core::Key) -> Self {
        Self {
            id: key.id,
            name: key.name,
            hint: key.hint,
            prefix: key.prefix,
            environment: key.environment,
            state: key.state,
            scopes: key.scopes,
            owner_id: key.owner_id,
            credits: key.credits.map(Credits::from),
            policy_id: key.policy_id,
            expires_at: key.expires_at,
            grace_expires_at: key.grace_expires_at,
            revoked_reason: key.revoked_reason,
            last_used_at: key.last_used_at,
            created_at: key.created_at,
            updated_at: key.updated_at,
            metadata: key.metadata,
        }
    }
}

/// A new key. Only the name is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    /// A human name, 1 to 256 characters, not only whitespace, without
    /// control characters; stored trimmed.
    #[schema(example = "CI deploy key")]
    name: String,
    /// Scopes to grant. Within the policy's `allowed_scopes`, and registered
    /// when the engine's scopes are strict.
    #[serde(default)]
    #[schema(example = json!(["read:users"]))]
    scopes: Vec<String>,
    /// A policy of the caller's tenant.
    #[schema(pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    policy_id: Option<String>,
    /// The application's id for the user or customer the key is for: 1 to
    /// 128 bytes, no control character, no surrounding whitespace; compared
    /// exactly.
    /// When the policy caps `max_active_keys_per_owner`, one key too many
    /// is refused (409 `owner_key_limit`).
    #[schema(example = "cus_42")]
    owner_id: Option<String>,
    /// Prepaid uses: each request that passes spends its cost, and at zero
    /// the key is refused (429 `credits_exhausted`). Refused (409
    /// `credits_conflict`) for a key with an owner under a policy that
    /// limits by owner: it spends its owner's credits.
    credits: Option<CreditsInput>,
    /// When the key expires; must be in the future.
    expires_at: Option<DateTime<Utc>>,
    /// The environment written into the key (default: the engine's).
    environment: Option<Environment>,
    /// The key prefix, 1 to 16 characters of `[a-z0-9]` (default: the engine's).
    #[schema(example = "sk")]
    prefix: Option<String>,
    /// Application data (a JSON object of at most 64 KiB, nested at most 32
    /// levels; no control character in any key or string, no object naming
    /// a key twice).
    #[serde(default, deserialize_with = "metadata::unique_keys")]
    #[schema(schema_with = metadata_ref)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// A key just made, with its secret. The secret is shown in this response
/// only: it is not stored and cannot be read again.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    /// The key as stored.
    key: Key,
    /// The secret, to hand to the client now.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String, example = "sk_live_4Jr0Ff8e1oXqY5vD7hN2bKcL9wZsT3mP6uGa1B2")]
    raw_key: RawKey,
}

fn expose<S: Serializer>(raw: &RawKey, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(raw.expose())
}

/// How to rotate. No body, `null` or `{}` rotates with reason `manual` and
/// the default grace.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateKey {
    /// Why (default `manual`).
    #[serde(default)]
    reason: RotationReason,
    /// How long the old key keeps validating, in seconds (a whole number;
    /// `3600.0` is accepted), at most 366 days. Default: `0` for reason
    /// `compromised`, else the policy's `rotation_grace`, else the engine's
    /// (24 hours). `0` stops the old key at once.
    #[serde(default, deserialize_with = "whole::option_grace")]
    #[schema(example = 3600, maximum = 31_622_400_u64)]
    grace_seconds: Option<u64>,
}

/// The result of a rotation: the replacement key and its secret (shown
/// once), the old key (now `rotated`) and the rotation record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotatedKey {
    /// The replacement, `active`.
    key: Key,
    /// The replacement's secret, shown in this response only.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    raw_key: RawKey,
    /// The old key, now `rotated`.
    old_key: Key,
    /// What was recorded.
    rotation: Rotation,
}

/// Why a key is revoked. No body, `null` or `{}` records a default reason.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeKey {
    /// Stored as the key's `revoked_reason`: at most 1024 characters, no
    /// control character.
    #[schema(example = "leaked in a public repository")]
    reason: Option<String>,
}

/// A key's new scopes (the whole set; an empty list removes them all).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetScopes {
    /// The scopes the key holds from now on.
    #[schema(example = json!(["read:users", "write:users"]))]
    scopes: Vec<String>,
}

/// One rotation: `key_id` was replaced by `new_key_id`. Hashes are not shown.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rotation {
    /// The record's id.
    #[schema(value_type = String, pattern = "^krot_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    id: keysmith_core::RotationId,
    /// The old key.
    #[schema(value_type = String, pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    key_id: KeyId,
    /// The key that replaced it.
    #[schema(value_type = String, pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    new_key_id: KeyId,
    /// Why.
    reason: RotationReason,
    /// How long the old key kept validating, in seconds.
    grace_seconds: u64,
    /// When the old key stopped (or stops) validating.
    grace_expires_at: DateTime<Utc>,
    /// When the rotation happened.
    created_at: DateTime<Utc>,
}

impl From<keysmith_core::RotationRecord> for Rotation {
    fn from(record: keysmith_core::RotationRecord) -> Self {
        Self {
            id: record.id,
            key_id: record.key_id,
            new_key_id: record.new_key_id,
            reason: record.reason,
            grace_seconds: record.grace_ttl.as_secs(),
            grace_expires_at: record.grace_expires_at,
            created_at: record.created_at,
        }
    }
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    /// The keys, oldest first.
    items: Vec<Key>,
    /// The page size asked for.
    limit: u32,
    /// How many keys were skipped.
    offset: u64,
}

/// A key's rotations, as old or new key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RotationList {
    /// The rotations, oldest first.
    items: Vec<Rotation>,
}

/// Filters of `GET /keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeyListQuery {
    /// Only keys in this state.
    #[param(inline)]
    state: Option<KeyState>,
    /// Only keys of this environment.
    #[param(inline)]
    environment: Option<Environment>,
    /// Only keys under this policy.
    #[param(pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    policy_id: Option<String>,
    /// Only keys of this owner (matched exactly; 1 to 128 bytes).
    #[param(min_length = 1)]
    owner_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Keys to skip (default 0).
    #[param(maximum = 9_007_199_254_740_991_u64)]
    offset: Option<u64>,
}

/// Creates a key and returns its secret, once.
#[utoipa::path(
    post, path = "/keys", tag = "keys", operation_id = "create_key",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key and its secret (`raw_key`), shown only in this response", body = CreatedKey),
        (status = 400, description = "Invalid name, prefix, scope, expiry or policy id; a scope outside the policy's or unregistered (strict scopes)", body = ErrorBody),
        (status = 404, description = "`policy_id` names no policy of this tenant", body = ErrorBody),
        (status = 409, description = "The owner already holds the policy's `max_active_keys_per_owner` live keys (`owner_key_limit`), or the key is given credits under a policy that limits by owner while it has an owner: it spends its owner's (`credits_conflict`)", body = ErrorBody),
    )
)]
pub(crate) async fn create_key(
    Caller(tenant): Caller, JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    let mut new = NewKey::new(body.name).with_scopes(body.scopes).with_metadata(body.metadata);
    if let Some(policy_id) = parse_id(body.policy_id.as_deref())? {
        new = new.with_policy(policy_id);
    }
    if let Some(owner_id) = body.owner_id {
        new = new.with_owner(owner_id);
    }
    if let Some(credits) = body.credits {
        new = new.with_credits(credits.into());
    }
    if let Some(at) = body.expires_at {
        new = new.with_expires_at(at);
    }
    if let Some(environment) = body.environment {
        new = new.with_environment(environment);
    }
    if let Some(prefix) = body.prefix {
        new = new.with_prefix(prefix);
    }
    let created = tenant.create_key(new).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key: created.key.into(), raw_key: created.raw })))
}

/// Lists the tenant's keys, oldest first.
#[utoipa::path(
    get, path = "/keys", tag = "keys", operation_id = "list_keys",
    params(KeyListQuery),
    responses(
        (status = 200, description = "A page of keys", body = KeyList),
        (status = 400, description = "A filter or page value is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn list_keys(
    Caller(tenant): Caller, QueryParams(query): QueryParams<KeyListQuery>,
) -> Result<Json<KeyList>> {
    let page = page(query.limit, query.offset)?;
    let filter = KeyFilter {
        state: query.state,
        environment: query.environment,
        policy_id: parse_id(query.policy_id.as_deref())?,
        owner_id: query.owner_id,
        page,
    };
    let keys = tenant.list_keys(&filter).await?;
    Ok(Json(KeyList { items: keys.into_iter().map(Key::from).collect(), limit: page.limit, offset: page.offset }))
}

/// Shows one key.
#[utoipa::path(
    get, path = "/keys/{id}", tag = "keys", operation_id = "get_key",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The key", body = Key),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn get_key(Caller(tenant): Caller, Id(id): Id<KeyId>) -> Result<Json<Key>> {
    Ok(Json(tenant.get_key(id).await?.into()))
}

/// Replaces an active key with a new one (same name, scopes, policy,
/// metadata and expiry; same rate-limit and quota budget). The old key
/// validates until the grace period ends.
#[utoipa::path(
    post, path = "/keys/{id}/rotate", tag = "keys", operation_id = "rotate_key",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body(content = Option<RotateKey>, description = "Optional: reason and grace period"),
    responses(
        (status = 201, description = "The replacement key and its secret (shown only here), the old key and the record", body = RotatedKey),
        (status = 400, description = "The id is not a key id, or the grace period is too long", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key is not active (`invalid_transition`), or is the key making the request (`self_lockout`)", body = ErrorBody),
    )
)]
pub(crate) async fn rotate_key(
    Caller(tenant): Caller, calling: CallingKey, Id(id): Id<KeyId>, body: Option<JsonBody<Option<RotateKey>>>,
) -> Result<(StatusCode, Json<RotatedKey>)> {
    calling.refuse_on_itself(id, SelfLockout::Rotate)?;
    let body = body.and_then(|JsonBody(body)| body).unwrap_or_default();
    let grace = body.grace_seconds.map(Duration::from_secs);
    let rotated = tenant.rotate_key(id, body.reason, grace).await?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            key: rotated.key.into(),
            raw_key: rotated.raw,
            old_key: rotated.old.into(),
            rotation: rotated.record.into(),
        }),
    ))
}

/// Revokes a key for good (from `active`, `suspended` or `rotated`).
#[utoipa::path(
    post, path = "/keys/{id}/revoke", tag = "keys", operation_id = "revoke_key",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body(content = Option<RevokeKey>, description = "Optional: the reason to record"),
    responses(
        (status = 200, description = "The key, now `revoked`", body = Key),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key is already `revoked` or `expired` (`invalid_transition`), or is the key making the request (`self_lockout`)", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_key(
    Caller(tenant): Caller, calling: CallingKey, Id(id): Id<KeyId>, body: Option<JsonBody<Option<RevokeKey>>>,
) -> Result<Json<Key>> {
    calling.refuse_on_itself(id, SelfLockout::Revoke)?;
    let reason = body
        .and_then(|JsonBody(body)| body)
        .and_then(|body| body.reason)
        .unwrap_or_else(|| DEFAULT_REVOKE_REASON.to_owned());
    Ok(Json(tenant.revoke_key(id, reason).await?.into()))
}

/// Suspends an active key until it is reactivated.
#[utoipa::path(
    post, path = "/keys/{id}/suspend", tag = "keys", operation_id = "suspend_key",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The key, now `suspended`", body = Key),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key is not active (`invalid_transition`), or is the key making the request (`self_lockout`)", body = ErrorBody),
    )
)]
pub(crate) async fn suspend_key(Caller(tenant): Caller, calling: CallingKey, Id(id): Id<KeyId>) -> Result<Json<Key>> {
    calling.refuse_on_itself(id, SelfLockout::Suspend)?;
    Ok(Json(tenant.suspend_key(id).await?.into()))
}

/// Reactivates a suspended key.
#[utoipa::path(
    post, path = "/keys/{id}/reactivate", tag = "keys", operation_id = "reactivate_key",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The key, `active` again", body = Key),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key is not suspended (`invalid_transition`)", body = ErrorBody),
    )
)]
pub(crate) async fn reactivate_key(Caller(tenant): Caller, Id(id): Id<KeyId>) -> Result<Json<Key>> {
    Ok(Json(tenant.reactivate_key(id).await?.into()))
}

/// Replaces a key's scopes, with the same checks as at creation.
#[utoipa::path(
    put, path = "/keys/{id}/scopes", tag = "keys", operation_id = "set_key_scopes",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body = SetScopes,
    responses(
        (status = 200, description = "The key with its new scopes", body = Key),
        (status = 400, description = "The id is not a key id; a scope name is invalid, outside the policy's, or unregistered (strict scopes)", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The scopes would take `keysmith:admin` from the key making the request (`self_lockout`)", body = ErrorBody),
    )
)]
pub(crate) async fn set_key_scopes(
    Caller(tenant): Caller, calling: CallingKey, Id(id): Id<KeyId>, JsonBody(body): JsonBody<SetScopes>,
) -> Result<Json<Key>> {
    calling.refuse_scopes(id, &body.scopes)?;
    Ok(Json(tenant.set_key_scopes(id, &body.scopes).await?.into()))
}

/// The rotations a key took part in, as old or new key, oldest first.
#[utoipa::path(
    get, path = "/keys/{id}/rotations", tag = "keys", operation_id = "list_key_rotations",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The key's rotations", body = RotationList),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn list_rotations(Caller(tenant): Caller, Id(id): Id<KeyId>) -> Result<Json<RotationList>> {
    let records = tenant.list_rotations(id).await?;
    Ok(Json(RotationList { items: records.into_iter().map(Rotation::from).collect() }))
}
