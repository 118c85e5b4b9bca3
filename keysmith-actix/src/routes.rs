//! The route template of a passed request without `match_pattern`'s
//! allocation, for routes whose template is their path.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use actix_web::HttpRequest;
use actix_web::http::Method;

/// Paths this application serves from a route without parameters (its
/// template is the path itself), each with the methods it was seen with.
/// `HttpRequest::match_pattern` builds a new `String` on every call; for
/// these paths the template is read from the request instead. Routes with
/// parameters (`/users/{id}`) are never kept, so the table holds at most one
/// entry per static route and method of the application, and no path a
/// client made up; [`MAX_PATHS`](Self::MAX_PATHS) bounds it all the same.
///
/// One per middleware instance (one per worker and application), so its
/// paths are those of one resource map.
#[derive(Debug, Default)]
pub(crate) struct StaticRoutes {
    /// Path → bit set of [`method_bit`]s.
    paths: RefCell<HashMap<Rc<str>, u16, foldhash::fast::RandomState>>,
    /// The path last answered from `paths`, with its methods: a worker
    /// serving one route mostly compares the path with it, not hashing it.
    last: RefCell<Option<(Rc<str>, u16)>>,
}

impl StaticRoutes {
    /// The most paths kept.
    const MAX_PATHS: usize = 1024;

    /// The template of the resource `request` was routed to, as
    /// `match_pattern` says it (`None` when it matched none).
    ///
    /// A path is answered from the table only when the request was routed
    /// to a resource that captured nothing (a route with parameters, chosen
    /// over a static one by a guard, captures its parameters) with a method
    /// that route was seen with, so a guard that sends the same path
    /// elsewhere is still asked of actix.
    pub(crate) fn template<'r>(&self, request: &'r HttpRequest) -> Option<Cow<'r, str>> {
        let path = request.path();
        let method = method_bit(request.method());
        if method != 0 && request.match_info().segment_count() == 0 && self.kept(path, method) {
            return Some(Cow::Borrowed(path));
        }
        let template = request.match_pattern()?;
        if method != 0 && template == path {
            let mut paths = self.paths.borrow_mut();
            let room = paths.len() < Self::MAX_PATHS;
            let kept = match paths.get_key_value(path) {
                Some((kept, _)) => Some(Rc::clone(kept)),
                None if room => Some(Rc::from(path)),
                None => None,
            };
            if let Some(kept) = kept {
                let methods = paths.entry(Rc::clone(&kept)).or_default();
                *methods |= method;
                *self.last.borrow_mut() = Some((kept, *methods));
            }
        }
        Some(Cow::Owned(template))
    }

    /// Whether `path` is kept with `method`: the last path answered first,
    /// then the table (whose answer becomes the last).
    fn kept(&self, path: &str, method: u16) -> bool {
        if let Some((last, methods)) = &*self.last.borrow()
            && **last == *path
        {
            return methods & method != 0;
        }
        let paths = self.paths.borrow();
        let Some((kept, &methods)) = paths.get_key_value(path) else { return false };
        *self.last.borrow_mut() = Some((Rc::clone(kept), methods));
        methods & method != 0
    }
}

/// A bit per standard method; 0 for any other (never kept).
fn method_bit(method: &Method) -> u16 {
    const METHODS: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    METHODS.iter().position(|m| m == method).map_or(0, |index| 1 << index)
}

#[cfg(test)]
mod tests {
    use actix_web::dev::Service;
    use actix_web::{App, HttpResponse, guard, test, web};

    use super::*;

    /// The templates `StaticRoutes` gives for `requests`, in order, with
    /// what `match_pattern` says of each beside it.
    async fn templates(requests: &[(Method, &str)]) -> Vec<(Option<String>, Option<String>)> {
        let routes = std::rc::Rc::new(StaticRoutes::default());
        let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
        let app = {
            let (routes, seen) = (routes.clone(), seen.clone());
            test::init_service(
                App::new()
                    .wrap_fn(move |request, service| {
                        let (routes, seen) = (routes.clone(), seen.clone());
                        let future = service.call(request);
                        async move {
                            let response = future.await?;
                            let request = response.request();
                            let template = routes.template(request).map(Cow::into_owned);
                            seen.borrow_mut().push((template, request.match_pattern()));
                            Ok(response)
                        }
                    })
                    .route("/a", web::get().to(HttpResponse::Ok))
                    .route("/users/{id}", web::get().to(HttpResponse::Ok))
                    .service(web::resource("/b").guard(guard::Header("x-static", "1")).to(HttpResponse::Ok))
                    .route("/{name}", web::to(HttpResponse::Ok)),
            )
            .await
        };
        for (method, path) in requests {
            let mut request = test::TestRequest::default().method(method.clone()).uri(path);
            if path.ends_with("#static") {
                request = request.uri(path.trim_end_matches("#static")).insert_header(("x-static", "1"));
            }
            test::call_service(&app, request.to_request()).await;
        }
        seen.take()
    }

    #[actix_web::test]
    async fn a_template_is_what_match_pattern_says_whether_kept_or_not() {
        let requests = [
            (Method::GET, "/a"),
            (Method::GET, "/a"),
            (Method::POST, "/a"),
            (Method::GET, "/users/7"),
            (Method::GET, "/users/8"),
            (Method::GET, "/b#static"),
            (Method::GET, "/b#static"),
            (Method::GET, "/b"),
            (Method::GET, "/nowhere/at/all"),
            // Back to a path kept earlier, then methods its route does not take.
            (Method::GET, "/a"),
            (Method::POST, "/a"),
            (Method::PUT, "/a"),
        ];
        let seen = templates(&requests).await;
        for ((template, pattern), (method, path)) in seen.iter().zip(&requests) {
            assert_eq!(template, pattern, "{method} {path}");
        }
        let templates: Vec<_> = seen.into_iter().map(|(template, _)| template).collect();
        let expected = ["/a", "/a", "/{name}", "/users/{id}", "/users/{id}", "/b", "/b", "/{name}"];
        assert_eq!(templates[..8], expected.map(|t| Some(t.to_owned())));
        assert_eq!(templates[8], None);
        assert_eq!(templates[9..], ["/a", "/{name}", "/{name}"].map(|t| Some(t.to_owned())));
    }

    #[actix_web::test]
    async fn only_routes_without_parameters_are_kept() {
        let routes = StaticRoutes::default();
        let app = test::init_service(
            App::new()
                .route("/a", web::get().to(HttpResponse::Ok))
                .route("/users/{id}", web::get().to(HttpResponse::Ok)),
        )
        .await;
        for path in ["/a", "/users/1", "/users/2", "/a"] {
            let response = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            routes.template(response.request());
        }
        let kept: Vec<String> = routes.paths.borrow().keys().map(|path| String::from(&**path)).collect();
        assert_eq!(kept, ["/a"]);
    }
}
