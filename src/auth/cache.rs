//! The verified-token cache: token bytes -> what verification concluded.
//!
//! A `moka::sync::Cache`, for the three things a hand-written map lacked (issue 14):
//!
//! - **A bound in bytes.** Tokens from identity providers are 1-4 KB, so a count says
//!   little about memory; each entry is weighed by what it holds (see [`Weighted`]) and
//!   the cache keeps the total under `jwt.token_cache_max_bytes`.
//! - **Scan resistance.** moka admits a new entry over a victim only when its TinyLFU
//!   frequency estimate is higher, so a flood of one-shot tokens (a crawler, a client
//!   minting a token per request) does not push the hot tokens out: each evicted hot
//!   token would cost a full signature check again (53 µs for ES256).
//! - **Expiry per entry** at the last second the token is accepted (its `exp` plus the
//!   leeway), through moka's [`Expiry`], so dead tokens stop taking room.
//!
//! The key is the whole token string: a lookup compares every byte, so a token that
//! differs from a cached one in one byte (a forged signature) is a miss and is
//! verified in full. The map's hasher is foldhash seeded per process: only tokens with
//! a valid signature are ever inserted, so colliding keys cannot be planted.

use crate::metrics::CacheStats;
use moka::notification::RemovalCause;
use moka::Expiry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Hasher = foldhash::quality::RandomState;

/// What the cache needs to know about a value.
pub trait Weighted {
    /// Unix second of the token's `exp`: the entry lives until `exp + leeway`.
    fn expires_at(&self) -> u64;
    /// Bytes the value keeps alive on the heap (strings, header values, claims), on top
    /// of the fixed per-entry cost the cache adds itself.
    fn heap_bytes(&self) -> usize;
}

/// moka's own bookkeeping per entry (the `Arc`ed key and value entry, deque and timer
/// wheel nodes, the frequency sketch slot), plus the map slot: measured by
/// tests/token_cache_memory.rs (8 MiB weighed, about 10 MiB of RSS) rather than
/// derived, so it is a round figure on the safe side.
const ENTRY_OVERHEAD: usize = 320;

/// A bounded, byte-weighted map from token to a verdict `V`.
pub struct TokenCache<V> {
    /// `None` when `jwt.token_cache_max_bytes` is 0: every request is verified in full.
    inner: Option<moka::sync::Cache<Box<str>, V, Hasher>>,
}

/// Expires an entry at the end of the last second its token is accepted.
struct UntilExp {
    leeway: u64,
}

impl<V: Weighted> Expiry<Box<str>, V> for UntilExp {
    fn expire_after_create(&self, _: &Box<str>, value: &V, _: Instant) -> Option<Duration> {
        // A token is accepted while the Unix second is below `exp + leeway` (see
        // `verify::is_expired`), so it is good until the instant `exp + leeway`.
        let until = Duration::from_secs(value.expires_at().saturating_add(self.leeway));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Some(until.saturating_sub(now))
    }

    fn expire_after_update(
        &self,
        key: &Box<str>,
        value: &V,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, at)
    }
}

/// An entry's weight: the token bytes, what the value holds, moka's overhead.
fn weigh<V: Weighted>(key: &str, value: &V) -> u32 {
    let bytes = key.len() + value.heap_bytes() + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl<V: Weighted + Clone + Send + Sync + 'static> TokenCache<V> {
    /// A cache of at most `max_bytes` (0 disables it) whose entries live through their
    /// `exp + leeway`; evictions for size are counted in `stats`.
    pub fn new(max_bytes: u64, leeway: u64, stats: Arc<CacheStats>) -> TokenCache<V> {
        if max_bytes == 0 {
            return TokenCache { inner: None };
        }
        let inner = moka::sync::Cache::<Box<str>, V>::builder()
            .max_capacity(max_bytes)
            .weigher(|key, value| weigh(key, value))
            .expire_after(UntilExp { leeway })
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(Hasher::default());
        TokenCache { inner: Some(inner) }
    }

    /// The cached value for `token` (no allocation: looked up by `&str`).
    pub fn get(&self, token: &str) -> Option<V> {
        self.inner.as_ref()?.get(token)
    }

    /// Caches `value` for `token`; moka decides whether it is admitted.
    pub fn insert(&self, token: &str, value: V) {
        if let Some(inner) = &self.inner {
            inner.insert(token.into(), value);
        }
    }

    /// Entries held (moka's count, exact after [`TokenCache::sync`]).
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.entry_count())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight held, in bytes (exact after [`TokenCache::sync`]).
    pub fn weighted_size(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.weighted_size())
    }

    /// Applies moka's pending admissions, evictions and expirations now (it otherwise
    /// does so in small steps on later calls): for scrapes and tests.
    pub fn sync(&self) {
        if let Some(inner) = &self.inner {
            inner.run_pending_tasks();
        }
    }

    /// Drops every entry (a new JWKS key set: verdicts under the old one are void).
    pub fn clear(&self) {
        if let Some(inner) = &self.inner {
            inner.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TokenCache, Weighted};
    use crate::clock::now_unix;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[derive(Clone, Debug, PartialEq)]
    struct Exp(u64);
    impl Weighted for Exp {
        fn expires_at(&self) -> u64 {
            self.0
        }
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn bounded_by_bytes_counting_the_token() {
        let stats = Arc::default();
        let cache = TokenCache::new(64 * 1024, 0, Arc::clone(&stats));
        let exp = now_unix() + 600;
        let pad = "x".repeat(4000);
        for i in 0..200 {
            cache.insert(&format!("{pad}{i}"), Exp(exp));
        }
        cache.sync();
        // Each entry weighs over 4 KB: at most 16 fit in 64 KiB.
        assert!(cache.len() <= 16, "{}", cache.len());
        assert!(
            cache.weighted_size() <= 64 * 1024,
            "{}",
            cache.weighted_size()
        );
        assert!(stats.evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn one_byte_different_is_a_miss_and_zero_is_off() {
        let cache = TokenCache::new(1 << 20, 0, Arc::default());
        let exp = now_unix() + 600;
        cache.insert("header.payload.signature", Exp(exp));
        assert_eq!(cache.get("header.payload.signature"), Some(Exp(exp)));
        for other in [
            "header.payload.signaturf",
            "header.payload.signatur",
            "header.payload.signature ",
            "Header.payload.signature",
        ] {
            assert_eq!(cache.get(other), None, "{other}");
        }
        let off: TokenCache<Exp> = TokenCache::new(0, 0, Arc::default());
        off.insert("x", Exp(exp));
        assert_eq!(off.get("x"), None);
        assert!(off.is_empty());
    }

    #[test]
    fn an_entry_expires_after_its_exp_second() {
        let cache = TokenCache::new(1 << 20, 0, Arc::default());
        let now = now_unix();
        cache.insert("dead", Exp(now - 1));
        cache.insert("live", Exp(now + 600));
        assert_eq!(cache.get("dead"), None, "expired before it was inserted");
        cache.insert("ends", Exp(now));
        // Good through the second `now`, gone by the end of it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(cache.get("ends"), None);
        assert!(cache.get("live").is_some());
    }
}
