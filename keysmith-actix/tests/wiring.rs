//! Wiring of the actix adapter beyond the shared conformance cases: order
//! with other middleware, `web::scope` and resources with `RequireScopes`,
//! `web::Data<Engine>` in handlers, the middleware missing, custom
//! responders.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::error::ErrorConflict;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::middleware::{DefaultHeaders, Logger};
use actix_web::{App, HttpMessage, HttpResponse, test, web};
use keysmith_actix::{ApiKey, ApiKeyMiddleware, RequireScopes, default_refusal_response};
use keysmith_core::store::{Page, TimeRange};
use keysmith_core::{Engine, KeyId, ManualClock, MemoryStore, NewKey, PolicySpec};

struct Setup {
    engine: Engine,
    reader: String,
    reader_id: KeyId,
    admin: String,
}

/// A memory engine on a manual clock with a `read` key (3 requests per
/// minute) and an `admin` key.
async fn setup() -> Setup {
    let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH);
    let engine = Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock).build().unwrap();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("p").with_rate_limit(3, Duration::from_secs(60))).await.unwrap();
    let reader = acme.create_key(NewKey::new("reader").with_scopes(["read"]).with_policy(policy.id)).await.unwrap();
    let admin = acme.create_key(NewKey::new("admin").with_scopes(["read", "admin"])).await.unwrap();
    Setup {
        engine,
        reader: reader.raw.expose().to_owned(),
        reader_id: reader.key.id,
        admin: admin.raw.expose().to_owned(),
    }
}

fn request(path: &str, key: Option<&str>) -> test::TestRequest {
    let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let request = test::TestRequest::get().uri(path).peer_addr(peer);
    match key {
        Some(key) => request.insert_header(("authorization", format!("Bearer {key}"))),
        None => request,
    }
}

async fn send<S, R, B>(app: &S, request: R) -> (StatusCode, HeaderMap, serde_json::Value)
where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let response = test::call_service(app, request).await;
    let (status, headers) = (response.status(), response.headers().clone());
    let body = test::read_body(response).await;
    (status, headers, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

fn code(body: &serde_json::Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[actix_web::test]
async fn extractor_and_require_scopes_without_the_middleware_are_500_naming_it() {
    let app = test::init_service(
        App::new()
            .route("/required", web::get().to(|_: ApiKey| async { "unreachable" }))
            .service(
                web::resource("/scoped")
                    .wrap(RequireScopes::all(["read"]))
                    .route(web::get().to(|| async { "unreachable" })),
            )
            .route(
                "/optional",
                web::get().to(|key: Option<ApiKey>| async move { if key.is_some() { "key" } else { "none" } }),
            ),
    )
    .await;
    for path in ["/required", "/scoped"] {
        let (status, headers, body) = send(&app, request(path, None).to_request()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(header(&headers, "content-type"), "application/json", "{path}");
        assert_eq!(code(&body), Some("internal_error"), "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("keysmith_actix::ApiKeyMiddleware"), "{path}: {message}");
    }
    // actix-web turns any extractor error into `None` for `Option<T>`.
    let response = test::call_service(&app, request("/optional", None).to_request()).await;
    assert_eq!(test::read_body(response).await, "none");
}

#[actix_web::test]
async fn default_headers_outside_reach_refusals_and_inside_only_passed_requests() {
    let setup = setup().await;
    let app = test::init_service(
        App::new()
            .route("/me", web::get().to(|key: ApiKey| async move { key.name().to_owned() }))
            .wrap(DefaultHeaders::new().add(("x-inner", "1")))
            .wrap(ApiKeyMiddleware::new(setup.engine.clone()))
            .wrap(DefaultHeaders::new().add(("x-outer", "1"))),
    )
    .await;

    let (status, headers, body) = send(&app, request("/me", None).to_request()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, Some("missing_key")));
    assert!(headers.contains_key("x-outer"), "outer middleware sees the refusal");
    assert!(!headers.contains_key("x-inner"), "inner middleware never runs for a refused request");
    assert_eq!(headers.get_all("content-type").count(), 1);

    let response = test::call_service(&app, request("/me", Some(&setup.reader)).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-outer") && response.headers().contains_key("x-inner"));
    assert!(header(response.headers(), "ratelimit-policy").starts_with(r#""default";q=3;"#));
    assert_eq!(test::read_body(response).await, "reader");
}

#[actix_web::test]
async fn outer_middleware_sees_refusals_as_errors_and_inner_middleware_sees_the_key() {
    let setup = setup().await;
    // (status, the error the response carries) as seen outside.
    type Seen = Rc<RefCell<Vec<(u16, Option<String>)>>>;
    let outer_saw: Seen = Rc::default();
    let inner_saw: Rc<RefCell<Vec<Option<String>>>> = Rc::default();
    let (outer, inner) = (Rc::clone(&outer_saw), Rc::clone(&inner_saw));
    let app = test::init_service(
        App::new()
            .route("/me", web::get().to(HttpResponse::Ok))
            .wrap_fn(move |request, service| {
                let key = ApiKey::from_extensions(&request.extensions()).map(|key| key.name().to_owned());
                inner.borrow_mut().push(key);
                service.call(request)
            })
            .wrap(ApiKeyMiddleware::new(setup.engine.clone()))
            .wrap_fn(move |request, service| {
                let outer = Rc::clone(&outer);
                let future = service.call(request);
                async move {
                    let response = future.await?;
                    let error = response.response().error().map(ToString::to_string);
                    outer.borrow_mut().push((response.status().as_u16(), error));
                    Ok(response)
                }
            })
            .wrap(Logger::default()),
    )
    .await;

    assert_eq!(send(&app, request("/me", Some("sk_live_short")).to_request()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&app, request("/me", Some(&setup.admin)).to_request()).await.0, StatusCode::OK);

    let outer = outer_saw.borrow();
    assert_eq!(outer.len(), 2);
    assert_eq!(outer[0].0, 401);
    assert!(outer[0].1.as_deref().is_some_and(|e| e.starts_with("malformed_key: ")), "{:?}", outer[0]);
    assert_eq!(outer[1], (200, None));
    assert_eq!(*inner_saw.borrow(), [Some("admin".to_owned())]);
}

#[actix_web::test]
async fn require_scopes_on_a_web_scope_guards_every_route_inside() {
    let setup = setup().await;
    let app = test::init_service(
        App::new().route("/health", web::get().to(HttpResponse::Ok)).service(
            web::scope("/api")
                .route("/me", web::get().to(|key: ApiKey| async move { key.name().to_owned() }))
                .service(
                    web::scope("/admin")
                        .wrap(RequireScopes::any(["admin", "keysmith:admin"]))
                        .route("/stats", web::get().to(HttpResponse::Ok))
                        .route("/keys", web::get().to(HttpResponse::Ok))
                        .service(
                            web::resource("/danger")
                                .wrap(RequireScopes::all(["admin", "write"]))
                                .route(web::get().to(HttpResponse::Ok)),
                        ),
                )
                .wrap(ApiKeyMiddleware::new(setup.engine.clone()).with_realm("scoped")),
        ),
    )
    .await;

    // Outside the scope with the middleware, no key is needed.
    assert_eq!(send(&app, request("/health", None).to_request()).await.0, StatusCode::OK);
    assert_eq!(send(&app, request("/api/me", None).to_request()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&app, request("/api/me", Some(&setup.reader)).to_request()).await.0, StatusCode::OK);

    for path in ["/api/admin/stats", "/api/admin/keys"] {
        let (status, headers, body) = send(&app, request(path, Some(&setup.reader)).to_request()).await;
        assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, Some("insufficient_scope")), "{path}");
        assert_eq!(
            header(&headers, "www-authenticate"),
            r#"Bearer realm="scoped", error="insufficient_scope", scope="admin keysmith:admin""#
        );
        for name in ["ratelimit", "ratelimit-policy"] {
            assert_eq!(header(&headers, name), "", "a refusal by scope spends nothing, so it says nothing of the rate");
        }
        assert_eq!(send(&app, request(path, Some(&setup.admin)).to_request()).await.0, StatusCode::OK, "{path}");
        assert_eq!(send(&app, request(path, None).to_request()).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, headers, _) = send(&app, request("/api/admin/danger", Some(&setup.admin)).to_request()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(header(&headers, "www-authenticate").ends_with(r#"scope="write""#));
}

#[actix_web::test]
async fn handlers_use_web_data_engine_next_to_the_key_and_usage_is_recorded_after_responses() {
    let setup = setup().await;
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(setup.engine.clone()))
            .route("/me", web::get().to(HttpResponse::Ok))
            .route(
                "/my-usage",
                web::get().to(|engine: web::Data<Engine>, key: ApiKey| async move {
                    engine.flush_usage().await;
                    let tenant = engine.tenant(&key.tenant().app_id, &key.tenant().tenant_id);
                    let stored = tenant.get_key(key.id()).await.map_err(actix_web::error::ErrorInternalServerError)?;
                    let records = tenant
                        .list_usage(key.id(), TimeRange::default(), Page::default())
                        .await
                        .map_err(actix_web::error::ErrorInternalServerError)?;
                    let paths: Vec<String> =
                        records.into_iter().map(|r| format!("{} {}", r.status, r.endpoint)).collect();
                    Ok::<_, actix_web::Error>(HttpResponse::Ok().json(serde_json::json!({
                        "name": stored.name,
                        "usage": paths,
                    })))
                }),
            )
            .wrap(ApiKeyMiddleware::new(setup.engine.clone())),
    )
    .await;

    assert_eq!(send(&app, request("/me", Some(&setup.reader)).to_request()).await.0, StatusCode::OK);
    let (status, _, body) = send(&app, request("/my-usage", Some(&setup.reader)).to_request()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "reader");
    // The running request is recorded only once its response exists.
    assert_eq!(body["usage"], serde_json::json!(["200 /me"]));
    setup.engine.flush_usage().await;
    let records = setup
        .engine
        .tenant("app", "acme")
        .list_usage(setup.reader_id, TimeRange::default(), Page::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
}

#[actix_web::test]
async fn errors_of_inner_services_are_recorded_with_their_status() {
    let setup = setup().await;
    let app = test::init_service(
        App::new()
            .route("/conflict", web::get().to(|| async { Err::<HttpResponse, _>(ErrorConflict("taken")) }))
            .route("/middleware-error", web::get().to(HttpResponse::Ok))
            .wrap_fn(|request, service| {
                let fail = request.path() == "/middleware-error";
                let future = service.call(request);
                async move { if fail { Err(ErrorConflict("refused by an inner middleware")) } else { future.await } }
            })
            .wrap(ApiKeyMiddleware::new(setup.engine.clone())),
    )
    .await;

    let response = test::call_service(&app, request("/conflict", Some(&setup.reader)).to_request()).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(header(response.headers(), "ratelimit").starts_with(r#""default";r=2;"#));
    let error = test::try_call_service(&app, request("/middleware-error", Some(&setup.reader)).to_request())
        .await
        .expect_err("the inner middleware's error passes through");
    assert_eq!(error.as_response_error().status_code(), StatusCode::CONFLICT);

    setup.engine.flush_usage().await;
    let records = setup
        .engine
        .tenant("app", "acme")
        .list_usage(setup.reader_id, TimeRange::default(), Page::default())
        .await
        .unwrap();
    let mut seen: Vec<(u16, &str)> = records.iter().map(|r| (r.status, r.endpoint.as_str())).collect();
    seen.sort_unstable();
    // An error carries no request, so no route: `unmatched`.
    assert_eq!(seen, [(409, "/conflict"), (409, keysmith_core::http::UNMATCHED_ROUTE)]);
}

#[actix_web::test]
async fn records_name_the_whole_pattern_of_nested_scopes_around_a_scope_or_a_resource() {
    let setup = setup().await;
    let users = || web::resource("/users/{id}").route(web::get().to(HttpResponse::Ok));
    let keysmith = || ApiKeyMiddleware::new(setup.engine.clone());
    // Around a scope, and around a resource (the conformance suite covers
    // around the app).
    let app = test::init_service(
        App::new()
            .service(web::scope("/v1").service(users()).wrap(keysmith()))
            .service(web::scope("/v2").service(users().wrap(keysmith()))),
    )
    .await;
    for path in ["/v1/users/7", "/v1/users/alice@example.com", "/v2/users/8"] {
        assert_eq!(send(&app, request(path, Some(&setup.admin)).to_request()).await.0, StatusCode::OK, "{path}");
    }
    setup.engine.flush_usage().await;
    let admin = setup.engine.tenant("app", "acme").list_keys(&Default::default()).await.unwrap();
    let admin_id = admin.iter().find(|key| key.name == "admin").unwrap().id;
    let records =
        setup.engine.tenant("app", "acme").list_usage(admin_id, TimeRange::default(), Page::default()).await.unwrap();
    let mut seen: Vec<&str> = records.iter().map(|r| r.endpoint.as_str()).collect();
    seen.sort_unstable();
    assert_eq!(seen, ["/v1/users/{id}", "/v1/users/{id}", "/v2/users/{id}"]);
}

#[actix_web::test]
async fn custom_responder_renders_every_refusal() {
    let setup = setup().await;
    let keysmith = ApiKeyMiddleware::new(setup.engine.clone()).optional().with_responder(|refusal| {
        let mut response = default_refusal_response(refusal);
        response.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/problem+json"),
        );
        response.set_body(format!("{{\"problem\":\"{}\"}}", refusal.code)).map_into_boxed_body()
    });
    let app = test::init_service(
        App::new()
            .service(web::resource("/admin").wrap(RequireScopes::all(["admin"])).route(web::get().to(HttpResponse::Ok)))
            .route("/me", web::get().to(|key: ApiKey| async move { key.name().to_owned() }))
            .wrap(keysmith),
    )
    .await;

    // From the middleware itself.
    let (status, headers, body) = send(&app, request("/me", Some("sk_live_short")).to_request()).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::UNAUTHORIZED, Some("malformed_key")));
    assert_eq!(header(&headers, "content-type"), "application/problem+json");
    assert!(headers.contains_key("www-authenticate"), "the default headers are kept");
    // From RequireScopes.
    let (status, _, body) = send(&app, request("/admin", Some(&setup.reader)).to_request()).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::FORBIDDEN, Some("insufficient_scope")));
    // From the extractor, for a keyless request in optional mode.
    let (status, _, body) = send(&app, request("/me", None).to_request()).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_key")));
}

#[actix_web::test]
async fn preflights_need_a_key_by_default_and_passthrough_is_opt_in() {
    let setup = setup().await;
    let preflight = || {
        test::TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/x")
            .insert_header(("access-control-request-method", "GET"))
            .to_request()
    };
    // A resource whose handler answers every method, OPTIONS included.
    let route = || web::resource("/x").to(|| async { "protected data" });

    let closed =
        test::init_service(App::new().service(route()).wrap(ApiKeyMiddleware::new(setup.engine.clone()))).await;
    let (status, _, body) = send(&closed, preflight()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, Some("missing_key")));

    let open = test::init_service(
        App::new().service(route()).wrap(ApiKeyMiddleware::new(setup.engine.clone()).with_preflight_passthrough(true)),
    )
    .await;
    assert_eq!(send(&open, preflight()).await.0, StatusCode::OK);
}

#[actix_web::test]
async fn actix_cors_outside_answers_preflights_and_handlers_stay_behind_the_key() {
    let setup = setup().await;
    let cors = || {
        actix_cors::Cors::default()
            .allowed_origin("https://app.example.com")
            .allowed_methods(["GET", "POST"])
            .allowed_header(actix_web::http::header::AUTHORIZATION)
    };
    let app = test::init_service(
        App::new()
            .service(web::resource("/data").to(|| async { "protected data" }))
            .wrap(ApiKeyMiddleware::new(setup.engine.clone()))
            .wrap(cors()),
    )
    .await;
    let options = || {
        test::TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/data")
            .insert_header(("origin", "https://app.example.com"))
    };

    let preflight = options()
        .insert_header(("access-control-request-method", "POST"))
        .insert_header(("access-control-request-headers", "authorization"))
        .to_request();
    let response = test::call_service(&app, preflight).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "access-control-allow-origin"), "https://app.example.com");
    assert!(test::read_body(response).await.is_empty(), "answered by actix-cors, not the handler");

    // A plain OPTIONS reaches the handler only with a key.
    let (status, _, body) = send(&app, options().to_request()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, Some("missing_key")));
    let with_key = options().insert_header(("authorization", format!("Bearer {}", setup.admin))).to_request();
    let response = test::call_service(&app, with_key).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&test::read_body(response).await[..], b"protected data");
}

/// Sends `GET path` with `key` over a real connection; the status code.
fn http_get(addr: SocketAddr, path: &str, key: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).and_then(|status| status.parse().ok()).unwrap_or_default()
}

#[actix_web::test]
async fn usage_queued_by_workers_is_written_after_the_server_stops() {
    let setup = setup().await;
    let keysmith = ApiKeyMiddleware::new(setup.engine.clone());
    let server = actix_web::HttpServer::new(move || {
        App::new().route("/me", web::get().to(HttpResponse::Ok)).wrap(keysmith.clone())
    })
    .workers(2)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);

    let key = setup.admin.clone();
    let statuses: Vec<u16> =
        actix_web::rt::task::spawn_blocking(move || (0..5).map(|_| http_get(addr, "/me", &key)).collect())
            .await
            .unwrap();
    assert_eq!(statuses, vec![200; 5]);
    // The workers' runtimes stop here; the usage they queued must survive.
    handle.stop(true).await;
    running.await.unwrap().unwrap();
    setup.engine.shutdown().await;

    assert_eq!(setup.engine.usage_stats().written, 5, "{:?}", setup.engine.usage_stats());
}
