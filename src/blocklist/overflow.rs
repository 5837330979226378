//! The overflow tier: a bounded moka cache of the store's answers, for when more
//! revocations are live than `blocklist.cache_max_entries` lets memory hold.
//!
//! Once memory has overflowed, a token not found there may still be revoked in the
//! store. Asking the store on every request made every legitimate request one SQLite
//! read or one Redis round trip (issue 14). Here each store key (`jti`, `sid`, `sub`)
//! is asked at most once per [`STALE_AFTER`], whatever the request rate:
//!
//! - **One lookup per key at a time.** The cached value is a `OnceCell` put in the map
//!   *before* the store is asked; every request for that key awaits the same cell, so
//!   a hot token costs one store lookup, not one per concurrent request.
//! - **Never trusted longer than the staleness bound.** An entry lives [`STALE_AFTER`]
//!   from when its lookup began (moka's time-to-live from insertion, which precedes the
//!   lookup), then the next request asks again. So a revocation written by another
//!   replica is seen within the same bound as the change feed gives memory.
//! - **Dropped when the feed reports a revocation of that key** ([`Overflow::forget`],
//!   called for every revocation the blocklist learns of). Because the cell was in the
//!   map before its lookup began, removing it also removes any answer that lookup may
//!   yet bring back from before the revocation: requests after the removal make a new
//!   cell and ask again, so a logout through this replica takes effect at once.
//!
//! Keys are 128-bit keyed SipHash digests of kind and key (random keys per process:
//! nobody can aim a collision), so a lookup allocates nothing.

use super::{issued_before, Kind, Revocation, Store, StoreError, STALE_AFTER, WHOLE_SESSION};
use crate::auth::verify::VerifiedToken;
use crate::metrics::CacheStats;
use moka::notification::RemovalCause;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The bound of the answer cache. Each entry weighs [`ENTRY_BYTES`], so this holds about
/// 80 000 keys: the distinct `jti`/`sid`/`sub` keys requests touch within one
/// [`STALE_AFTER`], after which entries expire anyway.
pub const OVERFLOW_CACHE_BYTES: u64 = 32 << 20;

/// What one entry costs: key, `Arc<OnceCell<..>>`, moka's per-entry bookkeeping.
const ENTRY_BYTES: u32 = 400;

/// A store key as a 128-bit digest of its kind and text.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random: one word is the map's hash.
        state.write_u64(self.1);
    }
}

/// What the store said about a key, reduced to what a check needs: refused when
/// `exp >= now` and the token was issued before `cutoff` (a `jti` revocation refuses
/// every token, a subject's never expires).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    exp: u64,
    cutoff: u64,
}

impl Cut {
    fn of(revocation: &Revocation) -> Cut {
        match *revocation {
            Revocation::Token { exp, .. } => Cut {
                exp,
                cutoff: WHOLE_SESSION,
            },
            Revocation::Session { at, exp, .. } => Cut { exp, cutoff: at },
            Revocation::Subject { at, .. } => Cut {
                exp: u64::MAX,
                cutoff: at,
            },
        }
    }
}

/// One key's answer, filled by the first request that needs it.
type Answer = Arc<OnceCell<Option<Cut>>>;

/// The cache of store answers (see the module documentation).
pub struct Overflow {
    answers: moka::sync::Cache<Key, Answer, BuildHasherDefault<super::set::DigestHasher>>,
    hasher: SipHasher13,
    stats: Arc<CacheStats>,
}

impl Overflow {
    /// An empty tier; size-evictions, hits and misses are counted in `stats`.
    pub fn new(stats: Arc<CacheStats>) -> Overflow {
        let evictions = stats.clone();
        let answers = moka::sync::Cache::builder()
            .max_capacity(OVERFLOW_CACHE_BYTES)
            .weigher(|_: &Key, _: &Answer| ENTRY_BYTES)
            .time_to_live(STALE_AFTER)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(BuildHasherDefault::default());
        let state = std::hash::RandomState::new();
        Overflow {
            answers,
            hasher: SipHasher13::new_with_keys(state.hash_one(1u8), state.hash_one(2u8)),
            stats,
        }
    }

    fn key(&self, kind: Kind, key: &str) -> Key {
        let mut h = self.hasher;
        h.write_u8(kind as u8);
        h.write(key.as_bytes());
        let (hi, lo) = h.finish128().as_u64();
        Key(hi, lo)
    }

    /// Drops the cached answer for `revocation`'s key: the store now says otherwise.
    pub fn forget(&self, revocation: &Revocation) {
        let (kind, key, _) = revocation.parts();
        self.answers.invalidate(&self.key(kind, key));
    }

    /// Whether the store revokes `token` under any of its keys, from cached answers
    /// where they are fresh enough.
    pub async fn is_revoked(
        &self,
        store: &dyn Store,
        token: &VerifiedToken,
        now: u64,
    ) -> Result<bool, StoreError> {
        let keys = [
            Some((Kind::Token, token.revocation_key.as_str())),
            token.twin_key.as_deref().map(|twin| (Kind::Token, twin)),
            token.sid_key().map(|sid| (Kind::Session, sid)),
            token.sub_key().map(|sub| (Kind::Subject, sub)),
        ];
        for (kind, key) in keys.into_iter().flatten() {
            if let Some(cut) = self.answer(store, kind, key).await? {
                if cut.exp >= now && issued_before(token.iat, cut.cutoff) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The store's answer for one key: cached, awaited from a lookup in flight, or
    /// asked now.
    async fn answer(
        &self,
        store: &dyn Store,
        kind: Kind,
        key: &str,
    ) -> Result<Option<Cut>, StoreError> {
        let cell = self.answers.get_with(self.key(kind, key), Answer::default);
        if let Some(&cut) = cell.get() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(cut);
        }
        let cut = cell
            .get_or_try_init(|| async {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                // A failed lookup leaves the cell empty: the next request asks again.
                Ok::<_, StoreError>(store.lookup(kind, key).await?.as_ref().map(Cut::of))
            })
            .await?;
        Ok(*cut)
    }

    /// Answers held and their weight in bytes (pending work applied first).
    pub fn size(&self) -> (u64, u64) {
        self.answers.run_pending_tasks();
        (self.answers.entry_count(), self.answers.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::TokenType;
    use crate::blocklist::memory::MemoryStore;
    use crate::clock::now_unix;

    fn token(jti: &str, sub: &str) -> VerifiedToken {
        VerifiedToken {
            claims: Default::default(),
            token_type: TokenType::Access,
            fresh: false,
            csrf: None,
            sub: Some(sub.into()),
            sid: None,
            iat: Some(now_unix() - 10),
            exp: now_unix() + 600,
            provider: 0,
            revocation_key: jti.into(),
            twin_key: None,
            namespaced: None,
            identity: Vec::new(),
            revocation_memo: Default::default(),
        }
    }

    #[tokio::test]
    async fn answers_are_reused_forgotten_on_revocation_and_expire() {
        let store = MemoryStore::default();
        let stats = Arc::new(CacheStats::default());
        let overflow = Overflow::new(stats.clone());
        let now = now_unix();
        let t = token("j1", "alice");
        for _ in 0..100 {
            assert!(!overflow.is_revoked(&store, &t, now).await.unwrap());
        }
        // Two keys (jti, sub), asked once each.
        assert_eq!(stats.misses.load(Ordering::Relaxed), 2);
        assert_eq!(stats.hits.load(Ordering::Relaxed), 198);

        let revocation = Revocation::Token {
            key: "j1".into(),
            exp: now + 600,
        };
        store.record(vec![revocation.clone()]).await.unwrap();
        // The cached "not revoked" is still trusted (within the bound)...
        assert!(!overflow.is_revoked(&store, &t, now).await.unwrap());
        // ...until the feed reports the revocation of that key.
        overflow.forget(&revocation);
        assert!(overflow.is_revoked(&store, &t, now).await.unwrap());

        // A subject revocation nobody reported here is found once the bound passes.
        let other = token("j2", "bob");
        assert!(!overflow.is_revoked(&store, &other, now).await.unwrap());
        let cut = Revocation::Subject {
            sub: "bob".into(),
            at: now,
        };
        store.record(vec![cut]).await.unwrap();
        tokio::time::sleep(STALE_AFTER + std::time::Duration::from_millis(50)).await;
        assert!(overflow.is_revoked(&store, &other, now).await.unwrap());
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_lookup() {
        let store = Arc::new(MemoryStore::default());
        let stats = Arc::new(CacheStats::default());
        let overflow = Arc::new(Overflow::new(stats.clone()));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (store, overflow) = (store.clone(), overflow.clone());
                tokio::spawn(async move {
                    let t = token("j", "s");
                    overflow.is_revoked(&*store, &t, now_unix()).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(!task.await.unwrap());
        }
        assert_eq!(stats.misses.load(Ordering::Relaxed), 2);
    }
}
