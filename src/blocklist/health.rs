//! Whether the store answers and how fresh the local copy is: what readiness, metrics
//! and `on_store_error` go by.

use super::{Blocklist, StoreError};
use crate::clock::now_millis;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long the local copy may go without a successful read of the store before
/// `on_store_error` applies to requests.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

impl Blocklist {
    /// Counts a failed store operation, and logs the first of a run of them.
    pub(super) fn note_store_error(&self, e: &StoreError) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        if self.store_healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, "revocation store unavailable");
        }
    }

    /// Whether the last store operation succeeded.
    pub fn store_healthy(&self) -> bool {
        self.store_healthy.load(Ordering::Relaxed)
    }

    /// Notes a successful read of the store that began at `began` (Unix millis).
    pub(super) fn mark_synced(&self, began: u64) {
        self.last_sync.fetch_max(began, Ordering::Relaxed);
    }

    /// Whether the local copy may have missed revocations for longer than
    /// [`STALE_AFTER`]: defined by time alone. Whatever the reason the store was not
    /// read (an error, a read that hangs, a feed task that died), once the last
    /// successful read began more than the bound ago, the copy is stale.
    pub fn is_stale(&self) -> bool {
        now_millis().saturating_sub(self.last_sync.load(Ordering::Relaxed))
            > STALE_AFTER.as_millis() as u64
    }

    /// Store operations that failed since start.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }
}
