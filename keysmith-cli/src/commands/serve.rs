//! `keysmith serve`: the REST management API and the dashboard over HTTP,
//! for teams that run Keysmith as a service rather than as a library.

use std::io::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use keysmith_admin::{AdminConfig, GithubSecretScanning, HealthConfig, Server};
use keysmith_core::Engine;
use keysmith_core::http::TrustedProxies;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;

use crate::cli::ServeArgs;
use crate::error::CliError;
use crate::output::Printer;

/// Where the management API is mounted.
const API_PATH: &str = "/keysmith/v1";
/// Where the dashboard is mounted (it finds the API at `../v1`).
const UI_PATH: &str = "/keysmith/ui";

/// Migrates, listens, prints where, and serves until SIGINT or SIGTERM and
/// then at most `--shutdown-timeout` longer. The caller shuts the engine
/// down afterwards, which writes the queued usage.
pub(super) async fn run(
    args: ServeArgs, engine: &Engine, app: Option<&str>, printer: Printer,
) -> Result<String, CliError> {
    engine.store().migrate().await?;
    let proxies = TrustedProxies::parse(&args.trusted_proxies)
        .map_err(|error| CliError::Usage(error.to_string()))?
        .with_header(args.forwarded_header.into());
    let scanning = GithubSecretScanning::new(engine.clone()).with_keys_url(args.github_keys_url);
    let mut admin = AdminConfig::new(engine.clone())
        .with_realm(args.realm)
        .with_trusted_proxies(proxies)
        .with_secret_scanning(scanning);
    if let Some(app) = app {
        admin = admin.with_app_id(app);
    }
    if args.problem_details {
        admin = admin.with_problem_details();
    }
    let mut health = HealthConfig::new(engine.clone());
    if args.metrics {
        // One recorder per process; the engine was built with the metrics
        // plugin for this flag.
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .map_err(|error| CliError::Usage(format!("cannot serve metrics: {error}")))?;
        health = health.with_metrics(handle);
    }
    let router = routes(admin, health);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| CliError::Listen { addr: args.listen, source: error })?;
    let addr = listener.local_addr().map_err(|error| CliError::Listen { addr: args.listen, source: error })?;
    // Handled from before the address is announced: a signal sent once a
    // supervisor or a test knows it stops the server gracefully.
    let stop = keysmith_admin::shutdown_signal();
    announce(addr, printer)?;

    let stopped = Server::new()
        .with_header_timeout(args.header_timeout.0)
        .with_shutdown_timeout(args.shutdown_timeout.0)
        .serve(listener, router, stop)
        .await;
    // With --json the announcement was the command's one document.
    Ok(match stopped.dropped_connections {
        _ if printer.is_json() => String::new(),
        0 => "Stopped; queued usage records written.\n".to_owned(),
        1 => "Stopped at the shutdown deadline (1 open connection dropped); queued usage records written.\n".to_owned(),
        n => {
            format!("Stopped at the shutdown deadline ({n} open connections dropped); queued usage records written.\n")
        }
    })
}

/// The routes of the service: the probes at the root, the management API
/// (verify endpoint included) and the dashboard below `/keysmith`.
fn routes(admin: AdminConfig, health: HealthConfig) -> Router {
    Router::new()
        .merge(health.into_router())
        .nest(API_PATH, admin.into_router())
        .nest_service(UI_PATH, keysmith_admin::ui_router())
        .route("/", get(|| async { Redirect::to(&format!("{UI_PATH}/")) }))
}

/// Prints the addresses at once (the command's result is printed only when
/// it ends): a test or a supervisor reads the port from here.
fn announce(addr: SocketAddr, printer: Printer) -> Result<(), CliError> {
    let base = format!("http://{addr}");
    let text = printer.render(
        &json!({ "listen": addr.to_string(), "api": format!("{base}{API_PATH}"), "dashboard": format!("{base}{UI_PATH}/") }),
        || {
            format!(
                "Keysmith is listening on {base}\n  management API: {base}{API_PATH}\n  dashboard:      {base}{UI_PATH}/\n"
            )
        },
    )?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(CliError::Output)
}
