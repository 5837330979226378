//! `blocklist.store: memory`: volatile, for tests and trying things out. Everything is
//! forgotten on restart.

use super::{BoxFuture, Kind, Revocation, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;

/// Revocations in a map. Nothing else writes to it, so its change feed is always empty.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<(u8, String), Revocation>>,
    /// Replay memory: key -> expiry.
    seen_once: Mutex<HashMap<String, u64>>,
}

fn slot(kind: Kind, key: &str) -> (u8, String) {
    (kind as u8, key.to_owned())
}

fn slot_of(r: &Revocation) -> (u8, String) {
    match r {
        Revocation::Token { key, .. } => slot(Kind::Token, key),
        Revocation::Session { sid, .. } => slot(Kind::Session, sid),
        Revocation::Subject { sub, .. } => slot(Kind::Subject, sub),
    }
}

impl MemoryStore {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(u8, String), Revocation>> {
        // A panic while holding this lock cannot leave the map half-updated (every
        // critical section is a single insert/remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn record(&self, revocations: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut entries = self.entries();
        for r in revocations {
            let slot = slot_of(&r);
            // The same merge as the durable stores: a later expiry, a later cut-off win.
            let merged = match (entries.get(&slot), r) {
                (Some(Revocation::Subject { at: old, .. }), Revocation::Subject { sub, at }) => {
                    Revocation::Subject {
                        sub,
                        at: at.max(*old),
                    }
                }
                (
                    Some(Revocation::Session {
                        at: old_at,
                        exp: old_exp,
                        ..
                    }),
                    Revocation::Session { sid, at, exp },
                ) => Revocation::Session {
                    sid,
                    at: at.max(*old_at),
                    exp: exp.max(*old_exp),
                },
                (Some(Revocation::Token { exp: old, .. }), Revocation::Token { key, exp }) => {
                    Revocation::Token {
                        key,
                        exp: exp.max(*old),
                    }
                }
                (_, r) => r,
            };
            entries.insert(slot, merged);
        }
        Box::pin(async { Ok(()) })
    }

    fn load_live(&self, now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>> {
        let live = self
            .entries()
            .values()
            .filter(|r| r.is_live(now))
            .cloned()
            .collect();
        Box::pin(async { Ok(live) })
    }

    fn changes_since(
        &self,
        cursor: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>> {
        let cursor = cursor.to_owned();
        Box::pin(async move { Ok((Vec::new(), cursor)) })
    }

    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>> {
        Box::pin(async { Ok(String::new()) })
    }

    fn lookup(
        &self,
        kind: Kind,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>> {
        let found = self.entries().get(&slot(kind, key)).cloned();
        Box::pin(async { Ok(found) })
    }

    fn record_once(
        &self,
        key: &str,
        exp: u64,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let first = {
            let mut seen = self.seen_once.lock().unwrap_or_else(|p| p.into_inner());
            let now = crate::clock::now_unix();
            match seen.get(key) {
                Some(&until) if until >= now => false,
                _ => {
                    seen.insert(key.to_owned(), exp);
                    true
                }
            }
        };
        if !first {
            return Box::pin(async { Ok(false) });
        }
        let recorded = self.record(revocations);
        Box::pin(async move { recorded.await.map(|()| true) })
    }

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.seen_once
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until >= now);
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|_, r| r.is_live(now));
        let purged = (before - entries.len()) as u64;
        Box::pin(async move { Ok(purged) })
    }
}
