//! The dashboard's files and the headers that confine them to their origin.
#![cfg(feature = "ui")]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use keysmith_admin::UiConfig;
use tower::ServiceExt;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn app() -> Router {
    Router::new().nest_service("/keysmith/ui", keysmith_admin::ui_router())
}

async fn get(app: &Router, path: &str) -> Response<Body> {
    app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
}

async fn text(response: Response<Body>) -> String {
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn every_file_is_served_with_its_type_and_the_security_headers() {
    let app = app();
    for (path, content_type) in [
        ("/keysmith/ui/", "text/html; charset=utf-8"),
        ("/keysmith/ui/app.js", "text/javascript; charset=utf-8"),
        ("/keysmith/ui/style.css", "text/css; charset=utf-8"),
        ("/keysmith/ui/favicon.svg", "image/svg+xml"),
        ("/keysmith/ui/missing.js", "text/plain; charset=utf-8"),
    ] {
        let response = get(&app, path).await;
        let expected = if path.contains("missing") { StatusCode::NOT_FOUND } else { StatusCode::OK };
        assert_eq!(response.status(), expected, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
    }
}

#[tokio::test]
async fn the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() {
    let html = text(get(&app(), "/keysmith/ui/").await).await;
    assert!(html.contains(r#"<script src="app.js" defer></script>"#), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "one script, from a file: {html}");
    for handler in ["onclick=", "onload=", "onerror=", "onsubmit=", "javascript:"] {
        assert!(!html.contains(handler), "inline {handler} in {html}");
    }
    for foreign in ["http://", "https://", "//cdn"] {
        assert!(!html.contains(foreign), "{foreign} in {html}");
    }
    let js = text(get(&app(), "/keysmith/ui/app.js").await).await;
    // API data reaches the page as text only.
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    assert!(!js.contains("localStorage") && !js.contains("document.cookie"), "the admin key stays in sessionStorage");
}

#[tokio::test]
async fn the_page_finds_the_api_beside_it_unless_configured() {
    let html = text(get(&app(), "/keysmith/ui/").await).await;
    assert!(html.contains(r#"<meta name="keysmith-api-base" content="../v1">"#), "{html}");

    let app: Router = Router::new().nest_service("/admin", UiConfig::new().with_api_base("/admin/api").into_router());
    let html = text(get(&app, "/admin/").await).await;
    assert!(html.contains(r#"<meta name="keysmith-api-base" content="/admin/api">"#), "{html}");
}

#[test]
#[should_panic(expected = "a path on the same origin")]
fn an_api_base_on_another_origin_is_refused() {
    let _ = UiConfig::new().with_api_base("https://evil.example/keysmith/v1");
}

#[test]
#[should_panic(expected = "a path on the same origin")]
fn an_api_base_that_could_break_out_of_the_attribute_is_refused() {
    let _ = UiConfig::new().with_api_base(r#"/v1"><script>"#);
}

#[tokio::test]
async fn the_mount_point_without_its_slash_redirects_to_it() {
    let response = get(&app(), "/keysmith/ui").await;
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/keysmith/ui/");
    assert_eq!(response.headers()["content-security-policy"], CSP);
}
