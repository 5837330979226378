//! The revocation blocklist: an in-memory copy of every live revocation, in front of a
//! durable store.
//!
//! The request path ([`Blocklist::check`]) reads memory only, and skips even that for a
//! token it found unrevoked while nothing was revoked since (a generation count, noted
//! in the cached token: see [`crate::auth::verify::RevocationMemo`]). Writes
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
//!
//! The parts: `model.rs` (what a revocation is, the cut-off rule), `store.rs` (the
//! [`Store`] trait and its answers), `error.rs` ([`StoreError`]), `health.rs` (store
//! health and staleness), [`feed`] (following the change feed), [`set`] and
//! [`overflow`] (the two in-memory tiers), and the stores: [`memory`], [`sqlite`],
//! [`redis`], opened by [`open_store`].

mod error;
pub mod fault;
pub mod feed;
mod health;
pub mod memory;
mod model;
mod open;
pub mod overflow;
pub mod redis;
pub mod set;
pub mod sqlite;
mod store;

pub use error::StoreError;
pub use health::STALE_AFTER;
pub use model::{issued_before, Kind, Revocation, Verdict, LATEST_SECOND, WHOLE_SESSION};
pub use open::open_store;
pub use store::{BoxFuture, Changes, ExportError, ExportPage, Store};

use crate::auth::verify::VerifiedToken;
use crate::clock::{now_millis, now_unix};
use crate::metrics::CacheStats;
use overflow::Overflow;
use set::RevocationSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock};

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
    /// Grows by one after each revocation taken into memory: a token found unrevoked
    /// at the current generation needs no lookup (see [`crate::auth::verify::RevocationMemo`]).
    generation: AtomicU64,
}

/// Each blocklist's generations start at its own multiple of 2^40 (a trillion
/// revocations each), so no two blocklists of one process share a generation.
fn first_generation() -> u64 {
    static BLOCKLISTS: AtomicU64 = AtomicU64::new(1);
    BLOCKLISTS.fetch_add(1, Ordering::Relaxed) << 40
}

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
            generation: AtomicU64::new(first_generation()),
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
                drop(subjects);
                self.next_generation();
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
        self.next_generation();
    }

    /// Ends the generation in which tokens were found unrevoked: called after each
    /// change that can revoke one. The release pairs with the acquire in
    /// [`Blocklist::is_revoked_in_memory`]: whoever reads the new generation sees the
    /// change, and whoever looked before the change holds an older generation.
    fn next_generation(&self) {
        self.generation.fetch_add(1, Ordering::Release);
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

    /// The request-path check: memory only, no await, no allocation. A token found
    /// unrevoked before is not looked up again until something is revoked.
    pub fn is_revoked_in_memory(&self, token: &VerifiedToken) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if token.revocation_memo.holds_at(generation) {
            return false;
        }
        let revoked = self.looks_revoked(token);
        if !revoked {
            token.revocation_memo.note(generation);
        }
        revoked
    }

    /// The lookups: the token's key, its session's cut-off, its subject's.
    fn looks_revoked(&self, token: &VerifiedToken) -> bool {
        let now = now_unix();
        if self.tokens.cutoff(&token.revocation_key, now).is_some() {
            return true;
        }
        if let Some(twin) = &token.twin_key {
            if self.tokens.cutoff(twin, now).is_some() {
                return true;
            }
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

    /// Looks a live revocation up in the store (admin API). An expired record the purge
    /// has not reached yet is not one: `GET /revocations` leaves it out, so the lookup
    /// answers as if it were gone (`exp >= now` is live, as everywhere else).
    pub async fn lookup(&self, kind: Kind, key: &str) -> Result<Option<Revocation>, StoreError> {
        let found = self.store.lookup(kind, key).await?;
        let now = crate::clock::now_unix();
        Ok(found.filter(|revocation| revocation.is_live(now)))
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
            twin_key: None,
            namespaced: None,
            identity: Vec::new(),
            revocation_memo: Default::default(),
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

    /// The memo of a token found unrevoked never outlives a revocation that concerns
    /// it: of its key, of its session (a first or a later cut-off), of its subject.
    #[tokio::test]
    async fn a_token_found_unrevoked_is_looked_up_again_after_any_revocation() {
        let blocklist = Blocklist::new(Arc::new(memory::MemoryStore::default()), 1000);
        let mut session_token = token("t1");
        session_token.sid = Some("s1".into());
        session_token.iat = Some(now_unix() - 100);
        let cases: Vec<(VerifiedToken, Revocation)> = vec![
            (token("t0"), revoke("t0")),
            (
                session_token,
                Revocation::Session {
                    sid: "s1".into(),
                    at: now_unix() - 200,
                    exp: now_unix() + 600,
                },
            ),
        ];
        for (victim, revocation) in &cases {
            for _ in 0..2 {
                // Found unrevoked, then answered from the memo.
                assert_eq!(blocklist.check(victim).await, Verdict::Allowed);
            }
            blocklist.revoke(vec![revocation.clone()]).await.unwrap();
        }
        // The session's cut-off predates the token's `iat`: still allowed, memo set.
        let (session_token, _) = &cases[1];
        assert_eq!(blocklist.check(session_token).await, Verdict::Allowed);
        assert_eq!(blocklist.check(&cases[0].0).await, Verdict::Revoked);
        // A later cut-off of the same session revokes it.
        let later = Revocation::Session {
            sid: "s1".into(),
            at: now_unix(),
            exp: now_unix() + 600,
        };
        blocklist.revoke(vec![later]).await.unwrap();
        assert_eq!(blocklist.check(session_token).await, Verdict::Revoked);
        // A subject revocation after the memo was set.
        let alice = token("t2");
        assert_eq!(blocklist.check(&alice).await, Verdict::Allowed);
        assert_eq!(blocklist.check(&alice).await, Verdict::Allowed);
        let subject = Revocation::Subject {
            sub: "alice".into(),
            at: now_unix() + 1,
        };
        blocklist.revoke(vec![subject]).await.unwrap();
        assert_eq!(blocklist.check(&alice).await, Verdict::Revoked);
        // Unrelated revocations change the generation but not the verdict.
        let bob = token("t3");
        assert_eq!(blocklist.check(&bob).await, Verdict::Revoked, "alice's sub");
        let mut carol = token("t4");
        carol.sub = Some("carol".into());
        assert_eq!(blocklist.check(&carol).await, Verdict::Allowed);
        blocklist.revoke(vec![revoke("other")]).await.unwrap();
        assert_eq!(blocklist.check(&carol).await, Verdict::Allowed);
    }

    /// A memo written by one blocklist means nothing to another, whatever each holds.
    #[tokio::test]
    async fn a_memo_is_only_read_back_by_its_own_blocklist() {
        let first = Blocklist::new(Arc::new(memory::MemoryStore::default()), 1000);
        let second = Blocklist::new(Arc::new(memory::MemoryStore::default()), 1000);
        // One revocation each: the same generation, were they counted from one start.
        first.revoke(vec![revoke("y")]).await.unwrap();
        second.revoke(vec![revoke("x")]).await.unwrap();
        let shared = token("x");
        assert_eq!(first.check(&shared).await, Verdict::Allowed);
        assert_eq!(second.check(&shared).await, Verdict::Revoked);
        assert_eq!(first.check(&shared).await, Verdict::Allowed);
        assert_eq!(second.check(&shared).await, Verdict::Revoked);
    }
}
