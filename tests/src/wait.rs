//! Waiting for a real server (or a real connection) to change state on its
//! own: a subscription lost and made again, a pool noticing its database is
//! back. Logic that depends on time takes an injected clock instead; this is
//! only for what no clock of ours drives.

use std::time::{Duration, Instant};

/// Polls `done` on the real clock until it holds; how long that took.
///
/// # Panics
/// When it does not hold within `bound` (`what` names what was awaited).
pub async fn until(what: &str, bound: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < bound, "not {what} within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}
