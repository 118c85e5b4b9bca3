//! Extractors whose every failure is an [`Error`], so no axum rejection
//! ever answers in plain text.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, MissingJsonContentType};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use keysmith_core::{IdParseError, TenantEngine};
use keysmith_tower::ApiKey;
use serde::de::DeserializeOwned;

use crate::AdminState;
use crate::error::Error;

/// The caller's tenant: the app and tenant of the validated admin key.
/// Every handler starts from it, so no route can reach another tenant.
#[derive(Debug)]
pub(crate) struct Caller(pub(crate) TenantEngine);

impl FromRequestParts<AdminState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Error> {
        let key = ApiKey::extract(&parts.extensions)?;
        let tenant = key.tenant();
        Ok(Self(state.engine.tenant(tenant.app_id.clone(), tenant.tenant_id.clone())))
    }
}

/// The `{id}` path parameter as a typed id: a wrong prefix or shape is 400
/// `invalid_id`, never a 404.
#[derive(Debug)]
pub(crate) struct Id<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Id<T>
where
    S: Send + Sync,
    T: FromStr<Err = IdParseError>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(text.parse()?))
    }
}

/// A text path parameter (`{owner_id}`), percent-decoded; a failure is a
/// 400 JSON error. What the text may hold is the engine's to check.
#[derive(Debug)]
pub(crate) struct PathText(pub(crate) String);

impl<S> FromRequestParts<S> for PathText
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(text))
    }
}

/// A JSON body; failures are JSON errors (400, 413, 415 or 422).
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(value) = <axum::Json<T> as FromRequest<S>>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// `Option<JsonBody<T>>`: `None` when the request has neither a
/// `Content-Type` nor a body (as `curl -X POST` sends); a body must be
/// valid JSON labelled `application/json`. A body without a `Content-Type`
/// is 415, never ignored: it may hold what the caller relies on (a revoke's
/// reason, a rotation's grace of zero).
impl<S, T> OptionalFromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Error> {
        if request.headers().contains_key(header::CONTENT_TYPE) {
            return <Self as FromRequest<S>>::from_request(request, state).await.map(Some);
        }
        // Read under the router's body limit (413 past it).
        let body = Bytes::from_request(request, state).await.map_err(JsonRejection::from)?;
        if body.is_empty() {
            return Ok(None);
        }
        Err(JsonRejection::from(MissingJsonContentType::default()).into())
    }
}

/// The query string; failures are 400 `invalid_query` JSON errors.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
