//! The one error type of the admin API and its JSON rendering.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keysmith_core::http::{JSON_CONTENT_TYPE, PROBLEM_CONTENT_TYPE, problem_body};
use keysmith_core::{IdParseError, ParsedKey};
use keysmith_tower::ApiKeyRejection;
use serde::Serialize;
use utoipa::ToSchema;

use crate::lockout::SelfLockout;

/// Everything an admin request can fail with. Every variant answers with a
/// JSON body `{"error": {"code": "…", "message": "…"}}`.
///
/// | variant | status | code |
/// |---|---|---|
/// | core `InvalidInput` (bad CIDR, origin, scope name, unknown scope when strict…) | 400 | `invalid_input` |
/// | [`InvalidId`](Self::InvalidId) (wrong prefix or shape) | 400 | `invalid_id` |
/// | [`Json`](Self::Json): not JSON at all | 400 | `invalid_json` |
/// | [`Json`](Self::Json): JSON of the wrong shape | 422 | `invalid_body` |
/// | [`Json`](Self::Json): no `Content-Type: application/json` | 415 | `unsupported_media_type` |
/// | [`Json`](Self::Json): body too large | 413 | `payload_too_large` |
/// | [`Query`](Self::Query), [`InvalidQuery`](Self::InvalidQuery) | 400 | `invalid_query` |
/// | [`Path`](Self::Path) | 400 | `invalid_path` |
/// | core `NotFound` (unknown, or another tenant's) | 404 | `not_found` |
/// | [`RouteNotFound`](Self::RouteNotFound) | 404 | `route_not_found` |
/// | [`MethodNotAllowed`](Self::MethodNotAllowed) | 405 | `method_not_allowed` |
/// | core `InvalidTransition` | 409 | `invalid_transition` |
/// | core `AlreadyExists` | 409 | `already_exists` |
/// | core `PolicyInUse` | 409 | `policy_in_use` |
/// | core `OwnerKeyLimit` | 409 | `owner_key_limit` |
/// | core `OwnerLimitedCredits` (credits for a key that spends its owner's), `KeysHoldCredits` (a switch to `limit_by: owner` while keys of owners under the policy hold credits) | 409 | `credits_conflict` |
/// | [`SelfLockout`](Self::SelfLockout) | 409 | `self_lockout` |
/// | core `Store` | 503 | `unavailable` |
/// | [`Unauthenticated`](Self::Unauthenticated) | the layer's (401 `missing_key`, or 500 without the layer) | |
/// | a core error of a later kind | 500 | `internal_error` |
///
/// Authentication failures (401, 403, 429…) are answered by the
/// `ApiKeyLayer` and `RequireScopes` in front of the routes, in the same
/// JSON shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An engine operation failed.
    #[error(transparent)]
    Core(#[from] keysmith_core::Error),
    /// An id in the path, the query or the body is not an id of the
    /// expected type (`akey_…`, `kpol_…`, `kscp_…`).
    #[error(transparent)]
    InvalidId(#[from] IdParseError),
    /// The body is not the JSON the route expects.
    #[error(transparent)]
    Json(#[from] JsonRejection),
    /// The query string does not parse.
    #[error(transparent)]
    Query(#[from] QueryRejection),
    /// A query value parses but is out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The path parameters do not parse.
    #[error(transparent)]
    Path(#[from] PathRejection),
    /// No route has this path.
    #[error("no route matches this path")]
    RouteNotFound,
    /// The path exists but not with this method.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The calling key would lock its own tenant out: suspend, revoke or
    /// rotate itself, lose `keysmith:admin`, or change its own policy so
    /// that it refuses the key. Nothing was changed.
    #[error("{}", .0.message())]
    SelfLockout(SelfLockout),
    /// The request reached a handler without a validated key (the router
    /// was wired without its `ApiKeyLayer`).
    #[error(transparent)]
    Unauthenticated(#[from] ApiKeyRejection),
}

/// `Result` with the admin API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status of the response.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Core(error) => match error {
                keysmith_core::Error::NotFound { .. } => StatusCode::NOT_FOUND,
                keysmith_core::Error::InvalidTransition { .. }
                | keysmith_core::Error::AlreadyExists { .. }
                | keysmith_core::Error::PolicyInUse { .. }
                | keysmith_core::Error::OwnerKeyLimit { .. }
                | keysmith_core::Error::OwnerLimitedCredits { .. }
                | keysmith_core::Error::KeysHoldCredits { .. } => StatusCode::CONFLICT,
                keysmith_core::Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
                keysmith_core::Error::Store { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Json(rejection) => rejection.status(),
            Self::InvalidId(_) | Self::Query(_) | Self::InvalidQuery(_) | Self::Path(_) => StatusCode::BAD_REQUEST,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SelfLockout(_) => StatusCode::CONFLICT,
            Self::Unauthenticated(rejection) => rejection.status(),
        }
    }

    /// The stable snake-case code of the JSON body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Core(error) => match error {
                keysmith_core::Error::NotFound { .. } => "not_found",
                keysmith_core::Error::InvalidTransition { .. } => "invalid_transition",
                keysmith_core::Error::AlreadyExists { .. } => "already_exists",
                keysmith_core::Error::PolicyInUse { .. } => "policy_in_use",
                keysmith_core::Error::OwnerKeyLimit { .. } => "owner_key_limit",
                keysmith_core::Error::OwnerLimitedCredits { .. } | keysmith_core::Error::KeysHoldCredits { .. } => {
                    "credits_conflict"
                }
                keysmith_core::Error::InvalidInput { .. } => "invalid_input",
                keysmith_core::Error::Store { .. } => "unavailable",
                _ => "internal_error",
            },
            Self::InvalidId(_) => "invalid_id",
            Self::Json(rejection) => match rejection {
                JsonRejection::JsonDataError(_) => "invalid_body",
                JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                _ => "invalid_json",
            },
            Self::Query(_) | Self::InvalidQuery(_) => "invalid_query",
            Self::Path(_) => "invalid_path",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SelfLockout(_) => "self_lockout",
            Self::Unauthenticated(ApiKeyRejection::Refused { refusal, .. }) => refusal.code,
            Self::Unauthenticated(_) => "internal_error",
        }
    }

    /// The human message of the JSON body. Store failures say only that
    /// the store is unavailable: their details go to the log, not to the
    /// client. Anything shaped like a raw key (checksum included) is
    /// replaced by `[REDACTED]`: a secret pasted into the wrong field is
    /// not echoed back.
    #[must_use]
    pub fn message(&self) -> String {
        redact_keys(&self.unredacted_message())
    }

    fn unredacted_message(&self) -> String {
        match self {
            Self::Core(keysmith_core::Error::Store { .. }) => {
                "the key store is unavailable; try again later".to_owned()
            }
            Self::Core(_) if self.status() == StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_owned(),
            Self::Json(rejection) => rejection.body_text(),
            Self::Query(rejection) => rejection.body_text(),
            Self::Path(rejection) => rejection.body_text(),
            other => other.to_string(),
        }
    }
}

/// `text` with every token that parses as a raw key replaced.
fn redact_keys(text: &str) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_key_char) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        let token = &rest[..end];
        out.push_str(if ParsedKey::parse(token).is_some() { "[REDACTED]" } else { token });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Unauthenticated(rejection) = self {
            return rejection.into_response();
        }
        if status.is_server_error() {
            // Store errors carry backend details (never a raw key: the
            // engine only ever hands hashes to a store).
            tracing::error!(target: "keysmith::admin", error = %self, "admin request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message: self.message() } };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "key akey_01h455vb4pex5vsknk084sn02q not found"}}))]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// A stable code for programs and a message for people.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Snake-case code: `invalid_input`, `invalid_id`, `invalid_json`,
    /// `invalid_body`, `invalid_query`, `invalid_path`,
    /// `unsupported_media_type`, `payload_too_large`, `not_found`,
    /// `route_not_found`, `method_not_allowed`, `invalid_transition`,
    /// `already_exists`, `policy_in_use`, `owner_key_limit`,
    /// `credits_conflict`, `self_lockout`, `unavailable`,
    /// `internal_error`,
    /// and the key refusals of the authentication layer (`missing_key`,
    /// `invalid_key`, `insufficient_scope`, `rate_limited`…).
    pub(crate) code: String,
    /// A human-readable explanation.
    pub(crate) message: String,
}

/// The fallback for paths no route matches: 404 `route_not_found`.
pub(crate) async fn route_not_found() -> Error {
    Error::RouteNotFound
}

/// The fallback for known paths with an unsupported method: 405
/// `method_not_allowed` (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// An error answer in the RFC 9457 format: the `{"error": {"code",
/// "message"}}` body of an error response (a refusal of the key layer is
/// one already) re-rendered as `application/problem+json`, status and
/// headers kept. Every other response passes untouched.
pub(crate) async fn as_problem(response: Response) -> Response {
    let is_error_json = response.status().as_u16() >= 400
        && response.headers().get(header::CONTENT_TYPE).is_some_and(|value| value == JSON_CONTENT_TYPE);
    if !is_error_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Every branch below may answer another body than the one measured.
    parts.headers.remove(header::CONTENT_LENGTH);
    // Error bodies are a code and a message: small.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    let body = problem_body(parts.status.as_u16(), &error.code, &error.message);
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_statuses_and_codes() {
        let policy_id = keysmith_core::PolicyId::new();
        let cases = [
            (keysmith_core::Error::NotFound { entity: "key", id: "x".into() }, 404, "not_found"),
            (
                keysmith_core::Error::InvalidTransition {
                    from: keysmith_core::KeyState::Revoked,
                    to: keysmith_core::KeyState::Active,
                },
                409,
                "invalid_transition",
            ),
            (keysmith_core::Error::AlreadyExists { entity: "policy", name: "p".into() }, 409, "already_exists"),
            (keysmith_core::Error::PolicyInUse { policy_id }, 409, "policy_in_use"),
            (
                keysmith_core::Error::OwnerKeyLimit { owner_id: "cus_1".into(), policy_id, limit: 1 },
                409,
                "owner_key_limit",
            ),
            (
                keysmith_core::Error::OwnerLimitedCredits { policy_id, owner_id: "cus_1".into() },
                409,
                "credits_conflict",
            ),
            (
                keysmith_core::Error::KeysHoldCredits {
                    policy_id,
                    key_ids: vec![keysmith_core::KeyId::new()],
                    count: 1,
                },
                409,
                "credits_conflict",
            ),
            (keysmith_core::Error::InvalidInput { field: "allowed_ips", reason: "no".into() }, 400, "invalid_input"),
            (keysmith_core::Error::store(std::io::Error::other("db password=hunter2")), 503, "unavailable"),
        ];
        for (error, status, code) in cases {
            let error = Error::from(error);
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
    }

    #[tokio::test]
    async fn raw_keys_are_redacted_from_messages() {
        let engine =
            keysmith_core::Engine::builder(std::sync::Arc::new(keysmith_core::MemoryStore::new())).build().unwrap();
        let created = engine.tenant("a", "t").create_key(keysmith_core::NewKey::new("k")).await.unwrap();
        let raw = created.raw.expose();
        let text = format!("invalid type: string \"{raw}\", expected a sequence; {raw}.");
        assert_eq!(redact_keys(&text), "invalid type: string \"[REDACTED]\", expected a sequence; [REDACTED].");
        // Look-alikes with a wrong checksum, and ordinary text, stay.
        let mut forged = raw.to_owned();
        forged.replace_range(raw.len() - 1.., if raw.ends_with('0') { "1" } else { "0" });
        for text in [forged.as_str(), "invalid akey id: expected `akey_`", "sk_live_short", ""] {
            assert_eq!(redact_keys(text), text);
        }
    }

    #[test]
    fn store_details_stay_out_of_the_message() {
        let error = Error::from(keysmith_core::Error::store(std::io::Error::other("db password=hunter2")));
        assert!(!error.message().contains("hunter2"));
    }
}
