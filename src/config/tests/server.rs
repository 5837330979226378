// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `server:` and `admin:`.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    // A byte order mark (Windows editors) is not a second document.
    (
        "\u{feff}server:\n  listen: nowhere\n",
        "server.listen",
        Some(2),
        "\"nowhere\" is not an address",
    ),
    (
        "admin:\n",
        "admin",
        Some(1),
        "has no value: give it one, or leave the key out",
    ),
    (
        "logout:\n  methods: []\n",
        "logout.methods",
        Some(2),
        "is empty: list at least one method",
    ),
    (
        "server:\n  listen: nowhere\n",
        "server.listen",
        Some(2),
        "\"nowhere\" is not an address; use ip:port",
    ),
    (
        "server:\n  tls:\n    key_file: Cargo.toml\n",
        "server.tls.cert_file",
        Some(2),
        "required when server.tls is set",
    ),
    (
        "server:\n  tls:\n    cert_file: Cargo.toml\n",
        "server.tls.key_file",
        Some(2),
        "required when server.tls is set",
    ),
    (
        "server:\n  tls:\n    cert_file: missing-cert.pem\n    key_file: Cargo.toml\n",
        "server.tls.cert_file",
        Some(3),
        "missing-cert.pem does not exist",
    ),
    (
        "server:\n  tls:\n    cert_file: Cargo.toml\n    key_file: missing-key.pem\n",
        "server.tls.key_file",
        Some(4),
        "missing-key.pem does not exist",
    ),
    (
        "server:\n  tls:\n    cert_file: src\n    key_file: Cargo.toml\n",
        "server.tls.cert_file",
        Some(3),
        "src is a directory, not a file",
    ),
    // Both files exist, neither is PEM: crate::tls says why, under the section.
    (
        "server:\n  tls:\n    cert_file: Cargo.toml\n    key_file: Cargo.toml\n",
        "server.tls",
        Some(2),
        "holds no PEM certificate",
    ),
    (
        "server:\n  max_connections: 0\n",
        "server.max_connections",
        Some(2),
        "must be between 1 and 10000000",
    ),
    (
        "server:\n  max_header_bytes: 100\n",
        "server.max_header_bytes",
        Some(2),
        "must be between 1024 and 1048576 bytes",
    ),
    (
        "server:\n  max_header_bytes: 2000000\n",
        "server.max_header_bytes",
        Some(2),
        "must be between 1024 and 1048576 bytes",
    ),
    (
        "server:\n  max_connections: 10000001\n",
        "server.max_connections",
        Some(2),
        "must be between 1 and 10000000",
    ),
    (
        "server:\n  header_read_timeout: 200000000000000d\n",
        "server.header_read_timeout",
        Some(2),
        "\"200000000000000d\" is too long: at most 36500d",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:1\n    timeout: 36501d\n",
        "upstreams.app.timeout",
        Some(4),
        "is too long: at most 36500d",
    ),
    (
        "server:\n  idle_timeout: 0s\n",
        "server.idle_timeout",
        Some(2),
        "must be longer than 0s",
    ),
    (
        "server:\n  idle_timeout: soon\n",
        "server.idle_timeout",
        Some(2),
        "\"soon\" is not a duration",
    ),
    (
        "server:\n  header_read_timeout: 10 parsecs\n",
        "server.header_read_timeout",
        Some(2),
        "use e.g. 500ms, 30s, 15m, 20d",
    ),
    (
        "server:\n  listen: 0.0.0.0:8000\n  shutdown_grace: -1s\n",
        "server.shutdown_grace",
        Some(3),
        "is not a duration",
    ),
    (
        "admin:\n  listen: localhost\n  token: 0123456789abcdef\n",
        "admin.listen",
        Some(2),
        "\"localhost\" is not an address",
    ),
    (
        "admin:\n  token: \"  \"\n",
        "admin.token",
        Some(2),
        "is empty (it guards the revocation API)",
    ),
];

#[test]
fn server_and_admin_errors() {
    check_rows(ROWS);
}
