//! Following the store's change feed, so that revocations written by other processes
//! (`portcullis revoke`, another replica, the admin API of another replica) are
//! enforced here too, and expired entries are purged.
//!
//! The follower is supervised: if its task panics or ends, the supervisor logs it and
//! starts a new one from the last cursor it reached, and it stops when the gateway
//! shuts down. While no successful read happens, for whatever reason, the blocklist
//! turns stale after [`super::STALE_AFTER`] and `on_store_error` applies.

use super::{fault, now_millis, Blocklist};
use crate::auth::verify::now_unix;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often expired revocations are dropped from memory and from the store.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Blocklist {
    /// Starts the supervised change-feed follower, polling every `interval`, until
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

    /// Polls the change feed every `interval` and purges expired entries, forever.
    async fn follow(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = Instant::now();
        loop {
            ticker.tick().await;
            self.poll_feed().await;
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
