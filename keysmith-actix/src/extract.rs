//! `ApiKey` for handlers: the actix extractor around core's
//! [`keysmith_core::http::ApiKey`].

use std::fmt;
use std::future::{Ready, ready};
use std::ops::Deref;

use actix_web::dev::{Extensions, Payload};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use keysmith_core::Refusal;
use keysmith_core::http::ApiKey as CoreApiKey;

use crate::ApiKeyRejection;
use crate::request::Installed;

/// The key a request was validated with, as a handler argument. It derefs
/// to [`keysmith_core::http::ApiKey`] (id, tenant, scopes, rate limit…) and
/// clones cheaply.
///
/// [`ApiKeyMiddleware`](crate::ApiKeyMiddleware) stores the core value in the request
/// extensions; this type reads it. As an extractor:
/// - `ApiKey` is refused with 401 `missing_key` when the middleware let the
///   request through without a key (optional mode), and with 500 naming the
///   missing middleware when no `ApiKeyMiddleware` ran;
/// - `Option<ApiKey>` is `None` whenever the request carries no validated
///   key, including when no middleware ran (logged once, at `error`): the
///   same as keysmith-tower. A handler taking `Option<ApiKey>` serves
///   requests without a key anyway, so a missing middleware never grants
///   more than the anonymous answer; take `ApiKey` where a key is required.
///
/// ```
/// use keysmith_actix::ApiKey;
///
/// async fn me(key: ApiKey) -> String {
///     format!("{} of {}", key.id(), key.tenant())
/// }
///
/// async fn greet(key: Option<ApiKey>) -> &'static str {
///     if key.is_some() { "hello, client" } else { "hello, stranger" }
/// }
/// ```
#[derive(Clone)]
pub struct ApiKey(CoreApiKey);

impl ApiKey {
    /// The key [`ApiKeyMiddleware`](crate::ApiKeyMiddleware) left in `extensions`.
    #[must_use]
    pub fn from_extensions(extensions: &Extensions) -> Option<Self> {
        extensions.get::<Installed>().and_then(|installed| installed.key.clone()).map(Self)
    }

    /// The key, or why there is none: what the extractor does, for
    /// middleware and `wrap_fn` code that has a request rather than handler
    /// arguments.
    ///
    /// # Errors
    /// [`ApiKeyRejection::Refused`] (401 `missing_key`) when the middleware
    /// let the request through without a key,
    /// [`ApiKeyRejection::MissingMiddleware`] when no middleware ran.
    pub fn extract(extensions: &Extensions) -> Result<Self, ApiKeyRejection> {
        if let Some(key) = Self::from_extensions(extensions) {
            return Ok(key);
        }
        Err(match extensions.get::<Installed>() {
            Some(installed) => {
                ApiKeyRejection::refused(installed.gate().refusal(Refusal::MissingKey), installed.responder().clone())
            }
            None => {
                keysmith_core::http::log_missing_middleware("the ApiKey extractor", "keysmith_actix::ApiKeyMiddleware");
                ApiKeyRejection::MissingMiddleware { needed_by: "the ApiKey extractor" }
            }
        })
    }

    /// The core value.
    #[must_use]
    pub fn into_inner(self) -> CoreApiKey {
        self.0
    }
}

impl Deref for ApiKey {
    type Target = CoreApiKey;

    fn deref(&self) -> &CoreApiKey {
        &self.0
    }
}

impl From<CoreApiKey> for ApiKey {
    fn from(key: CoreApiKey) -> Self {
        Self(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromRequest for ApiKey {
    type Error = ApiKeyRejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Self::extract(&request.extensions()))
    }
}
