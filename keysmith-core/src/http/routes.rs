//! The endpoint a usage record names: the route template the request
//! matched (numbered in a bounded table of the templates seen, so a record
//! copies no text), `unmatched` when no route matched, or (opted in) the
//! raw path.

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
