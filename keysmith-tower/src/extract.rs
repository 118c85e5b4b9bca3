//! `ApiKey` for handlers: the axum extractor around core's
//! [`keysmith_core::http::ApiKey`].

use std::fmt;
use std::ops::Deref;

use http::{Response, StatusCode};
use keysmith_core::Refusal;
use keysmith_core::http::{ApiKey as CoreApiKey, RefusalResponse};

use crate::request::Installed;
use crate::{RefusalResponder, default_refusal_response};

/// The key a request was validated with, as a handler argument. It derefs
/// to [`keysmith_core::http::ApiKey`] (id, tenant, scopes, rate limit…) and
/// clones cheaply.
///
/// [`ApiKeyLayer`](crate::ApiKeyLayer) stores the core value in the request
/// extensions; this type reads it. As an axum extractor (feature `axum`):
/// - `ApiKey` is refused with 401 `missing_key` when the layer let the
///   request through without a key (optional mode), and with 500 naming
///   the missing layer when no `ApiKeyLayer` ran;
/// - `Option<ApiKey>` is `None` whenever the request carries no validated
///   key, including when no layer ran (logged once, at `error`): the same
///   as actix, whose `Option` extractor cannot fail. A handler taking
///   `Option<ApiKey>` serves requests without a key anyway, so a missing
///   layer never grants more than the anonymous answer; take `ApiKey`
///   where a key is required.
///
/// ```
/// use keysmith_tower::ApiKey;
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
    /// The key [`ApiKeyLayer`](crate::ApiKeyLayer) left in `extensions`.
    #[must_use]
    pub fn from_extensions(extensions: &http::Extensions) -> Option<Self> {
        extensions.get::<Installed>().and_then(|installed| installed.key.clone()).map(Self)
    }

    /// The key, or why there is none: what the axum extractor does, for
    /// any tower service.
    ///
    /// # Errors
    /// [`ApiKeyRejection::Refused`] (401 `missing_key`) when the layer let
    /// the request through without a key,
    /// [`ApiKeyRejection::MissingMiddleware`] when no layer ran.
    pub fn extract(extensions: &http::Extensions) -> Result<Self, ApiKeyRejection> {
        Self::from_extensions(extensions).ok_or_else(|| ApiKeyRejection::from_extensions(extensions))
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

/// Why a request got no further than an extractor or `RequireScopes`:
/// the same two cases, under the same names, as in keysmith-actix.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiKeyRejection {
    /// No [`ApiKeyLayer`](crate::ApiKeyLayer) ran for this request: the
    /// application is wired wrong. 500, naming the missing layer.
    MissingMiddleware {
        /// What needed the layer (`the ApiKey extractor`, `RequireScopes`).
        needed_by: &'static str,
    },
    /// The request was refused: no key (optional mode, a CORS preflight)
    /// or missing scopes.
    Refused {
        /// The answer, rendered by `responder`.
        refusal: Box<RefusalResponse>,
        /// The layer's responder.
        responder: RefusalResponder,
    },
}

impl ApiKeyRejection {
    fn from_extensions(extensions: &http::Extensions) -> Self {
        match extensions.get::<Installed>() {
            Some(installed) => Self::Refused {
                refusal: Box::new(installed.gate().refusal(Refusal::MissingKey)),
                responder: installed.responder().clone(),
            },
            None => Self::MissingMiddleware { needed_by: "the ApiKey extractor" },
        }
    }

    /// Core's description of the answer: status, code, message, headers.
    #[must_use]
    pub fn refusal_response(&self) -> RefusalResponse {
        match self {
            Self::MissingMiddleware { needed_by } => missing_layer(needed_by),
            Self::Refused { refusal, .. } => RefusalResponse::clone(refusal),
        }
    }

    /// The status of the rejection's response.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingMiddleware { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Refused { refusal, .. } => {
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The rejection as an `http` response.
    #[must_use]
    pub fn into_http_response(self) -> Response<String> {
        match self {
            Self::MissingMiddleware { needed_by } => default_refusal_response(&missing_layer(needed_by)),
            Self::Refused { refusal, responder } => responder.respond(&refusal),
        }
    }
}

/// 500: `needed_by` ran on a request that never went through the layer.
fn missing_layer(needed_by: &str) -> RefusalResponse {
    RefusalResponse::misconfigured(format!(
        "{needed_by} needs keysmith_tower::ApiKeyLayer in front of it; add `.layer(ApiKeyLayer::new(engine))` to \
         the router"
    ))
}

impl fmt::Display for ApiKeyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingMiddleware { needed_by } => {
                write!(f, "{needed_by} needs keysmith_tower::ApiKeyLayer in front of it")
            }
            Self::Refused { refusal, .. } => write!(f, "{}: {}", refusal.code, refusal.message),
        }
    }
}

impl std::error::Error for ApiKeyRejection {}

#[cfg(feature = "axum")]
mod axum_impls {
    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::IntoResponse;
    use http::request::Parts;

    use super::{ApiKey, ApiKeyRejection};
    use crate::request::Installed;

    impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
        type Rejection = ApiKeyRejection;

        async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
            Self::extract(&parts.extensions)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for ApiKey {
        type Rejection = ApiKeyRejection;

        async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
            let key = Self::from_extensions(&parts.extensions);
            if key.is_none() && parts.extensions.get::<Installed>().is_none() {
                keysmith_core::http::log_missing_middleware("Option<ApiKey>", "keysmith_tower::ApiKeyLayer");
            }
            Ok(key)
        }
    }

    impl IntoResponse for ApiKeyRejection {
        fn into_response(self) -> axum::response::Response {
            self.into_http_response().into_response()
        }
    }
}
