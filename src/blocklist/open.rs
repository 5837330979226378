//! Opening the store `blocklist.store` names: used by the server at start and by the
//! `revoke` command, which writes into the same store from another process.

use super::{memory::MemoryStore, redis, sqlite::SqliteStore, Store, StoreError};
use crate::config::{BlocklistConfig, StoreKind};
use std::sync::Arc;

/// Opens the configured revocation store (for Redis: connects, and fails if it cannot).
pub async fn open_store(config: &BlocklistConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::default()),
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&config.sqlite_path)?),
        StoreKind::Redis => {
            let options = redis::connect::RedisOptions {
                url: config.redis_url.clone().unwrap_or_default(),
                ca_file: config.redis_ca_file.clone(),
                sentinel: config
                    .redis_sentinel
                    .as_ref()
                    .map(|s| redis::SentinelOptions {
                        master_name: s.master_name.clone(),
                        addresses: s.addresses.clone(),
                    }),
            };
            Arc::new(redis::RedisStore::connect(&options, &config.key_prefix).await?)
        }
    })
}
