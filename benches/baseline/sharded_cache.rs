//! The verified-token cache as it was before issue 14 (a count-bounded sharded map that
//! drops a tenth of a full shard, hot or not), kept only as the baseline of the churn
//! measurement in benches/auth.rs. Code as it was, minus its tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;

const SHARDS: usize = 16;

/// Tokens are attacker-chosen strings, but only tokens with a valid signature are ever
/// inserted, and the hasher is seeded per process: colliding keys cannot be planted.
type Hasher = foldhash::quality::RandomState;

/// One shard: token -> cached value.
type Shard<V> = RwLock<HashMap<Box<str>, V, Hasher>>;

/// A bounded map from token to a cached verdict `V` whose expiry `expires_at` reports.
pub struct TokenCache<V> {
    shards: Box<[Shard<V>]>,
    per_shard: usize,
    hasher: Hasher,
}

/// What the cache needs to know about a value: when it stops being useful.
pub trait Expiring {
    /// Unix seconds after which the entry may be dropped.
    fn expires_at(&self) -> u64;
}

impl<V: Clone + Expiring> TokenCache<V> {
    /// A cache holding at most about `capacity` entries (0 disables it).
    pub fn new(capacity: u64) -> TokenCache<V> {
        let hasher = Hasher::default();
        TokenCache {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            per_shard: usize::try_from(capacity).unwrap_or(usize::MAX) / SHARDS,
            hasher,
        }
    }

    fn shard(&self, token: &str) -> &Shard<V> {
        &self.shards[(self.hasher.hash_one(token) as usize) % SHARDS]
    }

    /// The cached value for `token`.
    pub fn get(&self, token: &str) -> Option<V> {
        let shard = self.shard(token).read().unwrap_or_else(|p| p.into_inner());
        shard.get(token).cloned()
    }

    /// Caches `value` for `token`, making room first if the shard is full.
    pub fn insert(&self, token: &str, value: V, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(token).write().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            shard.retain(|_, v| v.expires_at() >= now);
            // Still full of live tokens: drop a tenth, whichever come first. Any entry
            // is as good as another to lose (it only costs a signature check later).
            if shard.len() >= self.per_shard {
                let doomed: Vec<Box<str>> = shard
                    .keys()
                    .take(self.per_shard / 10 + 1)
                    .cloned()
                    .collect();
                for key in doomed {
                    shard.remove(&key);
                }
            }
        }
        shard.insert(token.into(), value);
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len() as u64)
            .sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
