//! The [`Store`] trait every revocation store implements (memory, SQLite, Redis), and
//! the shapes it answers in: change-feed reads and export pages.

use super::{Kind, Revocation, StoreError};
use crate::clock::now_millis;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, for the object-safe [`Store`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A durable home for revocations. Implementations never block the async runtime.
pub trait Store: Send + Sync + 'static {
    /// Records `revocations` durably (all or none) before resolving `Ok`.
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every live revocation, for filling the cache at start.
    fn load_live(&self, now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>>;
    /// Revocations recorded after `cursor` (by anyone), and the new cursor. Cursors are
    /// opaque to the blocklist: a sequence number for SQLite, a stream id for Redis.
    fn changes_since(
        &self,
        cursor: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>>;
    /// The current end of the change feed, taken before loading so that nothing written
    /// during the load is missed (applying a change twice is harmless).
    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>>;
    /// The change feed as the follower reads it: revocations recorded after `cursor`,
    /// waiting up to `block` for them. A store that can be told of writes (Redis: a
    /// blocking `XREAD`) answers as soon as one lands, or after `block` with nothing;
    /// the default polls: it waits `block`, then reads [`Store::changes_since`] once.
    fn wait_changes(
        &self,
        cursor: &str,
        block: Duration,
    ) -> BoxFuture<'_, Result<Changes, StoreError>> {
        let cursor = cursor.to_owned();
        Box::pin(async move {
            tokio::time::sleep(block).await;
            let began = now_millis();
            let (revocations, cursor) = self.changes_since(&cursor).await?;
            Ok(Changes {
                revocations,
                cursor,
                complete_at: began,
            })
        })
    }
    /// One page of the live revocations for an export, in an order of the store's
    /// choosing: at most `limit`, starting after `after` (a cursor from an earlier page,
    /// opaque to callers; `None`: from the start), and the cursor of the next page when
    /// more may remain. A revocation live for the whole export is in some page; one may
    /// appear twice (importing it twice is harmless). The default reads the whole live
    /// set for every page: fine for the memory store.
    fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<ExportPage, ExportError>> {
        let after = after.map(str::to_owned);
        Box::pin(async move {
            let mut live = self.load_live(now).await?;
            let sort_key = |r: &Revocation| {
                let (kind, key, _) = r.parts();
                (kind.name(), key.to_owned())
            };
            live.sort_by_cached_key(sort_key);
            let start = match &after {
                None => 0,
                Some(after) => {
                    let (kind, key) = after
                        .split_once(':')
                        .ok_or_else(|| ExportError::BadCursor(after.clone()))?;
                    live.partition_point(|r| {
                        let (k, v) = sort_key(r);
                        (k, v.as_str()) <= (kind, key)
                    })
                }
            };
            let revocations: Vec<Revocation> =
                live.into_iter().skip(start).take(limit + 1).collect();
            Ok(ExportPage::from_overfetch(revocations, limit, |last| {
                let (kind, key, _) = last.parts();
                format!("{}:{key}", kind.name())
            }))
        })
    }
    /// Whether the store answers (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.cursor().await.map(|_| ()) })
    }
    /// Looks one revocation up (cache overflow, admin API).
    fn lookup(
        &self,
        kind: Kind,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>>;
    /// Replay memory (back-channel logout tokens' `jti`): records `key` until `exp`
    /// and `revocations` with it, unless `key` is already there, atomically and
    /// durably. `Ok(true)` means this call recorded both (first sight, across every
    /// replica sharing the store); `Ok(false)` that the key was seen before and
    /// nothing was recorded. One step, so that neither a replay is ever acted on nor
    /// a first sight lost to a failure between the two writes. Replay keys are not
    /// revocations: they never reach the in-memory set and do not count against
    /// `cache_max_entries`.
    fn record_once(
        &self,
        key: &str,
        exp: u64,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Deletes expired revocations (and expired replay keys).
    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// What one read of the change feed found (see [`Store::wait_changes`]).
#[derive(Debug, Default)]
pub struct Changes {
    /// Revocations recorded after the cursor.
    pub revocations: Vec<Revocation>,
    /// Where the next read starts.
    pub cursor: String,
    /// Unix millis up to which every write is known to be included: when the read
    /// began, or, for a blocking read that waited and found nothing, the end of that
    /// wait. The blocklist counts its copy fresh as of then.
    pub complete_at: u64,
}

/// Why an export page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The cursor is not one this store handed out (a client's typo): a 400.
    #[error("not an export cursor of this store: {0:?}")]
    BadCursor(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of an export (see [`Store::export_page`]).
#[derive(Debug, Default)]
pub struct ExportPage {
    pub revocations: Vec<Revocation>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

impl ExportPage {
    /// A page from up to `limit + 1` revocations read in export order: the extra one
    /// only tells that more remain, and the cursor is made from the last one kept.
    pub fn from_overfetch(
        mut revocations: Vec<Revocation>,
        limit: usize,
        cursor_of: impl Fn(&Revocation) -> String,
    ) -> ExportPage {
        let more = revocations.len() > limit;
        revocations.truncate(limit);
        let next = if more {
            revocations.last().map(cursor_of)
        } else {
            None
        };
        ExportPage { revocations, next }
    }
}
