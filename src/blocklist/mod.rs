//! The revocation blocklist: a moka cache holding every live revocation, in front of a
//! durable store.
//!
//! The request path ([`Blocklist::check`]) reads memory only. Writes
//! ([`Blocklist::revoke`]) go to the store first and reach the cache only once the store
//! has acknowledged them, so nothing is claimed that a restart would forget. A
//! background task polls the store's change feed, so revocations written by another
//! process (`portcullis revoke`, another replica) are enforced here too.
//!
//! Bounded memory: the cache holds at most `blocklist.cache_max_entries` entries. If more
//! revocations are live than fit, moka evicts some; the blocklist notices (eviction
//! listener), logs it, and from then on answers a cache miss by asking the store, so a
//! revocation is never forgotten, only slower to find.

pub mod memory;
pub mod redis;
pub mod sqlite;

use crate::auth::verify::{now_unix, VerifiedToken};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A boxed future, for the object-safe [`Store`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A single token, by `jti` (or `sha256:` digest), until its `exp`.
    Token { key: String, exp: u64 },
    /// Every token carrying this `sid`, until `exp`.
    Session { sid: String, exp: u64 },
    /// Every token of `sub` issued at or before `at` (by `iat`); kept until replaced.
    Subject { sub: String, at: u64 },
}

impl Revocation {
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
    /// Deletes expired revocations.
    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// Value kept per cached revocation: when it stops mattering (`u64::MAX`: never), and
/// for subjects the revocation time.
#[derive(Debug, Clone, Copy)]
struct Entry {
    expires_at: u64,
    at: u64,
}

struct UntilExpiry;

impl moka::Expiry<Box<str>, Entry> for UntilExpiry {
    fn expire_after_create(
        &self,
        _k: &Box<str>,
        v: &Entry,
        _c: std::time::Instant,
    ) -> Option<Duration> {
        (v.expires_at != u64::MAX)
            .then(|| Duration::from_secs(v.expires_at.saturating_sub(now_unix()).saturating_add(1)))
    }
    fn expire_after_update(
        &self,
        k: &Box<str>,
        v: &Entry,
        c: std::time::Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(k, v, c)
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

/// The cache and its store.
pub struct Blocklist {
    tokens: moka::sync::Cache<Box<str>, Entry>,
    sessions: moka::sync::Cache<Box<str>, Entry>,
    subjects: moka::sync::Cache<Box<str>, Entry>,
    /// Subject revocations ever cached: lets the common case skip that lookup.
    subject_count: AtomicU64,
    store: Arc<dyn Store>,
    overflowed: Arc<AtomicBool>,
    store_healthy: AtomicBool,
    store_errors: AtomicU64,
    /// Unix millis of the last successful read of the store (load or change feed).
    last_sync: AtomicU64,
}

/// How long the local copy may go without a successful read of the store before
/// `on_store_error` applies to requests.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Blocklist {
    /// Creates an empty blocklist over `store`; call [`Blocklist::load`] before serving.
    pub fn new(store: Arc<dyn Store>, max_entries: u64) -> Arc<Blocklist> {
        let overflowed = Arc::new(AtomicBool::new(false));
        let cache = || {
            let flag = overflowed.clone();
            moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .eviction_listener(move |_k, _v, cause| {
                    if cause == moka::notification::RemovalCause::Size
                        && !flag.swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "blocklist cache is full (blocklist.cache_max_entries): cache misses now ask the store"
                        );
                    }
                })
                .build()
        };
        Arc::new(Blocklist {
            tokens: cache(),
            sessions: cache(),
            subjects: cache(),
            subject_count: AtomicU64::new(0),
            store,
            overflowed,
            store_healthy: AtomicBool::new(true),
            store_errors: AtomicU64::new(0),
            last_sync: AtomicU64::new(now_millis()),
        })
    }

    /// Fills the cache with every live revocation and returns the change-feed cursor
    /// to poll from.
    pub async fn load(&self) -> Result<String, StoreError> {
        let cursor = self.store.cursor().await?;
        let live = self.store.load_live(now_unix()).await?;
        for revocation in &live {
            self.remember(revocation);
        }
        self.mark_synced();
        Ok(cursor)
    }

    /// Puts one revocation in the cache (after the store has it).
    fn remember(&self, revocation: &Revocation) {
        match revocation {
            Revocation::Token { key, exp } => self.tokens.insert(
                key.as_str().into(),
                Entry {
                    expires_at: *exp,
                    at: 0,
                },
            ),
            Revocation::Session { sid, exp } => self.sessions.insert(
                sid.as_str().into(),
                Entry {
                    expires_at: *exp,
                    at: 0,
                },
            ),
            Revocation::Subject { sub, at } => {
                // A later revocation replaces an earlier one, never the reverse.
                let at = match self.subjects.get(sub.as_str()) {
                    Some(old) if old.at > *at => old.at,
                    _ => *at,
                };
                self.subject_count.fetch_add(1, Ordering::Relaxed);
                self.subjects.insert(
                    sub.as_str().into(),
                    Entry {
                        expires_at: u64::MAX,
                        at,
                    },
                );
            }
        }
    }

    /// Whether `token` is revoked, from memory. Only when the cache has overflowed does
    /// a miss go to the store.
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
        if self.tokens.contains_key(token.revocation_key.as_str()) {
            return true;
        }
        if let Some(sid) = &token.sid {
            if self.sessions.contains_key(sid.as_str()) {
                return true;
            }
        }
        if self.subject_count.load(Ordering::Relaxed) > 0 {
            if let Some(sub) = &token.sub {
                if let Some(entry) = self.subjects.get(sub.as_str()) {
                    // Tokens without `iat` cannot prove they are newer: refused.
                    return token.iat.is_none_or(|iat| iat <= entry.at);
                }
            }
        }
        false
    }

    async fn check_store(&self, token: &VerifiedToken) -> Verdict {
        let now = now_unix();
        let mut lookups = vec![(Kind::Token, token.revocation_key.as_str())];
        if let Some(sid) = &token.sid {
            lookups.push((Kind::Session, sid));
        }
        if let Some(sub) = &token.sub {
            lookups.push((Kind::Subject, sub));
        }
        for (kind, key) in lookups {
            match self.store.lookup(kind, key).await {
                Ok(Some(Revocation::Subject { at, .. })) => {
                    if token.iat.is_none_or(|iat| iat <= at) {
                        return Verdict::Revoked;
                    }
                }
                Ok(Some(r)) if r.is_live(now) => return Verdict::Revoked,
                Ok(_) => {}
                Err(e) => {
                    self.note_store_error(&e);
                    return Verdict::Unknown;
                }
            }
        }
        Verdict::Allowed
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

    fn mark_synced(&self) {
        self.last_sync.store(now_millis(), Ordering::Relaxed);
    }

    /// Whether the local copy may have missed revocations for longer than
    /// [`STALE_AFTER`]: the store is failing and has not been read successfully since.
    /// A short blip (one failed poll) does not count; an outage does.
    pub fn is_stale(&self) -> bool {
        !self.store_healthy()
            && now_millis().saturating_sub(self.last_sync.load(Ordering::Relaxed))
                > STALE_AFTER.as_millis() as u64
    }

    /// Store operations that failed since start.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Live revocations held in memory.
    pub fn entries(&self) -> u64 {
        // moka counts lazily; settle pending inserts/evictions first (cheap, off the
        // request path: only metrics and start-up logging ask).
        self.tokens.run_pending_tasks();
        self.sessions.run_pending_tasks();
        self.subjects.run_pending_tasks();
        self.tokens.entry_count() + self.sessions.entry_count() + self.subjects.entry_count()
    }

    /// Polls the store's change feed and purges expired rows until `shutdown` fires.
    pub async fn follow(self: Arc<Self>, mut cursor: String, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = std::time::Instant::now();
        loop {
            ticker.tick().await;
            match self.store.changes_since(&cursor).await {
                Ok((changes, next)) => {
                    if !self.store_healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("revocation store reachable again");
                    }
                    self.mark_synced();
                    let now = now_unix();
                    for r in changes.iter().filter(|r| r.is_live(now)) {
                        self.remember(r);
                    }
                    cursor = next;
                }
                Err(e) => self.note_store_error(&e),
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = std::time::Instant::now();
                if let Err(e) = self.store.purge_expired(now_unix()).await {
                    tracing::warn!(error = %e, "purging expired revocations failed");
                }
            }
        }
    }
}
