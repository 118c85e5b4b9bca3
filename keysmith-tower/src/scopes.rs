//! `RequireScopes`: per-route scope requirements behind [`ApiKeyLayer`](crate::ApiKeyLayer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use keysmith_core::Refund;
use keysmith_core::http::ScopeRequirement;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::ApiKeyRejection;
use crate::request::Installed;

/// A [`Layer`] that lets a request through only if its key holds the
/// route's scopes (hierarchically: `read` covers `read:users`). Put it
/// *inside* [`ApiKeyLayer`](crate::ApiKeyLayer): with axum, `route_layer`
/// or a method router's `.layer`, with the `ApiKeyLayer` on the router.
///
/// A key without the scopes gets 403 `insufficient_scope` with
/// `WWW-Authenticate: Bearer …, error="insufficient_scope", scope="…"`, and
/// the request spends nothing: the rate-limit request and quota its
/// validation counted are given back and no usage is recorded for it. A
/// request let through without a key (optional mode) gets 401
/// `missing_key`; CORS preflights pass only where the layer lets them
/// through (opt-in passthrough). Without `ApiKeyLayer` in front the
/// answer is 500, naming the missing layer.
///
/// ```
/// use axum::{Router, routing::get};
/// use keysmith_tower::RequireScopes;
///
/// let app: Router = Router::new()
///     .route("/users", get(|| async { "users" }).post(|| async { "created" }))
///     .route_layer(RequireScopes::all(["read:users"]))
///     .route("/admin", get(|| async { "admin" }).layer(RequireScopes::any(["admin", "keysmith:admin"])));
/// // …then `.layer(ApiKeyLayer::new(engine))` on the whole router.
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

impl<S> Layer<S> for RequireScopes {
    type Service = RequireScopesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopesService { inner, requirement: self.requirement.clone() }
    }
}

/// The service made by [`RequireScopes`].
#[derive(Debug, Clone)]
pub struct RequireScopesService<S> {
    inner: S,
    requirement: ScopeRequirement,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopesService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RequireScopesFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let refusal = match request.extensions().get::<Installed>() {
            None => {
                Some((ApiKeyRejection::MissingMiddleware { needed_by: "RequireScopes" }.into_http_response(), None))
            }
            Some(installed) if installed.preflight => None,
            Some(installed) => installed
                .gate()
                .scope_refusal(&self.requirement, installed.key.as_ref())
                .map(|refusal| (installed.responder().respond(&refusal.response), refusal.refund)),
        };
        match refusal {
            None => RequireScopesFuture::inner(self.inner.call(request)),
            Some((response, refund)) => RequireScopesFuture::refused(response.map(ResBody::from), refund),
        }
    }
}

pin_project! {
    /// The response future of [`RequireScopesService`].
    pub struct RequireScopesFuture<F, ResBody> {
        #[pin]
        kind: Kind<F, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, ResBody> {
        Inner {
            #[pin]
            future: F,
        },
        Refused {
            // Awaited first: the key's credits are back before the answer.
            refund: Option<Refund>,
            response: Option<Response<ResBody>>,
        },
    }
}

impl<F, ResBody> RequireScopesFuture<F, ResBody> {
    fn inner(future: F) -> Self {
        Self { kind: Kind::Inner { future } }
    }

    fn refused(response: Response<ResBody>, refund: Option<Refund>) -> Self {
        Self { kind: Kind::Refused { refund, response: Some(response) } }
    }
}

impl<F, ResBody> std::fmt::Debug for RequireScopesFuture<F, ResBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("RequireScopesFuture").field("state", &state).finish()
    }
}

impl<F, ResBody, E> Future for RequireScopesFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Refused { refund, response } => {
                if let Some(pending) = refund {
                    std::task::ready!(Pin::new(pending).poll(cx));
                    *refund = None;
                }
                Poll::Ready(Ok(response.take().expect("RequireScopesFuture polled after completion")))
            }
        }
    }
}
