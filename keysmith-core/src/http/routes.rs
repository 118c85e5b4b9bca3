//! The endpoint a usage record names: the route template the request
//! matched, shared from a bounded table of the templates seen, `unmatched`
//! when no route matched, or (opted in) the raw path.

use dashmap::DashSet;

use crate::usage::SharedStr;

/// The endpoint of a usage record whose request matched no route (or whose
/// route the framework could not tell).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// What a usage record names as its endpoint.
///
/// By default the route template the request matched (`/users/{id}`, from
/// axum's `MatchedPath` or actix-web's `match_pattern`): records never hold
/// the ids, e-mail addresses or tokens that paths carry, and usage
/// analytics see one endpoint per route, however many paths it serves. A
/// request that matched no route is [`UNMATCHED_ROUTE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageEndpoint {
    /// The matched route template, [`UNMATCHED_ROUTE`] when there is none.
    #[default]
    Route,
    /// The path as the client sent it (`/users/alice@example.com`), query
    /// string excluded.
    ///
    /// **Privacy:** a path often carries personal data (user ids, e-mail
    /// addresses) or secrets (reset tokens); with this mode every one of
    /// them is stored in the usage table, kept for the usage retention and
    /// shown by the admin API, the dashboard and the CLI. The number of
    /// distinct endpoints is then as large as the clients make it. Prefer
    /// [`Route`](Self::Route) unless every path is safe to keep.
    RawPath,
}

/// Route templates, each kept once and shared by every record that names
/// it. Templates come from the application's routes, so there are few; the
/// table holds at most [`MAX_ROUTES`](Self::MAX_ROUTES), and a template
/// beyond that is copied into its record instead.
#[derive(Debug, Default)]
pub(crate) struct RouteNames {
    names: DashSet<SharedStr, foldhash::fast::RandomState>,
}

impl RouteNames {
    /// The most templates kept.
    pub(crate) const MAX_ROUTES: usize = 1024;

    /// `route` as a record's endpoint: the shared copy, made on first use.
    pub(crate) fn name(&self, route: &str) -> SharedStr {
        if let Some(name) = self.names.get(route) {
            return name.key().clone();
        }
        let name = SharedStr::copied(route);
        // `len` visits every shard: only here, on a template's first use.
        if self.names.len() < Self::MAX_ROUTES {
            self.names.insert(name.clone());
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_copied_once_and_then_shared() {
        let names = RouteNames::default();
        let first = names.name("/users/{id}");
        let second = names.name("/users/{id}");
        assert_eq!(second, "/users/{id}");
        assert!(std::ptr::eq(first.as_str(), second.as_str()), "the second record shares the first's text");
    }

    #[test]
    fn the_table_stops_growing_at_its_bound() {
        let names = RouteNames::default();
        for n in 0..RouteNames::MAX_ROUTES + 10 {
            assert_eq!(names.name(&format!("/r{n}")), format!("/r{n}"));
        }
        assert_eq!(names.names.len(), RouteNames::MAX_ROUTES);
    }
}
