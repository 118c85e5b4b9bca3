//! The dashboard: a few static files embedded in the binary, served with
//! headers that confine the page to its own origin. The page talks only to
//! the REST management API, with the admin key the operator signs in with.

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The policy every dashboard response carries: scripts, styles and
/// requests from this origin only, no inline script, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Where `index.html` names the API base, filled in when the router is built.
const API_BASE_PLACEHOLDER: &str = "{{api_base}}";

/// The API base unless configured: the admin API mounted beside the
/// dashboard (`/keysmith/v1` for a dashboard at `/keysmith/ui/`).
pub const DEFAULT_API_BASE: &str = "../v1";

/// Configures the dashboard router. The only setting is where the page
/// finds the REST management API.
///
/// ```
/// use axum::Router;
/// use keysmith_admin::UiConfig;
///
/// // The admin API at /admin/api, the dashboard at /admin/.
/// let app: Router = Router::new().nest_service("/admin", UiConfig::new().with_api_base("/admin/api").into_router());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct UiConfig {
    api_base: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl UiConfig {
    /// The dashboard with the API at [`DEFAULT_API_BASE`].
    pub fn new() -> Self {
        Self { api_base: DEFAULT_API_BASE.to_owned() }
    }

    /// The path of the admin API on the dashboard's origin: absolute
    /// (`/admin/api`) or relative to the dashboard's URL (`../v1`). Another
    /// origin is not possible: the page's `Content-Security-Policy` allows
    /// requests to its own origin only.
    ///
    /// # Panics
    /// When `path` is empty, names a scheme or a host (`https://…`, `//…`),
    /// or holds characters other than letters, digits and `/ . - _ ~ %`.
    pub fn with_api_base(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/.-_~%".contains(c);
        assert!(
            !path.is_empty() && !path.starts_with("//") && path.chars().all(allowed),
            "the dashboard's API base must be a path on the same origin (like `/keysmith/v1` or `../v1`), not {path:?}"
        );
        self.api_base = path;
        self
    }

    /// The router, to mount with `Router::nest_service` (which, unlike
    /// `nest`, routes the mount point with a trailing slash to it). A request
    /// for the mount point without the slash is redirected to it, so the
    /// page's relative links resolve.
    pub fn into_router(self) -> Router {
        // `with_api_base` admits no character that HTML would read.
        let index: Arc<str> = INDEX_HTML.replace(API_BASE_PLACEHOLDER, &self.api_base).into();
        Router::new()
            .route("/", get(index_page))
            .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
            .route("/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
            .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
            .fallback(not_found)
            .layer(axum::middleware::map_response(secure))
            .with_state(index)
    }
}

/// The dashboard with the API at [`DEFAULT_API_BASE`]; mount it with
/// `.nest_service("/keysmith/ui", keysmith_admin::ui_router())` beside
/// `.nest("/keysmith/v1", keysmith_admin::router(engine))`, and open
/// `/keysmith/ui/`.
///
/// The files are part of the binary (nothing is fetched from another
/// origin, so the page works offline) and every response carries
/// `Content-Security-Policy`, `X-Content-Type-Options: nosniff` and
/// `Referrer-Policy: no-referrer`. The page asks for no key of its own: the
/// operator signs in with an admin key, which stays in the tab's
/// `sessionStorage`, and every action is a call to the admin API.
pub fn ui_router() -> Router {
    UiConfig::new().into_router()
}

/// The page, at the mount point with its trailing slash (the relative links
/// of the page need it); without the slash, a redirect to it.
async fn index_page(OriginalUri(uri): OriginalUri, State(index): State<Arc<str>>) -> Response {
    let path = uri.path();
    if !path.ends_with('/') {
        return Redirect::permanent(&format!("{path}/")).into_response();
    }
    asset("text/html; charset=utf-8", index.to_string())
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found").into_response()
}

/// Adds the security headers to every response of the dashboard.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No versioned file names: the browser revalidates, so an upgrade shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use keysmith_core::{Environment, KeyState, RotationReason};

    use super::APP_JS;

    /// The names in `const NAME = ['a', 'b'];` of the dashboard's script.
    fn js_list(name: &str) -> BTreeSet<&'static str> {
        let start = APP_JS.find(&format!("const {name} = [")).unwrap_or_else(|| panic!("app.js has no {name}"));
        let list = &APP_JS[start..];
        let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
        list.split(',').map(|name| name.trim().trim_matches('\'')).collect()
    }

    #[test]
    fn dashboard_offers_exactly_the_names_of_cores_enums() {
        assert_eq!(js_list("STATES"), KeyState::ALL.map(KeyState::as_str).into());
        assert_eq!(js_list("ENVIRONMENTS"), Environment::ALL.map(Environment::as_str).into());
        assert_eq!(js_list("REASONS"), RotationReason::ALL.map(RotationReason::as_str).into());
    }
}
