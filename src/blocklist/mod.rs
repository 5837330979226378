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
//! blocklist logs it and from then on answers a miss by asking the store, so a
//! revocation is never forgotten, only slower to find.

pub mod memory;
pub mod redis;
pub mod set;
pub mod sqlite;

use crate::auth::verify::{now_unix, VerifiedToken};
use set::RevocationSet;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::RwLock;
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
    /// The kind, key and value (`exp`, or the revocation time of a subject): the form
    /// stores keep it in.
    pub fn parts(&self) -> (Kind, &str, u64) {
        match self {
            Revocation::Token { key, exp } => (Kind::Token, key, *exp),
            Revocation::Session { sid, exp } => (Kind::Session, sid, *exp),
            Revocation::Subject { sub, at } => (Kind::Subject, sub, *at),
        }
    }

    /// Rebuilds a revocation from a stored kind name (`jti`, `sid`, `sub`), key and value.
    pub fn from_parts(kind: &str, key: String, value: u64) -> Option<Revocation> {
        match kind {
            "jti" => Some(Revocation::Token { key, exp: value }),
            "sid" => Some(Revocation::Session {
                sid: key,
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
    sessions: RevocationSet,
    /// `sub` -> revocation time. Few and never expiring, so a plain map.
    subjects: RwLock<HashMap<String, u64>>,
    /// Mirrors `subjects.is_empty()` so the common case skips that lock.
    has_subjects: AtomicBool,
    /// `blocklist.cache_max_entries`: jti + sid entries held in memory at most.
    max_entries: u64,
    store: Arc<dyn Store>,
    /// Set once a revocation did not fit in memory: from then on a miss asks the store.
    overflowed: AtomicBool,
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
        Arc::new(Blocklist {
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

    /// Puts one revocation in memory (after the store has it).
    fn remember(&self, revocation: &Revocation) {
        let (set, key, exp) = match revocation {
            Revocation::Token { key, exp } => (&self.tokens, key, *exp),
            Revocation::Session { sid, exp } => (&self.sessions, sid, *exp),
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
        if self.tokens.len() + self.sessions.len() >= self.max_entries && !set.contains(key, 0) {
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = self.max_entries,
                    "blocklist.cache_max_entries reached: further revocations stay in the store only, and requests not found in memory now ask the store"
                );
            }
            return;
        }
        set.insert(key, exp);
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
        let now = now_unix();
        if self.tokens.contains(&token.revocation_key, now) {
            return true;
        }
        if let Some(sid) = &token.sid {
            if !self.sessions.is_empty() && self.sessions.contains(sid, now) {
                return true;
            }
        }
        if self.has_subjects.load(Ordering::Relaxed) {
            if let Some(sub) = &token.sub {
                let subjects = self.subjects.read().unwrap_or_else(|p| p.into_inner());
                if let Some(&at) = subjects.get(sub.as_str()) {
                    // Tokens without `iat` cannot prove they are newer: refused.
                    return token.iat.is_none_or(|iat| iat <= at);
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

    /// Live revocations held in memory (expired ones count until the next purge).
    pub fn entries(&self) -> u64 {
        let subjects = self
            .subjects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        self.tokens.len() + self.sessions.len() + subjects
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
                let now = now_unix();
                self.tokens.purge(now);
                self.sessions.purge(now);
                if let Err(e) = self.store.purge_expired(now_unix()).await {
                    tracing::warn!(error = %e, "purging expired revocations failed");
                }
            }
        }
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
            revocation_key: jti.into(),
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
