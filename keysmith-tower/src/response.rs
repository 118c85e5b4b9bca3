//! Turning core's framework-free answers into `http` responses.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use keysmith_core::http::{PROBLEM_CONTENT_TYPE, RefusalResponse, SharedHeaderValue};

use crate::request::known_name;

/// Builds the response to a refused request. The default,
/// [`default_refusal_response`], sends the status, headers and JSON body of
/// the status table of the guide's HTTP chapter; set your own with
/// [`ApiKeyLayer::with_responder`](crate::ApiKeyLayer::with_responder) to
/// render errors in your API's format.
#[derive(Clone)]
pub struct RefusalResponder(Arc<RespondFn>);

type RespondFn = dyn Fn(&RefusalResponse) -> Response<String> + Send + Sync;

impl RefusalResponder {
    /// A responder that calls `f`.
    pub fn new(f: impl Fn(&RefusalResponse) -> Response<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The response to `refusal`.
    #[must_use]
    pub fn respond(&self, refusal: &RefusalResponse) -> Response<String> {
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
pub fn default_refusal_response(refusal: &RefusalResponse) -> Response<String> {
    let mut response = Response::new(refusal.body());
    *response.status_mut() = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    append_headers(response.headers_mut(), &refusal.headers);
    response
}

/// The RFC 9457 answer: `refusal`'s status and headers, with
/// `Content-Type: application/problem+json` and the body of
/// [`RefusalResponse::problem_body`] (`type`, `title`, `status`, `detail`,
/// and the `code` of the JSON body; the draft's `quota-exceeded` type for
/// refusals by a rate limit, quota or credits). Select it with
/// [`ApiKeyLayer::with_responder`](crate::ApiKeyLayer::with_responder)`(problem_refusal_response)`.
#[must_use]
pub fn problem_refusal_response(refusal: &RefusalResponse) -> Response<String> {
    let mut response = default_refusal_response(refusal);
    *response.body_mut() = refusal.problem_body();
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    response
}

/// Appends `(name, value)` pairs from core (a refusal's headers), each as
/// [`append_header`] does.
pub(crate) fn append_headers(map: &mut http::HeaderMap, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        append_header(map, name, value);
    }
}

/// Appends a value core shares: the framework's header value keeps the
/// shared bytes (checked, not copied), and for a value rendered once is
/// made once.
pub(crate) fn append_shared(map: &mut http::HeaderMap, name: &'static str, value: &SharedHeaderValue) {
    if let Some(value) = value.converted(|bytes| HeaderValue::from_maybe_shared(bytes.clone()).ok()) {
        map.append(header_name(name), value);
    }
}

/// Appends one header core rendered (a lowercase name of
/// [`names`](keysmith_core::http::names), a valid value), the value copied
/// once; a value that is not a valid header (which core never produces) is
/// skipped rather than panicking.
pub(crate) fn append_header(map: &mut http::HeaderMap, name: &'static str, value: &str) {
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
