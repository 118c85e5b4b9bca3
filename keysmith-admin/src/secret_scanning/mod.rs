//! `POST /secret-scanning/github`: GitHub's secret scanning partner
//! endpoint. GitHub finds Keysmith keys pushed to public places and posts
//! them here; each one is handled by its tenant's leak policy.
//!
//! The request is authenticated by GitHub's signature alone, never by an
//! API key: `Github-Public-Key-Signature` is an ECDSA P-256 SHA-256
//! signature (base64 of DER) over the raw body, made with the key named by
//! `Github-Public-Key-Identifier`, one of those published at the keys URL.
//! The body is read with a size cap and verified before anything parses it.

mod alert;
pub(crate) mod document;
mod keys;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use keysmith_core::leak::{LeakLabel, LeakReport};
use keysmith_core::{Clock, Engine};
use serde::Serialize;

pub use alert::{AlertParseError, GithubAlert, parse_alerts};

use crate::error::{ErrorBody, ErrorDetail};
use keys::{PublicKeys, Rejection, Timing};

/// Where GitHub publishes the keys that sign its secret scanning alerts.
pub const DEFAULT_GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// The path of the route, inside the admin router.
pub const GITHUB_ROUTE: &str = "/secret-scanning/github";

/// The header naming the key that signed the body.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// GitHub's secret scanning partner endpoint: verifies an alert's signature,
/// hands the tokens to [`Engine::report_leaks`] and answers with the
/// feedback array `[{token_hash, token_type, label}]`.
///
/// [`AdminConfig`](crate::AdminConfig) mounts it at
/// `POST /secret-scanning/github` (so `/keysmith/v1/secret-scanning/github`
/// where the API is at `/keysmith/v1`), with the defaults unless given one
/// with [`AdminConfig::with_secret_scanning`](crate::AdminConfig::with_secret_scanning).
/// [`handle`](Self::handle) is the same endpoint without axum, for other
/// frameworks. Cheap to clone: clones share the key cache.
///
/// | request | answer |
/// |---|---|
/// | body over [`max_body`](Self::with_max_body) | 413 `payload_too_large` |
/// | a signature header missing, not base64 DER, or not matching the body; an identifier unknown after fetching the keys | 401 `invalid_signature` |
/// | the keys unavailable: the keys URL unreachable and no keys fetched within the [maximum age](Self::with_keys_max_age), or an unknown identifier when the keys were fetched less than the [refetch interval](Self::with_refetch_interval) ago | 503 `unavailable` (GitHub retries) |
/// | a verified body that is not an array of alerts | 400 `invalid_body` |
/// | the store unreachable | 503 `unavailable` |
/// | otherwise | 200 with the feedback array |
///
/// Every answer but 200 changes nothing.
#[derive(Clone)]
#[must_use]
pub struct GithubSecretScanning {
    engine: Engine,
    keys_url: String,
    fetch_timeout: Duration,
    refetch_interval: Duration,
    refresh_after: Duration,
    max_age: Duration,
    max_body: usize,
    clock: Option<Arc<dyn Clock>>,
    keys: Arc<std::sync::OnceLock<PublicKeys>>,
}

impl fmt::Debug for GithubSecretScanning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubSecretScanning")
            .field("keys_url", &self.keys_url)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("refetch_interval", &self.refetch_interval)
            .field("refresh_after", &self.refresh_after)
            .field("max_age", &self.max_age)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl GithubSecretScanning {
    /// The default fetch timeout for the keys.
    pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default shortest time between two fetches of the keys.
    pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
    /// The default age after which the keys are fetched again even when
    /// the identifier is known: one hour.
    pub const DEFAULT_KEYS_REFRESH: Duration = Duration::from_secs(3600);
    /// The default age past which cached keys are no longer trusted when
    /// they cannot be fetched again: one day.
    pub const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(86_400);
    /// The default body size cap: 1 MiB, several thousand alerts.
    pub const DEFAULT_MAX_BODY: usize = 1 << 20;

    /// The endpoint for `engine`'s keys, verifying with the keys at
    /// [`DEFAULT_GITHUB_KEYS_URL`].
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            keys_url: DEFAULT_GITHUB_KEYS_URL.to_owned(),
            fetch_timeout: Self::DEFAULT_FETCH_TIMEOUT,
            refetch_interval: Self::DEFAULT_REFETCH_INTERVAL,
            refresh_after: Self::DEFAULT_KEYS_REFRESH,
            max_age: Self::DEFAULT_KEYS_MAX_AGE,
            max_body: Self::DEFAULT_MAX_BODY,
            clock: None,
            keys: Arc::default(),
        }
    }

    /// Fetches the public keys from `url` (`http://` or `https://`) instead
    /// of GitHub's.
    pub fn with_keys_url(mut self, url: impl Into<String>) -> Self {
        self.keys_url = url.into();
        self.keys = Arc::default();
        self
    }

    /// Gives up fetching the keys after `timeout` (default 5 s): the alert is
    /// answered 503 and GitHub retries it.
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self.keys = Arc::default();
        self
    }

    /// Fetches the keys again for an unknown identifier at most once per
    /// `interval` (default 60 s), timed by the engine's clock.
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self.keys = Arc::default();
        self
    }

    /// Fetches the keys again once they are `age` old (default 1 hour),
    /// even when the identifier is known, so a key GitHub withdraws stops
    /// verifying alerts within `age`: after a fetch that succeeds, its
    /// identifier is unknown (401). While the fetch fails the cached keys
    /// keep serving, up to [`with_keys_max_age`](Self::with_keys_max_age).
    pub fn with_keys_refresh(mut self, age: Duration) -> Self {
        self.refresh_after = age;
        self.keys = Arc::default();
        self
    }

    /// Trusts cached keys for at most `age` after the fetch that brought
    /// them (default 1 day), however the later fetches fail: past it,
    /// every alert is answered 503 (GitHub retries) until a fetch succeeds.
    pub fn with_keys_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self.keys = Arc::default();
        self
    }

    /// Answers 413 to bodies over `bytes` (default 1 MiB).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Times the refetch interval and the keys' ages with `clock` instead of
    /// the engine's.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self.keys = Arc::default();
        self
    }

    /// The body size cap: a framework reading the body for
    /// [`handle`](Self::handle) stops there and answers 413.
    #[must_use]
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The 413 answer, for a framework whose body reader stopped at
    /// [`max_body`](Self::max_body).
    #[must_use]
    pub fn too_large(&self) -> ScanResponse {
        ScanResponse::error(&SecretScanningError::TooLarge { max: self.max_body })
    }

    /// The 400 answer, for a framework that could not read the body.
    #[must_use]
    pub fn unreadable(&self) -> ScanResponse {
        ScanResponse::error(&SecretScanningError::Unreadable)
    }

    fn public_keys(&self) -> &PublicKeys {
        self.keys.get_or_init(|| {
            let clock = self.clock.clone().unwrap_or_else(|| Arc::clone(self.engine.clock()));
            let timing = Timing {
                fetch_timeout: self.fetch_timeout,
                refetch_interval: self.refetch_interval,
                refresh_after: self.refresh_after,
                max_age: self.max_age,
            };
            PublicKeys::new(self.keys_url.clone(), timing, clock)
        })
    }

    /// The route alone: `POST /secret-scanning/github`, to mount where
    /// GitHub should post (the admin router already has it).
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        // Another method is answered like the admin routes answer it: 405
        // `method_not_allowed` as JSON, with `Allow`.
        Router::new()
            .route(GITHUB_ROUTE, post(github_alert))
            .method_not_allowed_fallback(crate::error::method_not_allowed)
            .with_state(self)
    }

    /// Answers one alert: the two GitHub headers (as sent, `None` when
    /// missing) and the raw body. The caller reads the body with the
    /// [`max_body`](Self::max_body) cap; a longer one is answered 413 here
    /// too.
    pub async fn handle(&self, identifier: Option<&[u8]>, signature: Option<&[u8]>, body: &[u8]) -> ScanResponse {
        match self.answer(identifier, signature, body).await {
            Ok(feedback) => ScanResponse::json(200, &feedback),
            Err(error) => {
                if error.status() >= 500 {
                    tracing::warn!(target: "keysmith::secret_scanning", error = %error, "alert not handled; GitHub will retry");
                } else {
                    tracing::warn!(target: "keysmith::secret_scanning", error = %error, "alert refused");
                }
                ScanResponse::error(&error)
            }
        }
    }

    async fn answer(
        &self, identifier: Option<&[u8]>, signature: Option<&[u8]>, body: &[u8],
    ) -> Result<Vec<Feedback>, SecretScanningError> {
        // 1. Size, before anything else looks at the body.
        if body.len() > self.max_body {
            return Err(SecretScanningError::TooLarge { max: self.max_body });
        }
        // 2. The signature over the raw bytes.
        let identifier = header_text(identifier).ok_or(SecretScanningError::InvalidSignature(
            "the Github-Public-Key-Identifier header is missing or unreadable",
        ))?;
        let signature = header_text(signature).ok_or(SecretScanningError::InvalidSignature(
            "the Github-Public-Key-Signature header is missing or unreadable",
        ))?;
        self.public_keys().verify(identifier.trim(), signature, body).await.map_err(|rejection| match rejection {
            Rejection::Invalid(reason) => SecretScanningError::InvalidSignature(reason),
            Rejection::Unavailable => SecretScanningError::KeysUnavailable,
        })?;
        // 3. Only now: parse, look up, act.
        let alerts = parse_alerts(body)?;
        let reports: Vec<LeakReport<'_>> = alerts
            .iter()
            .map(|alert| LeakReport { token: &alert.token, source: &alert.source, url: &alert.url })
            .collect();
        let findings = self.engine.report_leaks(&reports).await.map_err(SecretScanningError::Store)?;
        let leaked = findings.iter().filter(|finding| finding.label == LeakLabel::TruePositive).count();
        tracing::info!(
            target: "keysmith::secret_scanning",
            tokens = findings.len(),
            true_positives = leaked,
            changed = findings.iter().filter(|finding| finding.action.is_some()).count(),
            "secret scanning alert handled",
        );
        Ok(alerts
            .into_iter()
            .zip(findings)
            .map(|(alert, finding)| Feedback {
                token_hash: finding.token_hash,
                token_type: alert.token_type,
                label: finding.label,
            })
            .collect())
    }
}

/// A header's value as text, unless it is missing, empty or not UTF-8.
fn header_text(value: Option<&[u8]>) -> Option<&str> {
    value.and_then(|value| std::str::from_utf8(value).ok()).filter(|value| !value.trim().is_empty())
}

/// One entry of the answer: which token (by its SHA-256), and whether it is
/// one of ours.
#[derive(Debug, Serialize)]
struct Feedback {
    token_hash: String,
    token_type: String,
    label: LeakLabel,
}

/// An answer of [`GithubSecretScanning::handle`], for any framework: a JSON
/// body and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`Content-Type: application/json`).
    pub body: Vec<u8>,
}

impl ScanResponse {
    fn json(status: u16, value: &impl Serialize) -> Self {
        // Plain structs of strings: serializing cannot fail.
        Self { status, body: serde_json::to_vec(value).unwrap_or_default() }
    }

    fn error(error: &SecretScanningError) -> Self {
        let detail = ErrorDetail { code: error.code().to_owned(), message: error.to_string() };
        Self::json(error.status(), &ErrorBody { error: detail })
    }
}

impl IntoResponse for ScanResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// Why an alert was not handled. Nothing was changed by any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretScanningError {
    /// The body is over the cap: 413 `payload_too_large`.
    #[error("the body is larger than {max} bytes")]
    TooLarge {
        /// The cap, in bytes.
        max: usize,
    },
    /// A signature header is missing or malformed, or the signature is
    /// wrong: 401 `invalid_signature`.
    #[error("invalid signature: {0}")]
    InvalidSignature(&'static str),
    /// GitHub's keys could not be had: 503 `unavailable`.
    #[error("GitHub's public keys cannot be fetched now; try again later")]
    KeysUnavailable,
    /// The body could not be read (the connection broke): 400 `invalid_body`.
    #[error("the body could not be read")]
    Unreadable,
    /// The verified body is not an array of alerts: 400 `invalid_body`.
    #[error(transparent)]
    Body(#[from] AlertParseError),
    /// The store failed: 503 `unavailable`.
    #[error("the key store is unavailable; try again later")]
    Store(#[source] keysmith_core::Error),
}

impl SecretScanningError {
    /// The HTTP status of the answer.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::InvalidSignature(_) => 401,
            Self::KeysUnavailable | Self::Store(_) => 503,
            Self::Body(_) | Self::Unreadable => 400,
        }
    }

    /// The `code` of the JSON error body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "payload_too_large",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::KeysUnavailable | Self::Store(_) => "unavailable",
            Self::Body(_) | Self::Unreadable => "invalid_body",
        }
    }
}

/// The axum handler: reads the body with the cap, then [`GithubSecretScanning::handle`].
async fn github_alert(State(scanning): State<GithubSecretScanning>, headers: HeaderMap, body: Body) -> ScanResponse {
    let body = match axum::body::to_bytes(body, scanning.max_body).await {
        Ok(body) => body,
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(<dyn std::error::Error>::is::<http_body_util::LengthLimitError>);
            return if too_large { scanning.too_large() } else { scanning.unreadable() };
        }
    };
    let value = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    scanning.handle(value(KEY_IDENTIFIER_HEADER), value(SIGNATURE_HEADER), &body).await
}
