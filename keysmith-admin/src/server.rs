//! `Server`: serves a router over HTTP/1.1 with what a listener open to
//! anyone needs, a header read timeout and a graceful-shutdown deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::task::JoinSet;

/// How long a client has to send a whole request head unless configured
/// otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight get to finish after the shutdown signal
/// unless configured otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves an axum [`Router`] over HTTP/1.1 until a shutdown signal, with
/// two limits `axum::serve` does not have:
///
/// - **Header timeout**: a client that has not sent a whole request head
///   within it is disconnected (without an answer), so a client that sends
///   half a head cannot hold a connection, or the shutdown, for as long as it
///   likes. An idle keep-alive connection is waiting for its next head, so it
///   is closed after the same time.
/// - **Shutdown deadline**: when the signal resolves the server stops
///   accepting, closes idle connections at once and lets requests in flight
///   finish; whatever is still open when the shutdown timeout has passed is
///   dropped. [`serve`](Self::serve) then returns, so the caller can shut
///   the engine down ([`Engine::shutdown`](keysmith_core::Engine::shutdown)),
///   which writes the queued usage records.
///
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`, which is
/// where `keysmith_tower`'s layer reads the client address from.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use axum::Router;
/// use keysmith_admin::Server;
/// use keysmith_core::{Engine, MemoryStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let app = Router::new().nest("/keysmith/v1", keysmith_admin::router(engine.clone()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let stopped = Server::new()
///     .with_header_timeout(Duration::from_secs(5))
///     .with_shutdown_timeout(Duration::from_secs(20))
///     .serve(listener, app, shutdown_signal())
///     .await;
/// eprintln!("{} connections dropped at the deadline", stopped.dropped_connections);
/// engine.shutdown().await; // writes the queued usage records
/// # Ok(())
/// # }
/// # async fn shutdown_signal() {} // Ctrl-C, SIGTERM…
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Server {
    header_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// The shortest header timeout: a shorter one would cut off clients on
    /// any slow network.
    pub const MIN_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
    /// The longest header or shutdown timeout.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

    /// A server with [`DEFAULT_HEADER_TIMEOUT`] and
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub const fn new() -> Self {
        Self { header_timeout: DEFAULT_HEADER_TIMEOUT, shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT }
    }

    /// How long a client has to send a whole request head (and how long an
    /// idle keep-alive connection is kept). Kept within
    /// [`MIN_HEADER_TIMEOUT`](Self::MIN_HEADER_TIMEOUT) and
    /// [`MAX_TIMEOUT`](Self::MAX_TIMEOUT); check user input against them
    /// to refuse it with a message instead.
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout.clamp(Self::MIN_HEADER_TIMEOUT, Self::MAX_TIMEOUT);
        self
    }

    /// How long requests in flight get after the shutdown signal before
    /// their connections are dropped; zero drops them at once. At most
    /// [`MAX_TIMEOUT`](Self::MAX_TIMEOUT).
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout.min(Self::MAX_TIMEOUT);
        self
    }

    /// The header timeout.
    #[must_use]
    pub const fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The shutdown timeout.
    #[must_use]
    pub const fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// Serves `router` on `listener` until `signal` resolves, then shuts
    /// down within the shutdown timeout (see [`Server`]). Accept errors are
    /// retried as `axum::serve` does, so serving itself never fails.
    pub async fn serve<L, F>(self, mut listener: L, router: Router, signal: F) -> Stopped
    where
        L: Listener<Addr = SocketAddr>,
        F: Future<Output = ()>,
    {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let graceful = GracefulShutdown::new();
        // Every connection's task, so that the deadline can drop them.
        let mut connections = JoinSet::new();
        let mut signal = pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                (io, peer) = listener.accept() => {
                    let service = PeerService { router: router.clone(), peer };
                    let connection = http.serve_connection(TokioIo::new(io), service);
                    connections.spawn(graceful.watch(connection));
                }
                // Reaps finished connections as it goes.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);

        tokio::select! {
            () = graceful.shutdown() => Stopped { dropped_connections: 0 },
            () = tokio::time::sleep(self.shutdown_timeout) => {
                connections.abort_all();
                let mut dropped_connections = 0;
                while let Some(ended) = connections.join_next().await {
                    if ended.is_err_and(|error| error.is_cancelled()) {
                        dropped_connections += 1;
                    }
                }
                tracing::warn!(
                    target: "keysmith::server",
                    dropped_connections,
                    "shutdown deadline passed: open connections dropped"
                );
                Stopped { dropped_connections }
            }
        }
    }
}

/// A future that resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM: the
/// signal to give [`Server::serve`] (or another server) to stop on.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before the server says where it listens, and a
/// signal sent from then on (a supervisor stopping it just after start, or
/// just after its first request) stops it gracefully, where the default
/// action would end the process at once, its queued usage unwritten.
///
/// # Panics
/// Outside a Tokio runtime with its I/O driver enabled (as
/// `tokio::signal` does).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers =
            signal(SignalKind::interrupt()).and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)));
        async move {
            match handlers {
                Ok((mut interrupt, mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(target: "keysmith::server", %error, "cannot handle SIGTERM; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How [`Server::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Connections still open at the shutdown deadline, dropped then; 0
    /// when every connection finished in time.
    pub dropped_connections: usize,
}

/// One connection's service: the router, with the peer's address in every
/// request's extensions.
#[derive(Clone)]
struct PeerService {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for PeerService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready; cloning it clones an `Arc`.
        tower_service::Service::call(&mut self.router.clone(), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_kept_within_their_bounds() {
        let server = Server::new().with_header_timeout(Duration::ZERO).with_shutdown_timeout(Duration::MAX);
        assert_eq!(server.header_timeout(), Server::MIN_HEADER_TIMEOUT);
        assert_eq!(server.shutdown_timeout(), Server::MAX_TIMEOUT);
        let server = Server::new().with_header_timeout(Duration::MAX).with_shutdown_timeout(Duration::ZERO);
        assert_eq!((server.header_timeout(), server.shutdown_timeout()), (Server::MAX_TIMEOUT, Duration::ZERO));
        assert_eq!(Server::default(), Server::new());
    }
}
