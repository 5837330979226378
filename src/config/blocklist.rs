//! `blocklist:`: the revocation store (memory, SQLite, Redis with TLS or Sentinel),
//! its cache and what to do when it fails.

use super::checker::Checker;
use super::{file, BlocklistConfig, OnStoreError, RedisSentinelConfig, StoreKind};

impl Checker {
    pub(super) fn blocklist(&mut self, f: Option<file::BlocklistFile>) -> BlocklistConfig {
        let f = f.unwrap_or_default();
        let store = match f.store.as_deref().unwrap_or("sqlite") {
            "memory" => StoreKind::Memory,
            "sqlite" => StoreKind::Sqlite,
            "redis" => StoreKind::Redis,
            other => {
                self.error(
                    "blocklist.store",
                    format!("{other:?} is not a store; use memory, sqlite or redis"),
                );
                StoreKind::Memory
            }
        };
        if store == StoreKind::Redis && f.redis_url.is_none() {
            self.error(
                "blocklist.redis_url",
                "required when blocklist.store is redis",
            );
        }
        let tls = f
            .redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"));
        if let Some(url) = &f.redis_url {
            if !(url.starts_with("redis://") || tls || url.starts_with("unix://")) {
                self.error(
                    "blocklist.redis_url",
                    format!("{url:?} is not a redis://, rediss:// or unix:// URL"),
                );
            } else if url.contains("#insecure") {
                self.error(
                    "blocklist.redis_url",
                    "#insecure (TLS without verifying the certificate) is not supported: use blocklist.redis_ca_file for a private CA",
                );
            } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                self.error(
                    "blocklist.redis_url",
                    format!("not a usable Redis URL ({e}): check the host, the port (1-65535) and the database number"),
                );
            }
        }
        let redis_ca_file = f.redis_ca_file.as_deref().map(|raw| {
            let path = self.file_exists(raw, "blocklist.redis_ca_file");
            if !tls {
                // Harmless (and in the contract's own example): said, not refused.
                self.warning(
                    "blocklist.redis_ca_file",
                    "only used with a rediss:// blocklist.redis_url: ignored",
                );
            } else if path.is_file() {
                if let Err(e) = crate::tls::read_certs(&path) {
                    self.error("blocklist.redis_ca_file", e.to_string());
                }
            }
            path
        });
        let redis_sentinel = f.redis_sentinel.map(|s| self.redis_sentinel(s));
        let on_store_error = match f.on_store_error.as_deref().unwrap_or("deny") {
            "deny" => OnStoreError::Deny,
            "allow" => OnStoreError::Allow,
            other => {
                self.error(
                    "blocklist.on_store_error",
                    format!("{other:?}: use deny or allow"),
                );
                OnStoreError::Deny
            }
        };
        let cache_max_entries = f.cache_max_entries.unwrap_or(1_000_000);
        if cache_max_entries == 0 {
            self.error("blocklist.cache_max_entries", "must be at least 1");
        }
        if f.sqlite_path
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            self.error(
                "blocklist.sqlite_path",
                "is empty; leave it out for revocations.db",
            );
        }
        let sqlite_path = f.sqlite_path.unwrap_or_else(|| "revocations.db".to_owned());
        let sqlite_path = self.path_of(&sqlite_path);
        if store == StoreKind::Sqlite {
            self.sqlite_directory(&sqlite_path);
        }
        BlocklistConfig {
            store,
            sqlite_path,
            redis_url: f.redis_url,
            redis_ca_file,
            redis_sentinel,
            key_prefix: f.key_prefix.unwrap_or_else(|| "portcullis:".to_owned()),
            cache_max_entries,
            on_store_error,
        }
    }

    /// Warns (the file is only opened at start) when the SQLite file's directory is
    /// missing or read-only: the gateway could not create the file and its WAL there.
    fn sqlite_directory(&mut self, path: &std::path::Path) {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        match std::fs::metadata(dir) {
            Err(_) => self.warning(
                "blocklist.sqlite_path",
                format!(
                    "directory {} does not exist: the gateway will not start",
                    dir.display()
                ),
            ),
            Ok(meta) if meta.permissions().readonly() => self.warning(
                "blocklist.sqlite_path",
                format!(
                    "directory {} is read-only: SQLite needs to create the file and its WAL there",
                    dir.display()
                ),
            ),
            Ok(_) => {}
        }
    }

    pub(super) fn redis_sentinel(&mut self, f: file::RedisSentinelFile) -> RedisSentinelConfig {
        let master_name = f.master_name.unwrap_or_default();
        if master_name.is_empty() {
            self.error(
                "blocklist.redis_sentinel.master_name",
                "required: the name the Sentinels monitor the master under",
            );
        }
        let raw = f.addresses.unwrap_or_default();
        if raw.is_empty() {
            self.error(
                "blocklist.redis_sentinel.addresses",
                "required: at least one Sentinel host:port",
            );
        }
        let mut addresses = Vec::new();
        for (i, address) in raw.iter().enumerate() {
            let parsed = address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse().ok()?)))
                .filter(|(host, port): &(&str, u16)| !host.is_empty() && *port != 0);
            match parsed {
                Some((host, port)) => addresses.push((host.to_owned(), port)),
                None => self.error(
                    &format!("blocklist.redis_sentinel.addresses[{i}]"),
                    format!("{address:?} is not host:port"),
                ),
            }
        }
        RedisSentinelConfig {
            master_name,
            addresses,
        }
    }
}
