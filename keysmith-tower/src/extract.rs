//! `ApiKey` for handlers: the axum extractor around core's
//! [`keysmith_core::http::ApiKey`].

use std::fmt;
use std::ops::Deref;

use http::{Response, StatusCode};
use keysmith_core::Refusal;
use keysmith_core::http::{ApiKey as CoreApiKey, RefusalResponse};

use crate::RefusalResponder;
use crate::request::Installed;
use crate::response::missing_layer_response;

/// The key a request was validated with, as a handler argument. It derefs
/// to [`keysmith_core::http::ApiKey`] (id, tenant, scopes, rate limit…) and
/// clones cheaply.
///
/// [`ApiKeyLayer`](crate::ApiKeyLayer) stores the core value in the request
/// extensions; this type reads it. As an axum extractor (feature `axum`):
/// - `ApiKey` is refused with 401 `missing_key` when the layer let the
///   request through without a key (optional mode), and with 500 naming
///   the missing layer when no `ApiKeyLayer` ran;
/// - `Option<ApiKey>` is `None` without a key, and 500 without the layer.
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
        extensions.get::<CoreApiKey>().cloned().map(Self)
    }

    /// The key, or why there is none: what the axum extractor does, for
    /// any tower service.
    ///
    /// # Errors
    /// [`ApiKeyRejection::MissingKey`] when the layer let the request
    /// through without a key, [`ApiKeyRejection::MissingLayer`] when no
    /// layer ran.
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

/// Why an `ApiKey` could not be extracted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiKeyRejection {
    /// No `ApiKeyLayer` ran for this request: the application is wired
    /// wrong. 500.
    MissingLayer,
    /// The layer let the request through without a key (optional mode, or
    /// a CORS preflight). 401 `missing_key`.
    MissingKey {
        /// The refusal, rendered by the layer's responder.
        refusal: Box<RefusalResponse>,
        /// The layer's responder.
        responder: RefusalResponder,
    },
}

impl ApiKeyRejection {
    fn from_extensions(extensions: &http::Extensions) -> Self {
        match extensions.get::<Installed>() {
            Some(installed) => Self::MissingKey {
                refusal: Box::new(installed.gate().refusal(Refusal::MissingKey)),
                responder: installed.responder().clone(),
            },
            None => Self::MissingLayer,
        }
    }

    /// The status of the rejection's response.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MissingKey { refusal, .. } => {
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::UNAUTHORIZED)
            }
        }
    }

    /// The rejection as an `http` response.
    #[must_use]
    pub fn into_http_response(self) -> Response<String> {
        match self {
            Self::MissingLayer => missing_layer_response("the ApiKey extractor"),
            Self::MissingKey { refusal, responder } => responder.respond(&refusal),
        }
    }
}

impl fmt::Display for ApiKeyRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingLayer => f.write_str("the ApiKey extractor needs keysmith_tower::ApiKeyLayer in front of it"),
            Self::MissingKey { refusal, .. } => f.write_str(&refusal.message),
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
            if parts.extensions.get::<Installed>().is_none() && Self::from_extensions(&parts.extensions).is_none() {
                return Err(ApiKeyRejection::MissingLayer);
            }
            Ok(Self::from_extensions(&parts.extensions))
        }
    }

    impl IntoResponse for ApiKeyRejection {
        fn into_response(self) -> axum::response::Response {
            self.into_http_response().into_response()
        }
    }
}
