//! Turning core's framework-free answers into actix responses, and the one
//! error type every refusal of this crate travels in.

use std::fmt;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use keysmith_core::http::{PROBLEM_CONTENT_TYPE, RefusalResponse, SharedHeaderValue};

use crate::request::known_name;

/// Builds the response to a refused request. The default,
/// [`default_refusal_response`], sends the status, headers and JSON body of
/// the status table of the guide's HTTP chapter; set your own with
/// [`ApiKeyMiddleware::with_responder`](crate::ApiKeyMiddleware::with_responder) to render
/// errors in your API's format.
#[derive(Clone)]
pub struct RefusalResponder(Arc<RespondFn>);

type RespondFn = dyn Fn(&RefusalResponse) -> HttpResponse + Send + Sync;

impl RefusalResponder {
    /// A responder that calls `f`.
    pub fn new(f: impl Fn(&RefusalResponse) -> HttpResponse + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The response to `refusal`.
    #[must_use]
    pub fn respond(&self, refusal: &RefusalResponse) -> HttpResponse {
        (self.0)(refusal)
    }
}

impl Default for RefusalResponder {
    fn default() -> Self {
        Self::new(default_refusal_response)
    }
}

impl fmt::Debug for RefusalResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusalResponder").finish_non_exhaustive()
    }
}

/// The standard answer: `refusal`'s status, its headers (`WWW-Authenticate`,
/// `Retry-After`, `RateLimit-*`, `Content-Type: application/json`) and the
/// body `{"error":{"code":"…","message":"…"}}`.
#[must_use]
pub fn default_refusal_response(refusal: &RefusalResponse) -> HttpResponse {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::with_body(status, refusal.body()).map_into_boxed_body();
    append_headers(response.headers_mut(), &refusal.headers);
    response
}

/// The RFC 9457 answer: `refusal`'s status and headers, with
/// `Content-Type: application/problem+json` and the body of
/// [`RefusalResponse::problem_body`] (`type`, `title`, `status`, `detail`,
/// and the `code` of the JSON body; the draft's `quota-exceeded` type for
/// refusals by a rate limit, quota or credits). Select it with
/// [`ApiKeyMiddleware::with_responder`](crate::ApiKeyMiddleware::with_responder)`(problem_refusal_response)`.
#[must_use]
pub fn problem_refusal_response(refusal: &RefusalResponse) -> HttpResponse {
    let mut response =
        default_refusal_response(refusal).set_body(actix_web::body::BoxBody::new(refusal.problem_body()));
    response
        .headers_mut()
        .insert(actix_web::http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    response
}

/// Appends `(name, value)` pairs from core (a refusal's headers), each as
/// [`append_header`] does.
pub(crate) fn append_headers(map: &mut actix_web::http::header::HeaderMap, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        append_header(map, name, value);
    }
}

/// Appends a value core shares: the framework's header value keeps the
/// shared bytes (checked, not copied), and for a value rendered once is
/// made once.
pub(crate) fn append_shared(
    map: &mut actix_web::http::header::HeaderMap, name: &'static str, value: &SharedHeaderValue,
) {
    if let Some(value) = value.converted(|bytes| HeaderValue::from_maybe_shared(bytes.clone()).ok()) {
        map.append(header_name(name), value);
    }
}

/// Appends one header core rendered (a lowercase name of
/// [`names`](keysmith_core::http::names), a valid value), the value copied
/// once; a value that is not a valid header (which core never produces) is
/// skipped rather than panicking.
pub(crate) fn append_header(map: &mut actix_web::http::header::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
        map.append(header_name(name), value);
    }
}

/// The framework's name for one of core's lowercase names: a per-request
/// name is taken from the table parsed once, any other built from the
/// static text.
fn header_name(name: &'static str) -> HeaderName {
    known_name(name).cloned().unwrap_or_else(|| HeaderName::from_static(name))
}

/// Why a request got no further: the error that [`ApiKeyMiddleware`](crate::ApiKeyMiddleware),
/// [`RequireScopes`](crate::RequireScopes) and the [`ApiKey`](crate::ApiKey)
/// extractor answer with. It is an actix [`ResponseError`], so the response
/// carries it (`ServiceResponse::response().error()`) for outer middleware
/// such as `Logger`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiKeyRejection {
    /// No [`ApiKeyMiddleware`](crate::ApiKeyMiddleware) middleware ran for this request: the
    /// application is wired wrong. 500, naming the missing middleware.
    MissingMiddleware {
        /// What needed the middleware (`the ApiKey extractor`,
        /// `RequireScopes`).
        needed_by: &'static str,
    },
    /// The request was refused: no key, a bad key, a policy, missing
    /// scopes, a limit; or 503 when the key could not be checked.
    Refused {
        /// The answer, rendered by `responder`.
        refusal: Box<RefusalResponse>,
        /// The middleware's responder.
        responder: RefusalResponder,
    },
}

impl ApiKeyRejection {
    pub(crate) fn refused(refusal: RefusalResponse, responder: RefusalResponder) -> Self {
        Self::Refused { refusal: Box::new(refusal), responder }
    }

    /// Core's description of the answer: status, code, message, headers.
    #[must_use]
    pub fn refusal_response(&self) -> RefusalResponse {
        match self {
            Self::MissingMiddleware { needed_by } => RefusalResponse::misconfigured(format!(
                "{needed_by} needs keysmith_actix::ApiKeyMiddleware in front of it; add `.wrap(ApiKeyMiddleware::new(engine))` \
                 to the App or scope"
            )),
            Self::Refused { refusal, .. } => RefusalResponse::clone(refusal),
        }
    }

    /// The status of the rejection's response (what
    /// [`ResponseError::status_code`] answers; the same method as
    /// keysmith-tower's rejection has).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingMiddleware { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Refused { refusal, .. } => {
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

impl fmt::Display for ApiKeyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingMiddleware { needed_by } => {
                write!(f, "{needed_by} needs keysmith_actix::ApiKeyMiddleware in front of it")
            }
            Self::Refused { refusal, .. } => write!(f, "{}: {}", refusal.code, refusal.message),
        }
    }
}

impl std::error::Error for ApiKeyRejection {}

impl ResponseError for ApiKeyRejection {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::MissingMiddleware { .. } => default_refusal_response(&self.refusal_response()),
            Self::Refused { refusal, responder } => responder.respond(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use keysmith_core::Refusal;

    use super::*;

    #[test]
    fn a_rejection_has_the_status_of_its_response() {
        let missing = ApiKeyRejection::MissingMiddleware { needed_by: "RequireScopes" };
        assert_eq!(missing.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let refused = RefusalResponse::refused(Refusal::MissingKey, "api", chrono::Utc::now());
        let rejection = ApiKeyRejection::refused(refused, RefusalResponder::default());
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(rejection.status_code(), rejection.status());
        assert_eq!(rejection.error_response().status(), StatusCode::UNAUTHORIZED);
    }
}
