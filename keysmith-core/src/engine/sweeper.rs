//! The background sweep: an engine built
//! [`with_background_sweep`](super::EngineBuilder::with_background_sweep)
//! runs [`Engine::sweep`] on an interval on a task of its own, until
//! [`Engine::shutdown`].

use std::sync::{Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Engine, Inner};

/// Counter: background sweeps that failed (the next tick tries again).
const FAILED_TOTAL: &str = "keysmith_sweep_failed_total";

/// The sweep task of one engine, started once.
pub(super) struct Sweeper {
    interval: Option<Duration>,
    running: OnceLock<Option<Running>>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Sweeper {
    /// A sweeper that runs every `interval`, or never.
    pub(super) fn new(interval: Option<Duration>) -> Self {
        Self { interval, running: OnceLock::new() }
    }

    /// Starts the task on the current Tokio runtime unless it runs already
    /// (or was stopped, or no interval was set). True unless it should run
    /// and cannot (outside a runtime).
    pub(super) fn start_here(&self, engine: Weak<Inner>) -> bool {
        let Some(interval) = self.interval else { return true };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.running.get().is_some();
        };
        self.running.get_or_init(|| {
            let (stop, stopped) = watch::channel(false);
            let task = runtime.spawn(run(engine, interval, stopped));
            Some(Running { stop, task: Mutex::new(Some(task)) })
        });
        true
    }

    /// Stops the task and waits for it; a sweep in progress is abandoned
    /// between two statements (each bounded, each its own write).
    pub(super) async fn stop(&self) {
        let Some(Some(running)) = self.running.get() else {
            let _ = self.running.set(None);
            return;
        };
        running.stop.send_replace(true);
        let task = running.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(target: "keysmith::sweep", %error, "sweep task ended abnormally");
        }
    }
}

/// Sweeps every `interval`, the first one interval after the start (an
/// application migrating its database at start is not swept before), until
/// `stopped` or the engine is dropped. It holds the engine only while sweeping, so an engine nobody
/// holds any more is dropped and the task ends.
async fn run(engine: Weak<Inner>, interval: Duration, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = engine.upgrade() else { return };
        let engine = Engine { inner };
        tokio::select! {
            swept = engine.sweep() => match swept {
                Ok(report) => tracing::debug!(target: "keysmith::sweep", ?report, "background sweep"),
                Err(error) => {
                    metrics::counter!(FAILED_TOTAL).increment(1);
                    tracing::warn!(target: "keysmith::sweep", %error, "background sweep failed; next at the next tick");
                }
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
