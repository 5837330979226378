//! The revocation blocklist: an in-memory copy of every live revocation, in front of a
//! durable store.
//!
//! The request path ([`Blocklist::check`]) reads memory only. Writes
//! ([`Blocklist::revoke`]) go to the store first and reach the cache only once the store
//! has acknowledged them, so nothing is claimed that a restart would forget. A
//! background task polls the store's change feed, so revocations written by another
//! process (`portcullis revoke`, another replica) are enforced here too.
//!
//! Bounded memory: memory holds at most `blocklist.cache_max_entries` jti/sid entries
//! (see [`set`] for why this is not moka). If more revocations are live than fit, the
//! blocklist logs it and from then on answers a miss through [`overflow`]: a moka cache
//! of the store's answers, each trusted at most [`STALE_AFTER`] and dropped when the
//! feed reports a revocation of its key. A revocation is never forgotten, only found
//! in the store instead of memory.

pub mod fault;
pub mod feed;
pub mod memory;
mod open;
pub mod overflow;
pub mod redis;
pub mod set;
pub mod sqlite;

pub use open::open_store;

use crate::auth::verify::VerifiedToken;
use crate::clock::{now_millis, now_unix};
use crate::metrics::CacheStats;
use overflow::Overflow;
use set::RevocationSet;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// A boxed future, for the object-safe [`Store`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A single token, by `jti` (or `sha256:` digest), until its `exp`.
    Token { key: String, exp: u64 },
    /// A cut-off for one session: every token carrying this `sid` issued before `at`
    /// (by `iat`; a token without `iat` too) is refused, until `exp`. Tokens the
    /// identity provider issues later in the same session are accepted.
    Session { sid: String, at: u64, exp: u64 },
    /// A cut-off for one subject: every token of `sub` issued before `at` (by `iat`;
    /// a token without `iat` too) is refused; kept until replaced by a later one.
    Subject { sub: String, at: u64 },
}

/// The cut-off of a session revocation recorded before cut-offs existed: it refused
/// every token of the session, which a cut-off in the far future still does.
pub const WHOLE_SESSION: u64 = u64::MAX;

/// The cut-off rule of section 3 of the contract, for sessions and subjects: a token
/// issued before `cutoff` (whole seconds), or one without `iat`, is refused; a token
/// issued in the same second as the revocation is accepted, so a user who logs out
/// everywhere can log in again at once.
pub fn issued_before(iat: Option<u64>, cutoff: u64) -> bool {
    iat.is_none_or(|iat| iat < cutoff)
}

impl Revocation {
    /// The kind, key and value (`exp`, or the revocation time of a subject): the form
    /// stores keep it in. A session's cut-off is [`Revocation::cutoff`].
    pub fn parts(&self) -> (Kind, &str, u64) {
        match self {
            Revocation::Token { key, exp } => (Kind::Token, key, *exp),
            Revocation::Session { sid, exp, .. } => (Kind::Session, sid, *exp),
            Revocation::Subject { sub, at } => (Kind::Subject, sub, *at),
        }
    }

    /// A session revocation's cut-off (`None` for the other kinds).
    pub fn cutoff(&self) -> Option<u64> {
        match self {
            Revocation::Session { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// Rebuilds a revocation from a stored kind name (`jti`, `sid`, `sub`), key, value
    /// and, for sessions, cut-off (absent in records written before cut-offs existed:
    /// the whole session, as it was then).
    pub fn from_parts(kind: &str, key: String, value: u64, at: Option<u64>) -> Option<Revocation> {
        match kind {
            "jti" => Some(Revocation::Token { key, exp: value }),
            "sid" => Some(Revocation::Session {
                sid: key,
                at: at.unwrap_or(WHOLE_SESSION),
                exp: value,
            }),
            "sub" => Some(Revocation::Subject {
                sub: key,
                at: value,
            }),
            _ => None,
        }
    }

    /// Whether it still has an effect at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        match self {
            Revocation::Token { exp, .. } | Revocation::Session { exp, .. } => *exp >= now,
            Revocation::Subject { .. } => true,
        }
    }
}

/// The kinds of revocation, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    Session,
    Subject,
}

impl Kind {
    /// The name stores use for this kind: `jti`, `sid` or `sub`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "jti",
            Kind::Session => "sid",
            Kind::Subject => "sub",
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("revocation store: {0}")]
pub struct StoreError(pub String);

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

/// Why a token was found revoked, or that the answer is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Revoked,
    /// The cache overflowed and the store could not be asked.
    Unknown,
}

/// The in-memory copy of every live revocation, and its store.
pub struct Blocklist {
    tokens: RevocationSet,
    /// `sid` -> (exp, cut-off).
    sessions: RevocationSet,
    /// `sub` -> revocation time. Few and never expiring, so a plain map.
    subjects: RwLock<HashMap<String, u64>>,
    /// Mirrors `subjects.is_empty()` so the common case skips that lock.
    has_subjects: AtomicBool,
    /// `blocklist.cache_max_entries`: jti + sid entries held in memory at most.
    max_entries: u64,
    store: Arc<dyn Store>,
    /// Set once a revocation did not fit in memory: from then on a miss asks the store,
    /// through `overflow`.
    overflowed: AtomicBool,
    overflow: Overflow,
    overflow_stats: Arc<CacheStats>,
    store_healthy: AtomicBool,
    store_errors: AtomicU64,
    /// Unix millis at which the last successful read of the store (load or change
    /// feed) began: the local copy is known complete up to then.
    last_sync: AtomicU64,
    /// Where the change feed stands, so a restarted feed task resumes there.
    cursor: Mutex<String>,
}

/// How long the local copy may go without a successful read of the store before
/// `on_store_error` applies to requests.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

impl Blocklist {
    /// Creates an empty blocklist over `store`; call [`Blocklist::load`] before serving.
    pub fn new(store: Arc<dyn Store>, max_entries: u64) -> Arc<Blocklist> {
        let overflow_stats = Arc::new(CacheStats::default());
        Arc::new(Blocklist {
            overflow: Overflow::new(overflow_stats.clone()),
            overflow_stats,
            tokens: RevocationSet::default(),
            sessions: RevocationSet::default(),
            subjects: RwLock::new(HashMap::new()),
            has_subjects: AtomicBool::new(false),
            max_entries,
            store,
            overflowed: AtomicBool::new(false),
            store_healthy: AtomicBool::new(true),
            store_errors: AtomicU64::new(0),
            last_sync: AtomicU64::new(now_millis()),
            cursor: Mutex::new(String::new()),
        })
    }

    /// Fills the cache with every live revocation and notes the change-feed position
    /// to follow from (see [`Blocklist::spawn_feed`]).
    pub async fn load(&self) -> Result<(), StoreError> {
        let began = now_millis();
        let cursor = self.store.cursor().await?;
        let live = self.store.load_live(now_unix()).await?;
        for revocation in &live {
            self.remember(revocation);
        }
        self.set_cursor(cursor);
        self.mark_synced(began);
        Ok(())
    }

    fn set_cursor(&self, cursor: String) {
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = cursor;
    }

    fn current_cursor(&self) -> String {
        self.cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts one revocation in memory (after the store has it), and drops the overflow
    /// tier's answer for its key, which may predate it.
    fn remember(&self, revocation: &Revocation) {
        if self.overflowed.load(Ordering::Relaxed) {
            self.overflow.forget(revocation);
        }
        self.remember_in_memory(revocation);
    }

    fn remember_in_memory(&self, revocation: &Revocation) {
        let (set, key, exp, cutoff) = match revocation {
            Revocation::Token { key, exp } => (&self.tokens, key, *exp, WHOLE_SESSION),
            Revocation::Session { sid, at, exp } => (&self.sessions, sid, *exp, *at),
            Revocation::Subject { sub, at } => {
                let mut subjects = self.subjects.write().unwrap_or_else(|p| p.into_inner());
                // A later revocation replaces an earlier one, never the reverse.
                let entry = subjects.entry(sub.clone()).or_insert(*at);
                *entry = (*entry).max(*at);
                self.has_subjects.store(true, Ordering::Relaxed);
                return;
            }
        };
        // A key already held (our own writes come back through the change feed) is
        // only refreshed; only a new key can overflow memory.
        if self.tokens.len() + self.sessions.len() >= self.max_entries
            && set.cutoff(key, 0).is_none()
        {
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = self.max_entries,
                    "blocklist.cache_max_entries reached: further revocations stay in the store only, and requests not found in memory now ask the store"
                );
            }
            return;
        }
        set.insert(key, exp, cutoff);
    }

    /// Whether `token` is revoked, from memory. Only when the cache has overflowed does
    /// a miss go to the store, through the overflow tier's cached answers.
    pub async fn check(&self, token: &VerifiedToken) -> Verdict {
        if self.is_revoked_in_memory(token) {
            return Verdict::Revoked;
        }
        if !self.overflowed.load(Ordering::Relaxed) {
            return Verdict::Allowed;
        }
        self.check_store(token).await
    }

    /// The request-path check: memory only, no await, no allocation.
    pub fn is_revoked_in_memory(&self, token: &VerifiedToken) -> bool {
        let now = now_unix();
        if self.tokens.cutoff(&token.revocation_key, now).is_some() {
            return true;
        }
        // The keys in the token's provider's namespace (the claims themselves for
        // `default`), precomputed when it was verified: no allocation here.
        if let Some(sid) = token.sid_key() {
            if !self.sessions.is_empty() {
                if let Some(cutoff) = self.sessions.cutoff(sid, now) {
                    if issued_before(token.iat, cutoff) {
                        return true;
                    }
                }
            }
        }
        if self.has_subjects.load(Ordering::Relaxed) {
            if let Some(sub) = token.sub_key() {
                let subjects = self.subjects.read().unwrap_or_else(|p| p.into_inner());
                if let Some(&at) = subjects.get(sub) {
                    return issued_before(token.iat, at);
                }
            }
        }
        false
    }

    async fn check_store(&self, token: &VerifiedToken) -> Verdict {
        match self
            .overflow
            .is_revoked(&*self.store, token, now_unix())
            .await
        {
            Ok(true) => Verdict::Revoked,
            Ok(false) => Verdict::Allowed,
            Err(e) => {
                self.note_store_error(&e);
                Verdict::Unknown
            }
        }
    }

    /// The overflow tier's counters (hits, misses: store lookups, evictions).
    pub fn overflow_stats(&self) -> &CacheStats {
        &self.overflow_stats
    }

    /// Answers the overflow tier holds, and their weight in bytes.
    pub fn overflow_size(&self) -> (u64, u64) {
        self.overflow.size()
    }

    /// Records revocations durably, then enforces them here at once.
    pub async fn revoke(&self, revocations: Vec<Revocation>) -> Result<(), StoreError> {
        if revocations.is_empty() {
            return Ok(());
        }
        match self.store.record(revocations.clone()).await {
            Ok(()) => {
                self.store_healthy.store(true, Ordering::Relaxed);
                for r in &revocations {
                    self.remember(r);
                }
                Ok(())
            }
            Err(e) => {
                self.note_store_error(&e);
                Err(e)
            }
        }
    }

    /// Records `revocations` unless `replay_key` was seen before (see
    /// [`Store::record_once`]), then enforces them here at once. `Ok(false)`: a replay,
    /// nothing recorded.
    pub async fn revoke_once(
        &self,
        replay_key: &str,
        replay_exp: u64,
        revocations: Vec<Revocation>,
    ) -> Result<bool, StoreError> {
        match self
            .store
            .record_once(replay_key, replay_exp, revocations.clone())
            .await
        {
            Ok(first) => {
                self.store_healthy.store(true, Ordering::Relaxed);
                if first {
                    for r in &revocations {
                        self.remember(r);
                    }
                }
                Ok(first)
            }
            Err(e) => {
                self.note_store_error(&e);
                Err(e)
            }
        }
    }

    /// One page of the live revocations in the store (admin export).
    pub async fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<ExportPage, ExportError> {
        self.store.export_page(after, limit, now).await
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Looks a revocation up in the store (admin API).
    pub async fn lookup(&self, kind: Kind, key: &str) -> Result<Option<Revocation>, StoreError> {
        self.store.lookup(kind, key).await
    }

    fn note_store_error(&self, e: &StoreError) {
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
    fn mark_synced(&self, began: u64) {
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

    /// Live revocations held in memory (expired ones count until the next purge).
    pub fn entries(&self) -> u64 {
        let subjects = self
            .subjects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        self.tokens.len() + self.sessions.len() + subjects
    }

    /// Drops expired entries from memory.
    fn purge_memory(&self, now: u64) {
        self.tokens.purge(now);
        self.sessions.purge(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::TokenType;

    fn token(jti: &str) -> VerifiedToken {
        VerifiedToken {
            claims: Default::default(),
            token_type: TokenType::Access,
            fresh: false,
            csrf: None,
            sub: Some("alice".into()),
            sid: None,
            iat: Some(now_unix()),
            exp: now_unix() + 600,
            provider: 0,
            revocation_key: jti.into(),
            namespaced: None,
            identity: Vec::new(),
        }
    }

    fn revoke(jti: &str) -> Revocation {
        Revocation::Token {
            key: jti.into(),
            exp: now_unix() + 600,
        }
    }

    #[tokio::test]
    async fn a_full_cache_never_forgets_a_revocation() {
        let blocklist = Blocklist::new(Arc::new(memory::MemoryStore::default()), 2);
        blocklist
            .revoke(vec![revoke("a"), revoke("b")])
            .await
            .unwrap();
        // Our own writes echo back through the change feed: not an overflow.
        blocklist.remember(&revoke("a"));
        assert!(!blocklist.overflowed.load(Ordering::Relaxed));
        assert_eq!(blocklist.check(&token("fresh")).await, Verdict::Allowed);

        blocklist.revoke(vec![revoke("c")]).await.unwrap();
        assert!(blocklist.overflowed.load(Ordering::Relaxed));
        assert!(
            !blocklist.is_revoked_in_memory(&token("c")),
            "c did not fit"
        );
        for jti in ["a", "b", "c"] {
            assert_eq!(
                blocklist.check(&token(jti)).await,
                Verdict::Revoked,
                "{jti}"
            );
        }
        assert_eq!(blocklist.check(&token("fresh")).await, Verdict::Allowed);
    }
}
