//! Following the store's change feed, so that revocations written by other processes
//! (`portcullis revoke`, another replica, the admin API of another replica) are
//! enforced here too, and expired entries are purged.
//!
//! The follower is supervised: if its task panics or ends, the supervisor logs it and
//! starts a new one from the last cursor it reached, and it stops when the gateway
//! shuts down. While no successful read happens, for whatever reason, the blocklist
//! turns stale after [`super::STALE_AFTER`] and `on_store_error` applies.

use super::{fault, Blocklist};
use crate::clock::{now_millis, now_unix};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often expired revocations are dropped from memory and from the store.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Blocklist {
    /// Starts the supervised change-feed follower, reading the feed at least every
    /// `interval` (see [`Blocklist::wait_feed`]), until
    /// `shutdown` changes (or its sender is dropped). Call after [`Blocklist::load`].
    pub fn spawn_feed(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(supervise(self.clone(), interval, shutdown))
    }

    /// One read of the change feed from the current cursor; applies what it finds.
    /// Returns whether the read succeeded.
    pub async fn poll_feed(&self) -> bool {
        if fault::active(fault::FEED_PANIC) {
            panic!("fault injection: {} is present", fault::FEED_PANIC);
        }
        let began = now_millis();
        let cursor = self.current_cursor();
        match self.store.changes_since(&cursor).await {
            Ok((changes, next)) => {
                if !self.store_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("revocation store reachable again");
                }
                let now = now_unix();
                for r in changes.iter().filter(|r| r.is_live(now)) {
                    self.remember(r);
                }
                self.set_cursor(next);
                self.mark_synced(began);
                true
            }
            Err(e) => {
                self.note_store_error(&e);
                false
            }
        }
    }

    /// One read of the change feed through [`super::Store::wait_changes`], waiting up
    /// to `block` for something new; applies what it finds. Returns whether the read
    /// succeeded. A wait that ends with nothing new is a successful read: the copy is
    /// fresh as of its end.
    pub async fn wait_feed(&self, block: Duration) -> bool {
        if fault::active(fault::FEED_PANIC) {
            panic!("fault injection: {} is present", fault::FEED_PANIC);
        }
        let cursor = self.current_cursor();
        match self.store.wait_changes(&cursor, block).await {
            Ok(changes) => {
                if !self.store_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("revocation store reachable again");
                }
                let now = now_unix();
                for r in changes.revocations.iter().filter(|r| r.is_live(now)) {
                    self.remember(r);
                }
                self.set_cursor(changes.cursor);
                self.mark_synced(changes.complete_at);
                true
            }
            Err(e) => {
                self.note_store_error(&e);
                false
            }
        }
    }

    /// Follows the change feed (each read waiting up to `interval`: a poll period for
    /// SQLite, the longest block of a pushed read for Redis) and purges expired
    /// entries, forever.
    async fn follow(self: Arc<Self>, interval: Duration) {
        let mut last_purge = Instant::now();
        loop {
            if !self.wait_feed(interval).await {
                // A store that fails at once must not be asked in a tight loop.
                tokio::time::sleep(interval).await;
            }
            if last_purge.elapsed() > PURGE_EVERY {
                last_purge = Instant::now();
                let now = now_unix();
                self.purge_memory(now);
                if let Err(e) = self.store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging expired revocations failed");
                }
            }
        }
    }
}

/// Runs the follower and restarts it whenever its task ends, until shutdown.
async fn supervise(
    blocklist: Arc<Blocklist>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut task = tokio::spawn(blocklist.clone().follow(interval));
        let ended = tokio::select! {
            ended = &mut task => ended,
            _ = shutdown.changed() => {
                task.abort();
                return;
            }
        };
        match ended {
            Err(e) if e.is_panic() => tracing::error!(
                "the revocation change-feed task panicked: restarting it (until it reads the store again, the local copy turns stale and on_store_error applies)"
            ),
            _ => tracing::error!("the revocation change-feed task ended: restarting it"),
        }
        // A task that fails at once must not spin.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
