//! `/policies`: create, list, show, replace, delete.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keysmith_core::{LimitBy, PolicyId, PolicySpec};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, Id, JsonBody, QueryParams};
use crate::lockout::CallingKey;
use crate::model::page;
use crate::schema::{metadata, metadata_ref, whole};

/// A named limit: `requests` per `window` seconds, with an optional burst.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimit {
    /// The limit's name, unique in the policy: 1 to 32 of `a-z`, `0-9`, `_`
    /// and `-`, starting with a letter or digit; `quota-daily`,
    /// `quota-monthly` and `credits` are reserved. Refusals and the
    /// `RateLimit` headers name the limit.
    #[schema(
        example = "burst",
        pattern = "^(?!(quota-daily|quota-monthly|credits)$)[a-z0-9][a-z0-9_-]{0,31}$",
        min_length = 1,
        max_length = 32
    )]
    name: String,
    /// Requests allowed per window (at least 1).
    #[serde(deserialize_with = "whole::u32")]
    #[schema(example = 100, minimum = 1, maximum = 4_294_967_295_u32)]
    requests: u32,
    /// The window, in seconds (at least 1, at most 100 years).
    #[serde(deserialize_with = "whole::seconds")]
    #[schema(example = 60, minimum = 1, maximum = 3_155_760_000_u64)]
    window: u64,
    /// Requests allowed at once (default `requests`).
    #[serde(default, deserialize_with = "whole::option_u32")]
    #[schema(minimum = 1, maximum = 4_294_967_295_u32)]
    burst: Option<u32>,
}

/// Requests per key per UTC day and calendar month.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Quota {
    /// Requests per UTC day (at least 1; omit for none).
    #[serde(default, deserialize_with = "whole::option_u64")]
    #[schema(example = 10000, minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    daily: Option<u64>,
    /// Requests per UTC calendar month (at least 1; omit for none).
    #[serde(default, deserialize_with = "whole::option_u64")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    monthly: Option<u64>,
}

impl From<RateLimit> for keysmith_core::RateLimit {
    fn from(limit: RateLimit) -> Self {
        Self {
            name: limit.name,
            requests: limit.requests,
            window: Duration::from_secs(limit.window),
            burst: limit.burst,
        }
    }
}

impl From<keysmith_core::RateLimit> for RateLimit {
    fn from(limit: keysmith_core::RateLimit) -> Self {
        Self { name: limit.name, requests: limit.requests, window: limit.window.as_secs(), burst: limit.burst }
    }
}

/// A policy's settings, as created (`POST`) or replaced whole (`PUT`).
/// Omitted fields limit nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyInput {
    /// The name, unique in the tenant: 1 to 128 characters, not only
    /// whitespace, without control characters; stored trimmed.
    #[schema(example = "partners")]
    name: String,
    /// Named rate limits, all enforced (at most 8, names unique).
    #[serde(default)]
    #[schema(max_items = 8, example = json!([{"name": "burst", "requests": 10, "window": 1}, {"name": "hourly", "requests": 1000, "window": 3600}]))]
    rate_limits: Vec<RateLimit>,
    /// Whose budget the limits, quota and credits count (default `key`).
    #[serde(default)]
    limit_by: LimitBy,
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses allowed
    /// (at most 1000).
    #[serde(default)]
    #[schema(max_items = 1000, example = json!(["10.0.0.0/8"]))]
    allowed_ips: Vec<String>,
    /// Exact `Origin` values allowed (`https://app.example.com`; at most 1000).
    #[serde(default)]
    #[schema(max_items = 1000)]
    allowed_origins: Vec<String>,
    /// Scopes keys under the policy may hold (at most 1000; a name given
    /// twice is kept once).
    #[serde(default)]
    #[schema(max_items = 1000, example = json!(["read"]))]
    allowed_scopes: Vec<String>,
    /// Keys older than this many seconds are expired (at most 100 years).
    #[serde(default, deserialize_with = "whole::option_seconds")]
    #[schema(maximum = 3_155_760_000_u64)]
    max_key_age: Option<u64>,
    /// Request quotas per key lineage (per owner under `limit_by: owner`).
    quota: Option<Quota>,
    /// Default rotation grace for keys under the policy, in seconds, at most
    /// 366 days.
    #[serde(default, deserialize_with = "whole::option_grace")]
    #[schema(maximum = 31_622_400_u64)]
    rotation_grace: Option<u64>,
    /// How many live keys (`active` or `suspended`) one owner may hold under
    /// the policy; creating one more is refused (409 `owner_key_limit`).
    /// `1` is "one key per customer".
    #[schema(minimum = 1, maximum = 100_000, example = 1)]
    #[serde(default, deserialize_with = "whole::option_u32")]
    max_active_keys_per_owner: Option<u32>,
    /// Application data (a JSON object of at most 64 KiB, nested at most 32
    /// levels; no control character in any key or string, no object naming
    /// a key twice).
    #[serde(default, deserialize_with = "metadata::unique_keys")]
    #[schema(schema_with = metadata_ref)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl From<PolicyInput> for PolicySpec {
    fn from(input: PolicyInput) -> Self {
        Self {
            name: input.name,
            rate_limits: input.rate_limits.into_iter().map(Into::into).collect(),
            limit_by: input.limit_by,
            allowed_ips: input.allowed_ips,
            allowed_origins: input.allowed_origins,
            allowed_scopes: input.allowed_scopes,
            max_key_age: input.max_key_age.map(Duration::from_secs),
            quota: input.quota.map(|quota| keysmith_core::Quota { daily: quota.daily, monthly: quota.monthly }),
            rotation_grace: input.rotation_grace.map(Duration::from_secs),
            max_active_keys_per_owner: input.max_active_keys_per_owner,
            metadata: input.metadata,
        }
    }
}

/// A named set of limits shared by the keys that reference it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Policy {
    /// The policy's id.
    #[schema(value_type = String, pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$", example = "kpol_01h455vb4pex5vsknk084sn02q")]
    id: PolicyId,
    /// The name, unique in the tenant.
    name: String,
    /// Named rate limits, all enforced.
    rate_limits: Vec<RateLimit>,
    /// Whose budget the limits, quota and credits count.
    limit_by: LimitBy,
    /// Networks allowed (normalised CIDRs); empty allows all.
    allowed_ips: Vec<String>,
    /// `Origin` values allowed (normalised); empty allows all.
    allowed_origins: Vec<String>,
    /// Scopes keys under the policy may hold; empty allows any.
    allowed_scopes: Vec<String>,
    /// Maximum key age, in seconds.
    max_key_age: Option<u64>,
    /// Request quotas per key lineage (per owner under `limit_by: owner`).
    quota: Option<Quota>,
    /// Default rotation grace, in seconds.
    rotation_grace: Option<u64>,
    /// How many live keys one owner may hold under the policy.
    max_active_keys_per_owner: Option<u32>,
    /// Application data (a JSON object).
    #[schema(schema_with = metadata_ref)]
    metadata: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// Time of the last change.
    updated_at: DateTime<Utc>,
}

impl From<keysmith_core::Policy> for Policy {
    fn from(policy: keysmith_core::Policy) -> Self {
        Self {
            id: policy.id,
            name: policy.name,
            rate_limits: policy.rate_limits.into_iter().map(Into::into).collect(),
            limit_by: policy.limit_by,
            allowed_ips: policy.allowed_ips.iter().map(ToString::to_string).collect(),
            allowed_origins: policy.allowed_origins,
            allowed_scopes: policy.allowed_scopes,
            max_key_age: policy.max_key_age.map(|age| age.as_secs()),
            quota: policy.quota.map(|quota| Quota { daily: quota.daily, monthly: quota.monthly }),
            rotation_grace: policy.rotation_grace.map(|grace| grace.as_secs()),
            max_active_keys_per_owner: policy.max_active_keys_per_owner,
            metadata: policy.metadata,
            created_at: policy.created_at,
            updated_at: policy.updated_at,
        }
    }
}

/// A page of policies.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyList {
    /// The policies, oldest first.
    items: Vec<Policy>,
    /// The page size asked for.
    limit: u32,
    /// How many policies were skipped.
    offset: u64,
}

/// Page of `GET /policies`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PolicyListQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Policies to skip (default 0).
    #[param(maximum = 9_007_199_254_740_991_u64)]
    offset: Option<u64>,
}

/// Creates a policy.
#[utoipa::path(
    post, path = "/policies", tag = "policies", operation_id = "create_policy",
    request_body = PolicyInput,
    responses(
        (status = 201, description = "The policy", body = Policy),
        (status = 400, description = "A field is invalid: name, rate limit, quota, CIDR, origin or scope name", body = ErrorBody),
        (status = 409, description = "The tenant has a policy of this name (`already_exists`)", body = ErrorBody),
    )
)]
pub(crate) async fn create_policy(
    Caller(tenant): Caller, JsonBody(input): JsonBody<PolicyInput>,
) -> Result<(StatusCode, Json<Policy>)> {
    let policy = tenant.create_policy(input.into()).await?;
    Ok((StatusCode::CREATED, Json(policy.into())))
}

/// Lists the tenant's policies, oldest first.
#[utoipa::path(
    get, path = "/policies", tag = "policies", operation_id = "list_policies",
    params(PolicyListQuery),
    responses(
        (status = 200, description = "A page of policies", body = PolicyList),
        (status = 400, description = "A page value is invalid", body = ErrorBody),
    )
)]
pub(crate) async fn list_policies(
    Caller(tenant): Caller, QueryParams(query): QueryParams<PolicyListQuery>,
) -> Result<Json<PolicyList>> {
    let page = page(query.limit, query.offset)?;
    let policies = tenant.list_policies(page).await?;
    Ok(Json(PolicyList {
        items: policies.into_iter().map(Policy::from).collect(),
        limit: page.limit,
        offset: page.offset,
    }))
}

/// Shows one policy.
#[utoipa::path(
    get, path = "/policies/{id}", tag = "policies", operation_id = "get_policy",
    params(("id" = String, Path, description = "The policy's id (`kpol_…`)", pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The policy", body = Policy),
        (status = 400, description = "The id is not a policy id", body = ErrorBody),
        (status = 404, description = "No such policy in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn get_policy(Caller(tenant): Caller, Id(id): Id<PolicyId>) -> Result<Json<Policy>> {
    Ok(Json(tenant.get_policy(id).await?.into()))
}

/// Replaces a policy's settings. Keys under it follow the new settings from
/// their next request on.
#[utoipa::path(
    put, path = "/policies/{id}", tag = "policies", operation_id = "update_policy",
    params(("id" = String, Path, description = "The policy's id (`kpol_…`)", pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body = PolicyInput,
    responses(
        (status = 200, description = "The policy as replaced", body = Policy),
        (status = 400, description = "The id is not a policy id, or a field is invalid", body = ErrorBody),
        (status = 404, description = "No such policy in this tenant", body = ErrorBody),
        (status = 409, description = "Another policy of the tenant has this name (`already_exists`); the key making the request is under this policy and would be refused by its new version: `allowed_scopes` without `keysmith:admin`, `allowed_ips` without the request's address, or a `max_key_age` it is past (`self_lockout`); or the policy would start limiting by owner while keys of owners under it hold credits of their own, which the message names (`credits_conflict`: remove their credits first)", body = ErrorBody),
    )
)]
pub(crate) async fn update_policy(
    Caller(tenant): Caller, calling: CallingKey, Id(id): Id<PolicyId>, JsonBody(input): JsonBody<PolicyInput>,
) -> Result<Json<Policy>> {
    let spec = PolicySpec::from(input);
    calling.refuse_policy(id, &spec)?;
    Ok(Json(tenant.update_policy(id, spec).await?.into()))
}

/// Deletes a policy that no live key uses.
#[utoipa::path(
    delete, path = "/policies/{id}", tag = "policies", operation_id = "delete_policy",
    params(("id" = String, Path, description = "The policy's id (`kpol_…`)", pattern = "^kpol_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a policy id", body = ErrorBody),
        (status = 404, description = "No such policy in this tenant", body = ErrorBody),
        (status = 409, description = "A key that is not revoked or expired uses the policy (`policy_in_use`)", body = ErrorBody),
    )
)]
pub(crate) async fn delete_policy(Caller(tenant): Caller, Id(id): Id<PolicyId>) -> Result<StatusCode> {
    tenant.delete_policy(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
