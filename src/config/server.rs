//! `server:`: the edge listener, its TLS files and connection limits.

use super::checker::Checker;
use super::{file, ServerConfig, TlsFiles};
use std::time::Duration;

/// The most `server.max_connections` takes.
const MAX_CONNECTIONS: u64 = 10_000_000;

impl Checker {
    pub(super) fn server(&mut self, f: Option<file::ServerFile>) -> ServerConfig {
        let f = f.unwrap_or_default();
        let listen = self.socket_addr(f.listen.as_deref(), "server.listen", "0.0.0.0:8000");
        let tls = f.tls.map(|t| {
            let mut required = |raw: Option<String>, key: &str| match raw {
                Some(raw) if !raw.is_empty() => self.file_exists(&raw, key),
                _ => {
                    self.error(key, "required when server.tls is set");
                    std::path::PathBuf::new()
                }
            };
            let files = TlsFiles {
                cert_file: required(t.cert_file, "server.tls.cert_file"),
                key_file: required(t.key_file, "server.tls.key_file"),
            };
            if files.cert_file.is_file() && files.key_file.is_file() {
                if let Err(e) = crate::tls::server_config(&files.cert_file, &files.key_file) {
                    self.error("server.tls", e.to_string());
                }
            }
            files
        });
        let max_connections = f.max_connections.unwrap_or(10_000);
        // tokio's semaphore holds at most 2^61 permits (and panics beyond); no machine
        // holds more than a few million sockets.
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            self.error(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            );
        }
        let max_header_bytes = f.max_header_bytes.unwrap_or(16_384);
        if !(1024..=1 << 20).contains(&max_header_bytes) {
            self.error(
                "server.max_header_bytes",
                "must be between 1024 and 1048576 bytes",
            );
        }
        let idle_timeout = self.duration(
            f.idle_timeout.as_deref(),
            "server.idle_timeout",
            Duration::from_secs(60),
        );
        if idle_timeout.is_zero() {
            self.error("server.idle_timeout", "must be longer than 0s");
        }
        let header_read_timeout = self.duration(
            f.header_read_timeout.as_deref(),
            "server.header_read_timeout",
            Duration::from_secs(10),
        );
        if header_read_timeout.is_zero() {
            self.error(
                "server.header_read_timeout",
                "must be more than 0s: it is how long a client may take to send a request's \
                 head (and to send a first request at all); 0s would close every connection",
            );
        }
        ServerConfig {
            listen,
            tls,
            idle_timeout: idle_timeout.max(Duration::from_millis(1)),
            max_connections: max_connections.clamp(1, MAX_CONNECTIONS) as usize,
            header_read_timeout,
            max_header_bytes: max_header_bytes.clamp(1024, 1 << 20) as usize,
            shutdown_grace: self.duration(
                f.shutdown_grace.as_deref(),
                "server.shutdown_grace",
                Duration::from_secs(30),
            ),
            access_log: f.access_log.unwrap_or(true),
        }
    }
}
