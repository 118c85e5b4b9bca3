//! `RequireScopes`: per-scope or per-resource scope requirements behind
//! [`ApiKeyMiddleware`](crate::ApiKeyMiddleware).

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage};
use futures_util::future::LocalBoxFuture;
use keysmith_core::http::ScopeRequirement;

use crate::ApiKeyRejection;
use crate::request::Installed;

/// Middleware that lets a request through only if its key holds the
/// route's scopes (hierarchically: `read` covers `read:users`). `.wrap()`
/// it around a `web::scope` or `web::resource` *inside*
/// [`ApiKeyMiddleware`](crate::ApiKeyMiddleware) (which wraps the `App` or an outer scope).
///
/// A key without the scopes gets 403 `insufficient_scope` with
/// `WWW-Authenticate: Bearer …, error="insufficient_scope", scope="…"`, and
/// the request spends nothing: the rate-limit request and quota its
/// validation counted are given back and no usage is recorded for it. A
/// request let through without a key (optional mode) gets 401
/// `missing_key`; CORS preflights pass only where the middleware lets
/// them through (opt-in passthrough). Without `ApiKeyMiddleware` in front the
/// answer is 500, naming the missing middleware.
///
/// ```
/// use actix_web::{App, web};
/// use keysmith_actix::RequireScopes;
///
/// let app = App::new()
///     .service(
///         web::scope("/admin")
///             .wrap(RequireScopes::any(["admin", "keysmith:admin"]))
///             .route("/stats", web::get().to(|| async { "stats" })),
///     )
///     .service(
///         web::resource("/users")
///             .wrap(RequireScopes::all(["read:users"]))
///             .route(web::get().to(|| async { "users" })),
///     );
/// // …then `.wrap(ApiKeyMiddleware::new(engine))` on the App.
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RequireScopes {
    requirement: ScopeRequirement,
}

impl RequireScopes {
    /// Every one of `scopes` is required.
    pub fn all<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self { requirement: ScopeRequirement::all(scopes) }
    }

    /// Any one of `scopes` is enough.
    pub fn any<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self { requirement: ScopeRequirement::any(scopes) }
    }

    /// The requirement checked.
    #[must_use]
    pub fn requirement(&self) -> &ScopeRequirement {
        &self.requirement
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequireScopes
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = RequireScopesMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireScopesMiddleware { service, requirement: self.requirement.clone() }))
    }
}

/// The service made by [`RequireScopes`].
#[derive(Debug)]
pub struct RequireScopesMiddleware<S> {
    service: S,
    requirement: ScopeRequirement,
}

impl<S, B> Service<ServiceRequest> for RequireScopesMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let rejection = {
            let extensions = request.extensions();
            match extensions.get::<Installed>() {
                None => Some((ApiKeyRejection::MissingMiddleware { needed_by: "RequireScopes" }, None)),
                Some(installed) if installed.preflight => None,
                Some(installed) => {
                    installed.gate().scope_refusal(&self.requirement, installed.key.as_ref()).map(|refusal| {
                        (ApiKeyRejection::refused(refusal.response, installed.responder().clone()), refusal.refund)
                    })
                }
            }
        };
        match rejection {
            None => {
                let future = self.service.call(request);
                Box::pin(async move { future.await.map(ServiceResponse::map_into_left_body) })
            }
            Some((rejection, None)) => {
                let response = request.error_response(rejection).map_into_right_body();
                Box::pin(ready(Ok(response)))
            }
            // The key's credits are back before the answer goes out.
            Some((rejection, Some(refund))) => Box::pin(async move {
                refund.await;
                Ok(request.error_response(rejection).map_into_right_body())
            }),
        }
    }
}
