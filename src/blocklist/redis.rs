//! `blocklist.store: redis`: shared by every replica. (Being implemented.)

use super::{BoxFuture, Kind, Revocation, Store, StoreError};

/// The Redis store.
pub struct RedisStore;

impl RedisStore {
    /// Connects to `url`, keeping every key under `prefix`.
    pub async fn open(_url: &str, _prefix: &str) -> Result<RedisStore, StoreError> {
        Err(StoreError(
            "blocklist.store: redis is not supported yet by this build".into(),
        ))
    }
}

impl Store for RedisStore {
    fn record(&self, _r: Vec<Revocation>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
    fn load_live(&self, _now: u64) -> BoxFuture<'_, Result<Vec<Revocation>, StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
    fn changes_since(
        &self,
        _c: &str,
    ) -> BoxFuture<'_, Result<(Vec<Revocation>, String), StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
    fn cursor(&self) -> BoxFuture<'_, Result<String, StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
    fn lookup(
        &self,
        _k: Kind,
        _key: &str,
    ) -> BoxFuture<'_, Result<Option<Revocation>, StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
    fn purge_expired(&self, _now: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Err(StoreError("unsupported".into())) })
    }
}
