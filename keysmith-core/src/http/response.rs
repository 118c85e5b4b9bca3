//! Refusals and failures as HTTP answers: status, headers and
//! the JSON body, for any framework to copy into its response type.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::headers::{RateLimitHeaders, names};
use crate::{Refusal, retry_after_secs};

/// The `Content-Type` of every refusal body.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The `Content-Type` of a refusal body in the RFC 9457 format
/// ([`RefusalResponse::problem_body`]).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The problem type of a request refused by one of the key's quota policies
/// (the ones `RateLimit-Policy` lists: rate limits, quotas, credits), as
/// registered by draft-ietf-httpapi-ratelimit-headers.
pub const QUOTA_EXCEEDED_TYPE: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The prefix of every other problem type; the refusal's code follows
/// (`urn:keysmith:problem:key_revoked`).
pub const PROBLEM_TYPE_PREFIX: &str = "urn:keysmith:problem:";

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
    /// | rate limited | 429 | `Retry-After`, `RateLimit-Policy` and `RateLimit` |
    /// | quota exceeded | 429 | `Retry-After`, `RateLimit-Policy` and `RateLimit` |
    /// | credits exhausted | 429 | `Retry-After` when the credits refill, `RateLimit-Policy` and `RateLimit` |
    ///
    /// The `RateLimit` fields of a 429 name what refused, with nothing left
    /// (`"quota-daily";r=0;t=…`); in the legacy mode they are the
    /// `RateLimit-Limit` trio, and none in the `None` mode.
    #[must_use]
    pub fn refused(refusal: Refusal, realm: &str, now: DateTime<Utc>) -> Self {
        Self::refused_with(refusal, realm, now, RateLimitHeaders::default())
    }

    /// [`refused`](Self::refused), with the rate-limit headers of a refusal
    /// by a rate limit, a quota or credits in the `rate_limit_headers` mode.
    #[must_use]
    pub fn refused_with(
        refusal: Refusal, realm: &str, now: DateTime<Utc>, rate_limit_headers: RateLimitHeaders,
    ) -> Self {
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
            Refusal::InsufficientScope { missing, .. } => {
                let mut value = challenge(realm, Some("insufficient_scope"));
                let _ = write!(value, ", scope={}", quoted(&missing.join(" ")));
                headers.push((names::WWW_AUTHENTICATE, value));
                403
            }
            Refusal::RateLimited { limit, retry_after, status } => {
                headers.push((names::RETRY_AFTER, retry_after_secs(*retry_after).max(1).to_string()));
                rate_limit_headers.write_for_refusal(limit, status, *retry_after, &mut headers);
                429
            }
            Refusal::QuotaExceeded { .. } | Refusal::CreditsExhausted { .. } => {
                let resets_at = match &refusal {
                    Refusal::QuotaExceeded { resets_at, .. } => Some(*resets_at),
                    // No refill: waiting does not help, so no `Retry-After`.
                    Refusal::CreditsExhausted { refills_at, .. } => *refills_at,
                    _ => None,
                };
                if let Some(resets_at) = resets_at {
                    let wait = (resets_at - now).to_std().unwrap_or_default();
                    headers.push((names::RETRY_AFTER, retry_after_secs(wait).max(1).to_string()));
                }
                rate_limit_headers.write_for_exhausted(&refusal, now, &mut headers);
                429
            }
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

    /// The body in the RFC 9457 format, to send with
    /// `Content-Type: application/problem+json` ([`PROBLEM_CONTENT_TYPE`])
    /// instead of [`body`](Self::body):
    /// `{"type":"…","title":"…","status":…,"detail":"…","code":"…"}`.
    ///
    /// `type` is [`QUOTA_EXCEEDED_TYPE`] for `rate_limited`,
    /// `quota_exceeded` and `credits_exhausted`, else
    /// `urn:keysmith:problem:<code>`; `code` is the same code as
    /// [`body`](Self::body)'s, `detail` its message, `title` the same for
    /// every occurrence of the code.
    ///
    /// ```
    /// use chrono::Utc;
    /// use keysmith_core::Refusal;
    /// use keysmith_core::http::RefusalResponse;
    ///
    /// let response = RefusalResponse::refused(Refusal::Revoked, "api", Utc::now());
    /// assert_eq!(
    ///     response.problem_body(),
    ///     r#"{"type":"urn:keysmith:problem:key_revoked","title":"Key revoked","status":401,"detail":"the API key has been revoked","code":"key_revoked"}"#
    /// );
    /// ```
    #[must_use]
    pub fn problem_body(&self) -> String {
        problem_body(self.status, self.code, &self.message)
    }
}

/// An RFC 9457 body for any error with a status, a snake-case `code` and a
/// message (`detail`), in the format of [`RefusalResponse::problem_body`];
/// the admin API renders its own errors with it.
#[must_use]
pub fn problem_body(status: u16, code: &str, detail: &str) -> String {
    #[derive(serde::Serialize)]
    struct Problem<'a> {
        r#type: &'a str,
        title: &'a str,
        status: u16,
        detail: &'a str,
        code: &'a str,
    }
    let kind = match code {
        "rate_limited" | "quota_exceeded" | "credits_exhausted" => QUOTA_EXCEEDED_TYPE.to_owned(),
        code => format!("{PROBLEM_TYPE_PREFIX}{code}"),
    };
    let title = problem_title(code);
    serde_json::to_string(&Problem { r#type: &kind, title: &title, status, detail, code }).unwrap_or_default()
}

/// A code as a title: `key_revoked` → `Key revoked`.
fn problem_title(code: &str) -> String {
    let mut title = code.replace('_', " ");
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    title
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
    use crate::RateLimit;
    use crate::limit::RateLimitStatus;

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

    /// The daily quota of 5, used up until `resets_at`.
    fn quota_exceeded(resets_at: DateTime<Utc>) -> Refusal {
        Refusal::QuotaExceeded { resets_at, period: crate::Period::Day, quota: 5 }
    }

    /// Credits with 2 left (and a refill of 10 a day that comes at
    /// `refills_at`, if given).
    fn credits_exhausted(refills_at: Option<DateTime<Utc>>) -> Refusal {
        let refill = refills_at.map(|_| crate::Refill { amount: 10, every: crate::Period::Day });
        Refusal::CreditsExhausted {
            refills_at,
            status: crate::CreditsStatus { remaining: 2, cost: 0, refill, refills_at },
        }
    }

    fn rate_limited(retry_after: Duration) -> Refusal {
        let limit = RateLimit::new("burst", 3, Duration::from_secs(10));
        Refusal::RateLimited { limit, retry_after, status: limit_status() }
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
            (Refusal::InsufficientScope { missing: vec!["a".into()], one_of: false }, 403, "insufficient_scope"),
            (rate_limited(Duration::from_secs(1)), 429, "rate_limited"),
            (quota_exceeded(now()), 429, "quota_exceeded"),
            (credits_exhausted(None), 429, "credits_exhausted"),
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
    fn problem_bodies_carry_the_code_and_quota_refusals_the_drafts_type() {
        let cases = [
            (Refusal::MissingKey, "urn:keysmith:problem:missing_key"),
            (
                Refusal::InsufficientScope { missing: vec!["a".into()], one_of: false },
                "urn:keysmith:problem:insufficient_scope",
            ),
            (rate_limited(Duration::from_secs(1)), QUOTA_EXCEEDED_TYPE),
            (quota_exceeded(now()), QUOTA_EXCEEDED_TYPE),
            (credits_exhausted(None), QUOTA_EXCEEDED_TYPE),
        ];
        for (refusal, kind) in cases {
            let response = refused(refusal);
            let problem: serde_json::Value = serde_json::from_str(&response.problem_body()).unwrap();
            assert_eq!(problem["type"], kind);
            assert_eq!(problem["status"], response.status);
            assert_eq!(problem["code"], response.code);
            assert_eq!(problem["detail"], response.message.as_str());
        }
        let unavailable: serde_json::Value =
            serde_json::from_str(&RefusalResponse::unavailable().problem_body()).unwrap();
        assert_eq!(
            (unavailable["type"].as_str(), unavailable["title"].as_str(), unavailable["status"].as_u64()),
            (Some("urn:keysmith:problem:unavailable"), Some("Unavailable"), Some(503))
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
        let scope = refused(Refusal::InsufficientScope {
            missing: vec!["read:users".into(), "write:users".into()],
            one_of: false,
        });
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
        let rate = refused(rate_limited(Duration::from_millis(2_500)));
        assert_eq!(rate.header("retry-after"), Some("3"));
        assert_eq!(rate.header("ratelimit-policy"), Some(r#""burst";q=3;w=10"#));
        assert_eq!(rate.header("ratelimit"), Some(r#""burst";r=0;t=3"#));
        assert_eq!(rate.header("ratelimit-limit"), None, "the legacy trio is opt-in");
        let legacy = RefusalResponse::refused_with(
            rate_limited(Duration::from_millis(2_500)),
            "api",
            now(),
            RateLimitHeaders::Legacy,
        );
        assert_eq!(legacy.header("ratelimit-limit"), Some("3"));
        assert_eq!(legacy.header("ratelimit-remaining"), Some("0"));
        assert_eq!(legacy.header("ratelimit-reset"), Some("10"));
        assert_eq!(legacy.header("ratelimit"), None);
        let none = RefusalResponse::refused_with(
            rate_limited(Duration::from_millis(2_500)),
            "api",
            now(),
            RateLimitHeaders::None,
        );
        assert_eq!(none.header("retry-after"), Some("3"), "Retry-After stays in every mode");
        assert!(none.headers.iter().all(|(name, _)| !name.starts_with("ratelimit")));
        let midnight = DateTime::parse_from_rfc3339("2026-03-11T00:00:00Z").unwrap().to_utc();
        let quota = refused(quota_exceeded(midnight));
        assert_eq!(quota.header("retry-after"), Some("30"));
        // A reset already passed still asks for a (short) wait.
        let past = refused(quota_exceeded(now() - chrono::Duration::seconds(5)));
        assert_eq!(past.header("retry-after"), Some("1"));
        let credits = refused(credits_exhausted(Some(midnight)));
        assert_eq!(credits.header("retry-after"), Some("30"));
        let spent = refused(credits_exhausted(None));
        assert_eq!((spent.status, spent.header("retry-after")), (429, None), "no refill: waiting does not help");
    }

    /// The rate-limit headers of `refusal` in `mode`, in order.
    fn rate_limit_headers(refusal: Refusal, mode: RateLimitHeaders) -> Vec<(&'static str, String)> {
        let response = RefusalResponse::refused_with(refusal, "api", now(), mode);
        response.headers.into_iter().filter(|(name, _)| name.starts_with("ratelimit")).collect()
    }

    #[test]
    fn quota_and_credits_refusals_carry_what_refused_with_nothing_left_in_every_mode() {
        let midnight = DateTime::parse_from_rfc3339("2026-03-11T00:00:00Z").unwrap().to_utc();
        let first_of_april = DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z").unwrap().to_utc();
        let monthly = Refusal::QuotaExceeded { resets_at: first_of_april, period: crate::Period::Month, quota: 300 };
        let draft = |name: &'static str, value: &str| (name, value.to_owned());
        let cases = [
            (
                quota_exceeded(midnight),
                [
                    draft("ratelimit-policy", r#""quota-daily";q=5;w=86400"#),
                    draft("ratelimit", r#""quota-daily";r=0;t=30"#),
                ]
                .to_vec(),
                [draft("ratelimit-limit", "5"), draft("ratelimit-remaining", "0"), draft("ratelimit-reset", "30")]
                    .to_vec(),
            ),
            (
                // 2026-03-10T23:59:30: 21 days and 30 s to April; March has 31 days.
                monthly,
                [
                    draft("ratelimit-policy", r#""quota-monthly";q=300;w=2678400"#),
                    draft("ratelimit", r#""quota-monthly";r=0;t=1814430"#),
                ]
                .to_vec(),
                [
                    draft("ratelimit-limit", "300"),
                    draft("ratelimit-remaining", "0"),
                    draft("ratelimit-reset", "1814430"),
                ]
                .to_vec(),
            ),
            (
                credits_exhausted(Some(midnight)),
                [draft("ratelimit-policy", r#""credits";q=10;w=86400"#), draft("ratelimit", r#""credits";r=0;t=30"#)]
                    .to_vec(),
                [draft("ratelimit-limit", "10"), draft("ratelimit-remaining", "0"), draft("ratelimit-reset", "30")]
                    .to_vec(),
            ),
            (
                // Prepaid, never refilled: `q` is what is left, and no `t`.
                credits_exhausted(None),
                [draft("ratelimit-policy", r#""credits";q=2"#), draft("ratelimit", r#""credits";r=0"#)].to_vec(),
                [draft("ratelimit-limit", "2"), draft("ratelimit-remaining", "0")].to_vec(),
            ),
        ];
        for (refusal, draft, legacy) in cases {
            assert_eq!(rate_limit_headers(refusal.clone(), RateLimitHeaders::Draft), draft, "{refusal:?}");
            assert_eq!(rate_limit_headers(refusal.clone(), RateLimitHeaders::Legacy), legacy, "{refusal:?}");
            assert_eq!(rate_limit_headers(refusal.clone(), RateLimitHeaders::None), [], "{refusal:?}");
        }
    }
}
