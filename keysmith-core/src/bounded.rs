//! Amortised eviction for in-process maps keyed by key id.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Sweeps run when a map reaches this size, then each time it has doubled
/// since the last sweep, so their cost is spread over the insertions.
pub(crate) const MIN_SWEEP_LEN: usize = 4096;

/// Tracks when a map is due a sweep.
#[derive(Debug)]
pub(crate) struct SweepSchedule {
    next: AtomicUsize,
}

impl Default for SweepSchedule {
    fn default() -> Self {
        Self { next: AtomicUsize::new(MIN_SWEEP_LEN) }
    }
}

impl SweepSchedule {
    /// Runs `sweep` (which returns the length after sweeping) if `len` has
    /// reached the threshold.
    pub(crate) fn maybe_sweep(&self, len: usize, sweep: impl FnOnce() -> usize) {
        if len < self.next.load(Ordering::Relaxed) {
            return;
        }
        let after = sweep();
        self.next.store((after * 2).max(MIN_SWEEP_LEN), Ordering::Relaxed);
    }
}
