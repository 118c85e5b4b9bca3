//! Refusals and failures as HTTP answers: status, headers and
//! the JSON body, for any framework to copy into its response type.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::headers::names;
use crate::limit::RateLimitStatus;
use crate::{Refusal, retry_after_secs};

/// The `Content-Type` of every refusal body.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// An answer that stops a request: a refusal of its key, 503 when the key
/// could not be checked, or 500 when the application is wired wrong.
///
/// Adapters copy `status`, every entry of `headers` (lowercase names,
/// `Content-Type` included) and [`body`](Self::body) into their response
/// type; nothing else is needed.
///
/// ```
/// use chrono::Utc;
/// use keysmith_core::Refusal;
/// use keysmith_core::http::RefusalResponse;
///
/// let response = RefusalResponse::refused(Refusal::Revoked, "api", Utc::now());
/// assert_eq!(response.status, 401);
/// assert_eq!(response.header("www-authenticate"), Some(r#"Bearer realm="api", error="invalid_token""#));
/// assert_eq!(response.body(), r#"{"error":{"code":"key_revoked","message":"the API key has been revoked"}}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalResponse {
    /// The HTTP status.
    pub status: u16,
    /// The stable snake-case code of the JSON body (`missing_key`, …,
    /// `unavailable`).
    pub code: &'static str,
    /// The human message of the JSON body.
    pub message: String,
    /// Headers to send, lowercase names.
    pub headers: Vec<(&'static str, String)>,
    /// The refusal this answers; `None` for `unavailable`.
    pub refusal: Option<Refusal>,
}

impl RefusalResponse {
    /// The answer to `refusal`, with `realm` in `WWW-Authenticate` and
    /// `Retry-After` counted from `now`.
    ///
    /// | refusal | status | headers |
    /// |---|---|---|
    /// | ambiguous key | 400 | `WWW-Authenticate` with `error="invalid_request"` |
    /// | missing key | 401 | `WWW-Authenticate: Bearer realm="…"` |
    /// | malformed, unknown, revoked, expired, suspended | 401 | … `error="invalid_token"` |
    /// | IP or origin not allowed | 403 | |
    /// | insufficient scope | 403 | … `error="insufficient_scope", scope="…"` |
    /// | rate limited | 429 | `Retry-After`, `RateLimit-*` |
    /// | quota exceeded | 429 | `Retry-After` |
    /// | credits exhausted | 429 | `Retry-After` when the credits refill |
    #[must_use]
    pub fn refused(refusal: Refusal, realm: &str, now: DateTime<Utc>) -> Self {
        let mut headers = vec![(names::CONTENT_TYPE, JSON_CONTENT_TYPE.to_owned())];
        let status = match &refusal {
            Refusal::AmbiguousKey => {
                headers.push((names::WWW_AUTHENTICATE, challenge(realm, Some("invalid_request"))));
                400
            }
            Refusal::MissingKey => {
                headers.push((names::WWW_AUTHENTICATE, challenge(realm, None)));
                401
            }
            Refusal::IpNotAllowed | Refusal::OriginNotAllowed => 403,
            Refusal::InsufficientScope { missing } => {
                let mut value = challenge(realm, Some("insufficient_scope"));
                let _ = write!(value, ", scope={}", quoted(&missing.join(" ")));
                headers.push((names::WWW_AUTHENTICATE, value));
                403
            }
            Refusal::RateLimited { retry_after, status } => {
                headers.push((names::RETRY_AFTER, retry_after_secs(*retry_after).max(1).to_string()));
                headers.extend(rate_limit_headers(status));
                429
            }
            Refusal::QuotaExceeded { resets_at } | Refusal::CreditsExhausted { refills_at: Some(resets_at) } => {
                let wait = (*resets_at - now).to_std().unwrap_or_default();
                headers.push((names::RETRY_AFTER, retry_after_secs(wait).max(1).to_string()));
                429
            }
            // No refill: waiting does not help, so no `Retry-After`.
            Refusal::CreditsExhausted { refills_at: None } => 429,
            // Malformed, Unknown, Revoked, Expired, Suspended, and any later
            // refusal of the key itself.
            _ => {
                headers.push((names::WWW_AUTHENTICATE, challenge(realm, Some("invalid_token"))));
                401
            }
        };
        Self { status, code: refusal.code(), message: refusal.to_string(), headers, refusal: Some(refusal) }
    }

    /// 503: the key could not be checked (store down). Never a pass and
    /// never a refusal of the key.
    #[must_use]
    pub fn unavailable() -> Self {
        Self {
            status: 503,
            code: "unavailable",
            message: "the API key could not be checked; try again later".to_owned(),
            headers: vec![(names::CONTENT_TYPE, JSON_CONTENT_TYPE.to_owned())],
            refusal: None,
        }
    }

    /// 500 `internal_error`: the application is wired wrong (an extractor
    /// or scope guard runs where the adapter's middleware never did), said
    /// plainly in `message`. Never a refusal of the key.
    #[must_use]
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            code: "internal_error",
            message: message.into(),
            headers: vec![(names::CONTENT_TYPE, JSON_CONTENT_TYPE.to_owned())],
            refusal: None,
        }
    }

    /// The first value of header `name` (lowercase).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The JSON body: `{"error":{"code":"…","message":"…"}}`.
    #[must_use]
    pub fn body(&self) -> String {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } }).to_string()
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (whole
/// seconds, rounded up) for a key under a rate limit.
#[must_use]
pub fn rate_limit_headers(status: &RateLimitStatus) -> [(&'static str, String); 3] {
    RateLimitHeaders::new(status).pairs().map(|(name, value)| (name, value.to_string()))
}

/// The numbers of the `RateLimit-*` headers, unformatted: an adapter
/// turns them into header values without going through `String` (this is
/// on the path of every passed request).
///
/// ```
/// use std::time::Duration;
/// use keysmith_core::http::RateLimitHeaders;
/// use keysmith_core::limit::RateLimitStatus;
///
/// let status = RateLimitStatus {
///     allowed: true,
///     limit: 10,
///     remaining: 9,
///     reset: Duration::from_millis(1_500),
///     retry_after: None,
/// };
/// let headers = RateLimitHeaders::new(&status);
/// assert_eq!((headers.limit, headers.remaining, headers.reset), (10, 9, 2));
/// assert_eq!(headers.pairs()[2], ("ratelimit-reset", 2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `RateLimit-Limit`: requests the key may make at once.
    pub limit: u64,
    /// `RateLimit-Remaining`: requests left right now.
    pub remaining: u64,
    /// `RateLimit-Reset`: seconds (rounded up) until the full burst is
    /// available again.
    pub reset: u64,
}

impl RateLimitHeaders {
    /// The headers of `status`.
    #[must_use]
    pub fn new(status: &RateLimitStatus) -> Self {
        Self {
            limit: u64::from(status.limit),
            remaining: u64::from(status.remaining),
            reset: retry_after_secs(status.reset),
        }
    }

    /// `(name, value)` pairs, lowercase names, in the order limit,
    /// remaining, reset.
    #[must_use]
    pub fn pairs(&self) -> [(&'static str, u64); 3] {
        [
            (names::RATELIMIT_LIMIT, self.limit),
            (names::RATELIMIT_REMAINING, self.remaining),
            (names::RATELIMIT_RESET, self.reset),
        ]
    }
}

/// `Bearer realm="…"` with an optional `error="…"`.
fn challenge(realm: &str, error: Option<&str>) -> String {
    let mut value = format!("Bearer realm={}", quoted(realm));
    if let Some(error) = error {
        let _ = write!(value, ", error=\"{error}\"");
    }
    value
}

/// An HTTP quoted-string; control characters (which no header may carry)
/// are dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-10T23:59:30Z").unwrap().to_utc()
    }

    fn refused(refusal: Refusal) -> RefusalResponse {
        RefusalResponse::refused(refusal, "api", now())
    }

    fn limit_status() -> RateLimitStatus {
        RateLimitStatus {
            allowed: false,
            limit: 3,
            remaining: 0,
            reset: Duration::from_millis(9_500),
            retry_after: Some(Duration::from_millis(2_500)),
        }
    }

    #[test]
    fn statuses_and_codes_follow_the_design_table() {
        let cases = [
            (Refusal::AmbiguousKey, 400, "ambiguous_key"),
            (Refusal::MissingKey, 401, "missing_key"),
            (Refusal::Malformed, 401, "malformed_key"),
            (Refusal::Unknown, 401, "invalid_key"),
            (Refusal::Revoked, 401, "key_revoked"),
            (Refusal::Expired, 401, "key_expired"),
            (Refusal::Suspended, 401, "key_suspended"),
            (Refusal::IpNotAllowed, 403, "ip_not_allowed"),
            (Refusal::OriginNotAllowed, 403, "origin_not_allowed"),
            (Refusal::InsufficientScope { missing: vec!["a".into()] }, 403, "insufficient_scope"),
            (Refusal::RateLimited { retry_after: Duration::from_secs(1), status: limit_status() }, 429, "rate_limited"),
            (Refusal::QuotaExceeded { resets_at: now() }, 429, "quota_exceeded"),
            (Refusal::CreditsExhausted { refills_at: None }, 429, "credits_exhausted"),
        ];
        for (refusal, status, code) in cases {
            let response = refused(refusal);
            assert_eq!((response.status, response.code), (status, code));
            assert_eq!(response.header("content-type"), Some("application/json"));
            let body: serde_json::Value = serde_json::from_str(&response.body()).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
        let unavailable = RefusalResponse::unavailable();
        assert_eq!((unavailable.status, unavailable.code), (503, "unavailable"));
        assert_eq!(unavailable.header("www-authenticate"), None);
        let wiring = RefusalResponse::misconfigured("the ApiKey extractor needs the middleware");
        assert_eq!((wiring.status, wiring.code, &wiring.refusal), (500, "internal_error", &None));
        assert_eq!(wiring.header("content-type"), Some("application/json"));
        assert_eq!(
            wiring.body(),
            r#"{"error":{"code":"internal_error","message":"the ApiKey extractor needs the middleware"}}"#
        );
    }

    #[test]
    fn www_authenticate_says_what_is_wrong() {
        assert_eq!(refused(Refusal::MissingKey).header("www-authenticate"), Some(r#"Bearer realm="api""#));
        for refusal in [Refusal::Malformed, Refusal::Unknown, Refusal::Revoked, Refusal::Expired, Refusal::Suspended] {
            assert_eq!(
                refused(refusal).header("www-authenticate"),
                Some(r#"Bearer realm="api", error="invalid_token""#)
            );
        }
        let scope = refused(Refusal::InsufficientScope { missing: vec!["read:users".into(), "write:users".into()] });
        assert_eq!(
            scope.header("www-authenticate"),
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="read:users write:users""#)
        );
        assert_eq!(refused(Refusal::IpNotAllowed).header("www-authenticate"), None);
        assert_eq!(refused(Refusal::OriginNotAllowed).header("www-authenticate"), None);
    }

    #[test]
    fn realm_is_quoted_safely() {
        let response = RefusalResponse::refused(Refusal::MissingKey, "my \"api\"\r\n\\", now());
        assert_eq!(response.header("www-authenticate"), Some(r#"Bearer realm="my \"api\"\\""#));
    }

    #[test]
    fn too_many_requests_say_when_to_retry() {
        let rate = refused(Refusal::RateLimited { retry_after: Duration::from_millis(2_500), status: limit_status() });
        assert_eq!(rate.header("retry-after"), Some("3"));
        assert_eq!(rate.header("ratelimit-limit"), Some("3"));
        assert_eq!(rate.header("ratelimit-remaining"), Some("0"));
        assert_eq!(rate.header("ratelimit-reset"), Some("10"));
        let midnight = DateTime::parse_from_rfc3339("2026-03-11T00:00:00Z").unwrap().to_utc();
        let quota = refused(Refusal::QuotaExceeded { resets_at: midnight });
        assert_eq!(quota.header("retry-after"), Some("30"));
        // A reset already passed still asks for a (short) wait.
        let past = refused(Refusal::QuotaExceeded { resets_at: now() - chrono::Duration::seconds(5) });
        assert_eq!(past.header("retry-after"), Some("1"));
        let credits = refused(Refusal::CreditsExhausted { refills_at: Some(midnight) });
        assert_eq!(credits.header("retry-after"), Some("30"));
        let spent = refused(Refusal::CreditsExhausted { refills_at: None });
        assert_eq!((spent.status, spent.header("retry-after")), (429, None), "no refill: waiting does not help");
    }
}
