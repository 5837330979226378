//! `blocklist.store: memory`: volatile, for tests and trying things out. Everything is
//! forgotten on restart.

use super::{BoxFuture, Kind, Revocation, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;

/// Revocations in a map. Nothing else writes to it, so its change feed is always empty.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<(u8, String), Revocation>>,
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
            let keep_old = matches!(
                (entries.get(&slot), &r),
                (Some(Revocation::Subject { at: old, .. }), Revocation::Subject { at, .. }) if old > at
            );
            if !keep_old {
                entries.insert(slot, r);
            }
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

    fn purge_expired(&self, now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|_, r| r.is_live(now));
        let purged = (before - entries.len()) as u64;
        Box::pin(async move { Ok(purged) })
    }
}
