//! The HTTP conformance cases on the actix-web adapter.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpResponse, test, web};
use keysmith_actix::{ApiKey, ApiKeyMiddleware, RequireScopes, problem_refusal_response};
use keysmith_core::Engine;
use keysmith_tests::http_conformance::{Harness, HarnessOptions, TestRequest, TestResponse};

/// The answer to one request, from the app under test.
type Pending = Pin<Box<dyn Future<Output = TestResponse>>>;

/// The initialised app, behind a boxed closure because its service type
/// cannot be named.
struct ActixHarness {
    send: Rc<dyn Fn(test::TestRequest) -> Pending>,
}

fn key_json(key: Option<&ApiKey>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "key": key.map(|k| k.id().to_string()) }))
}

async fn into_test_response<B: MessageBody>(response: ServiceResponse<B>) -> TestResponse {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = test::read_body(response).await.to_vec();
    TestResponse { status, headers, body }
}

impl Harness for ActixHarness {
    async fn start(engine: Engine, options: HarnessOptions) -> Self {
        let mut keysmith = ApiKeyMiddleware::new(engine)
            .with_realm(options.realm)
            .with_trusted_proxies(options.trusted_proxies)
            .with_preflight_passthrough(options.preflight_passthrough)
            .with_rate_limit_headers(options.rate_limit_headers)
            .with_usage_endpoint(options.usage_endpoint);
        if let Some(sources) = options.key_sources {
            keysmith = keysmith.with_key_sources(sources);
        }
        if let Some(app_id) = options.app_id {
            keysmith = keysmith.with_app_id(app_id);
        }
        if options.problem_details {
            keysmith = keysmith.with_responder(problem_refusal_response);
        }
        if options.optional {
            keysmith = keysmith.optional();
        }
        let app = test::init_service(
            App::new()
                .service(
                    web::scope("/outside")
                        .route("/key", web::get().to(|key: ApiKey| async move { key_json(Some(&key)) }))
                        .route("/whoami", web::get().to(|key: Option<ApiKey>| async move { key_json(key.as_ref()) })),
                )
                .service(
                    web::scope("")
                        .service(
                            web::scope("/scoped")
                                .service(
                                    web::resource("/all")
                                        .wrap(RequireScopes::all(["read:users", "write:users"]))
                                        .route(web::get().to(|| async { "ok" })),
                                )
                                .service(
                                    web::scope("/any")
                                        .wrap(RequireScopes::any(["admin", "write:users"]))
                                        .route("", web::get().to(|| async { "ok" })),
                                ),
                        )
                        .service(
                            web::resource("/whoami")
                                .route(web::get().to(|key: Option<ApiKey>| async move { key_json(key.as_ref()) }))
                                .route(web::method(Method::OPTIONS).to(HttpResponse::NoContent)),
                        )
                        .route("/key", web::get().to(|key: ApiKey| async move { key_json(Some(&key)) }))
                        .route("/teapot", web::get().to(|_: ApiKey| async { HttpResponse::ImATeapot().finish() }))
                        .route("/users/{id}", web::get().to(|| async { "a user" }))
                        .route("/fail", web::get().to(|| async { "unreachable" }))
                        // `/fail`: the service behind Keysmith fails with an
                        // error (not a response).
                        .wrap_fn(|request, service| {
                            let fail = request.path() == "/fail";
                            let future = (!fail).then(|| service.call(request));
                            async move {
                                match future {
                                    Some(future) => future.await,
                                    None => Err(actix_web::error::ErrorBadGateway("the inner service failed")),
                                }
                            }
                        })
                        .wrap(keysmith),
                ),
        )
        .await;
        let app = Rc::new(app);
        let send = move |request: test::TestRequest| -> Pending {
            let app = Rc::clone(&app);
            Box::pin(async move {
                let response = match app.call(request.to_request()).await {
                    Ok(response) => response.map_into_boxed_body(),
                    // What actix's dispatcher does with a service error.
                    Err(error) => {
                        let response = error.error_response();
                        ServiceResponse::new(test::TestRequest::default().to_http_request(), response)
                    }
                };
                into_test_response(response).await
            })
        };
        Self { send: Rc::new(send) }
    }

    async fn send(&self, request: TestRequest) -> TestResponse {
        let method = Method::from_bytes(request.method.as_bytes()).expect("method");
        let mut actix_request = test::TestRequest::default().method(method).uri(&request.path);
        for (name, value) in request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            actix_request = actix_request.append_header((name, HeaderValue::from_bytes(&value).expect("header value")));
        }
        if let Some(peer) = request.peer {
            actix_request = actix_request.peer_addr(SocketAddr::new(peer, 40_000));
        }
        (self.send)(actix_request).await
    }
}

keysmith_tests::http_conformance_tests!(ActixHarness, actix_web::test);
