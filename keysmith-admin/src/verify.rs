//! `POST /verify`: checks a key for a service that cannot embed Keysmith,
//! spending its limits, quota and credits like a request through the layer.

use std::net::IpAddr;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use keysmith_core::{Refusal, RequestContext, UsageId, UsageRecord, ValidationError, retry_after_secs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AdminState;
use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, JsonBody};
use crate::schema::{optional_ip, whole};

/// The longest `key` accepted: far above any key's length (128 bytes), so
/// every real key gets a verdict, and a body can never make the check
/// expensive.
const MAX_KEY_LEN: usize = 1024;
/// The most `required_scopes`.
const MAX_REQUIRED_SCOPES: usize = 32;
/// The longest `origin`.
const MAX_TEXT_LEN: usize = 1024;

/// What to verify. Its `Debug` never shows the key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    /// The presented API key.
    #[schema(example = "sk_live_…", max_length = 1024)]
    key: String,
    /// Scopes the key must all cover (hierarchically); each a valid scope
    /// name (400 `invalid_input` otherwise).
    #[serde(default)]
    #[schema(max_items = 32, example = json!(["read:users"]))]
    required_scopes: Vec<String>,
    /// The client's address, for the policy's IP allowlist.
    #[schema(schema_with = optional_ip, example = "203.0.113.7")]
    ip: Option<String>,
    /// The request's `Origin`, for the policy's origin allowlist.
    #[schema(max_length = 1024)]
    origin: Option<String>,
    /// The credits the request costs a key with credits (default 1; a
    /// whole number, `2.0` is accepted).
    #[serde(default, deserialize_with = "whole::option_credits")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cost: Option<u64>,
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("key", &"[redacted]")
            .field("required_scopes", &self.required_scopes)
            .field("ip", &self.ip)
            .field("origin", &self.origin)
            .field("cost", &self.cost)
            .finish()
    }
}

/// One rate limit's state after the verified request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LimitState {
    /// The limit's name.
    name: String,
    /// Requests allowed per window.
    requests: u32,
    /// The window, in seconds.
    window: u64,
    /// Requests left right now.
    remaining: u32,
    /// Seconds (rounded up) until the full burst is back, or, for the limit
    /// that refused, until one request fits.
    reset: u64,
}

/// The key's credits after the verified request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreditsState {
    /// Uses left (0 when exhausted).
    remaining: u64,
    /// What this request spent.
    cost: u64,
    /// When the next refill happens, if the credits refill.
    refills_at: Option<DateTime<Utc>>,
}

/// The verdict: 200 for every verdict, valid or not.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Verdict {
    /// True if the key passed every check.
    valid: bool,
    /// `valid`, or the refusal's code as the HTTP layer sends it
    /// (`invalid_key`, `key_revoked`, `rate_limited`, `credits_exhausted`, …).
    #[schema(example = "valid")]
    code: &'static str,
    /// The key's id, when it is valid.
    #[schema(value_type = Option<String>)]
    key_id: Option<keysmith_core::KeyId>,
    /// The key's owner, when it is valid and has one.
    owner_id: Option<String>,
    /// The key's effective scopes, when it is valid.
    scopes: Vec<String>,
    /// Every rate limit's state when valid; the limit that refused when
    /// `rate_limited`.
    rate_limits: Vec<LimitState>,
    /// The key's credits when it has some; `remaining` 0 when
    /// `credits_exhausted`.
    credits: Option<CreditsState>,
    /// The key's expiry, when it is valid and expires.
    expires_at: Option<DateTime<Utc>>,
}

impl Verdict {
    fn refused(refusal: &Refusal) -> Self {
        let mut verdict = Self {
            valid: false,
            code: refusal.code(),
            key_id: None,
            owner_id: None,
            scopes: Vec::new(),
            rate_limits: Vec::new(),
            credits: None,
            expires_at: None,
        };
        match refusal {
            Refusal::RateLimited { limit, retry_after, status } => verdict.rate_limits.push(LimitState {
                name: limit.name.clone(),
                requests: limit.requests,
                window: limit.window.as_secs(),
                remaining: status.remaining,
                reset: retry_after_secs(*retry_after),
            }),
            // What is left, fewer than the request's cost; nothing spent.
            Refusal::CreditsExhausted { status, .. } => {
                verdict.credits =
                    Some(CreditsState { remaining: status.remaining, cost: 0, refills_at: status.refills_at });
            }
            _ => {}
        }
        verdict
    }
}

/// Verifies a key of the caller's tenant.
///
/// The caller authenticates with a key holding `keysmith:verify`. The
/// answer is 200 for every verdict; a key of another tenant (or app) is
/// `invalid_key`, exactly like an unknown one. A valid key's request
/// spends its rate limits, quota and credits and is recorded as usage
/// (`POST /verify`, status 200); a refused one spends nothing.
#[utoipa::path(
    post, path = "/verify", tag = "verify", operation_id = "verify_key",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict, valid or not", body = Verdict),
        (status = 400, description = "A field is invalid: an oversized key, origin or scope, or an IP that is not an address", body = ErrorBody),
        (status = 503, description = "The store could not be reached (`unavailable`)", body = ErrorBody),
    )
)]
pub(crate) async fn verify_key(
    State(state): State<AdminState>, Caller(caller): Caller, JsonBody(request): JsonBody<VerifyRequest>,
) -> Result<Json<Verdict>> {
    let started = Instant::now();
    let ip = check(&request)?;
    let tenant = caller.tenant();
    let mut ctx = RequestContext::new()
        .with_tenant(tenant)
        .with_request("POST", "/verify")
        .with_required_scopes(&request.required_scopes)
        .with_cost(request.cost.unwrap_or(1));
    if let Some(ip) = ip {
        ctx = ctx.with_ip(ip);
    }
    if let Some(origin) = &request.origin {
        ctx = ctx.with_origin(origin);
    }
    let validation = match state.engine.validate(&request.key, &ctx).await {
        Ok(validation) => validation,
        Err(ValidationError::Refused(refusal)) => {
            return Ok(Json(Verdict::refused(&refusal)));
        }
        Err(ValidationError::Failed(error)) => return Err(error.into()),
    };
    let key = &validation.key;
    state.engine.record_usage(UsageRecord {
        id: UsageId::new(),
        key_id: key.id,
        tenant: key.into(),
        endpoint: "/verify".into(),
        method: "POST".into(),
        status: 200,
        ip,
        user_agent: None,
        latency: started.elapsed(),
        timestamp: validation.checked_at(),
    });
    let rate_limits = validation
        .rate_limit_states()
        .map(|(limit, status)| LimitState {
            name: limit.name.clone(),
            requests: limit.requests,
            window: limit.window.as_secs(),
            remaining: status.remaining,
            reset: retry_after_secs(status.reset),
        })
        .collect();
    let credits =
        validation.credits.map(|c| CreditsState { remaining: c.remaining, cost: c.cost, refills_at: c.refills_at });
    Ok(Json(Verdict {
        valid: true,
        code: "valid",
        key_id: Some(key.id),
        owner_id: key.owner_id.clone(),
        scopes: validation.scopes().to_vec(),
        rate_limits,
        credits,
        expires_at: key.expires_at,
    }))
}

/// Bounds every field before any work; the client address parsed.
fn check(request: &VerifyRequest) -> Result<Option<IpAddr>> {
    let invalid = |field: &'static str, reason: String| keysmith_core::Error::InvalidInput { field, reason };
    if request.key.len() > MAX_KEY_LEN {
        return Err(invalid("key", format!("must be at most {MAX_KEY_LEN} bytes")).into());
    }
    if request.required_scopes.len() > MAX_REQUIRED_SCOPES {
        return Err(invalid("required_scopes", format!("at most {MAX_REQUIRED_SCOPES} scopes")).into());
    }
    // A name no key could be granted is the caller's error, never a scope
    // that `*` or a prefix happens to cover.
    // Not echoed, as the ip is not: whatever was pasted there stays out of
    // the answer.
    if let Some(at) =
        request.required_scopes.iter().position(|scope| keysmith_core::scope::validate_name(scope).is_err())
    {
        let reason = format!(
            "entry {at} is not a scope name (`*`, `keysmith:*`, or segments of letters, digits, `_`, `-`, `.` joined by `:`, at most {} bytes)",
            keysmith_core::scope::MAX_NAME_LEN
        );
        return Err(invalid("required_scopes", reason).into());
    }
    if request.origin.as_ref().is_some_and(|o| o.len() > MAX_TEXT_LEN) {
        return Err(invalid("origin", format!("must be at most {MAX_TEXT_LEN} bytes")).into());
    }
    request
        .ip
        .as_deref()
        .map(|ip| {
            ip.trim()
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                // The value is not echoed: whatever was pasted there (a key,
                // say) does not come back in the answer.
                .map_err(|_| invalid("ip", "is not an IP address".to_owned()).into())
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::VerifyRequest;

    #[test]
    fn debug_never_shows_the_key() {
        let request: VerifyRequest = serde_json::from_str(r#"{"key": "sk_live_supersecret"}"#).unwrap();
        let shown = format!("{request:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
