// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `blocklist:` (with `redis_sentinel:`) and `logout:`.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    (
        "blocklist:\n  store: sqlite\n  sqlite_path: \"\"\n",
        "blocklist.sqlite_path",
        Some(3),
        "is empty; leave it out for revocations.db",
    ),
    (
        "blocklist:\n  store: disk\n",
        "blocklist.store",
        Some(2),
        "\"disk\" is not a store; use memory, sqlite or redis",
    ),
    (
        "blocklist:\n  store: redis\n",
        "blocklist.redis_url",
        Some(1),
        "required when blocklist.store is redis",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: http://cache:6379\n",
        "blocklist.redis_url",
        Some(3),
        "\"http://cache:6379\" is not a redis://, rediss:// or unix:// URL",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: \"rediss://cache:6379/#insecure\"\n",
        "blocklist.redis_url",
        Some(3),
        "#insecure (TLS without verifying the certificate) is not supported",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: redis://cache:port\n",
        "blocklist.redis_url",
        Some(3),
        "not a usable Redis URL",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: rediss://cache:6379\n  redis_ca_file: redis-ca.pem\n",
        "blocklist.redis_ca_file",
        Some(4),
        "redis-ca.pem does not exist",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: rediss://cache:6379\n  redis_ca_file: Cargo.toml\n",
        "blocklist.redis_ca_file",
        Some(4),
        "holds no PEM certificate",
    ),
    (
        "blocklist:\n  store: memory\n  on_store_error: retry\n",
        "blocklist.on_store_error",
        Some(3),
        "\"retry\": use deny or allow",
    ),
    (
        "blocklist:\n  store: memory\n  cache_max_entries: 0\n",
        "blocklist.cache_max_entries",
        Some(3),
        "must be at least 1",
    ),
    (
        "blocklist:\n  store: memory\n  redis_sentinel:\n    addresses: [s1:26379]\n",
        "blocklist.redis_sentinel.master_name",
        Some(3),
        "required: the name the Sentinels monitor the master under",
    ),
    (
        "blocklist:\n  store: memory\n  redis_sentinel:\n    master_name: main\n",
        "blocklist.redis_sentinel.addresses",
        Some(3),
        "required: at least one Sentinel host:port",
    ),
    (
        "blocklist:\n  store: memory\n  redis_sentinel:\n    master_name: main\n    addresses:\n      - s1:26379\n      - s2\n",
        "blocklist.redis_sentinel.addresses[1]",
        Some(7),
        "\"s2\" is not host:port",
    ),
    (
        "blocklist:\n  store: memory\n  redis_sentinel:\n    master_name: main\n    addresses: [\"[::1]:0\"]\n",
        "blocklist.redis_sentinel.addresses[0]",
        Some(5),
        "\"[::1]:0\" is not host:port",
    ),
    (
        "logout:\n  path: logout\n",
        "logout.path",
        Some(2),
        "\"logout\" must be an absolute, normalized path such as /logout",
    ),
    (
        "logout:\n  path: /a/../logout\n",
        "logout.path",
        Some(2),
        "must be an absolute, normalized path",
    ),
    (
        "logout:\n  methods: [POST, \"GET POST\"]\n",
        "logout.methods[1]",
        Some(2),
        "\"GET POST\" is not an HTTP method",
    ),
    (
        "logout:\n  backchannel_audience: []\n",
        "logout.backchannel_audience",
        Some(2),
        "must list the gateway's client_id(s) at the provider, none empty",
    ),
    (
        "logout:\n  backchannel_audience: [gateway, \"\"]\n",
        "logout.backchannel_audience",
        Some(2),
        "none empty",
    ),
    (
        "logout:\n  backchannel_revokes: everything\n",
        "logout.backchannel_revokes",
        Some(2),
        "\"everything\" is not one of session, subject",
    ),
    (
        "logout:\n  backchannel_path: backchannel\n",
        "logout.backchannel_path",
        Some(2),
        "\"backchannel\" must be an absolute, normalized path",
    ),
    // The base jwt has a secret only: no provider keys, issuer or audience.
    (
        "logout:\n  backchannel_path: /backchannel\n",
        "logout.backchannel_path",
        Some(2),
        "needs jwt.jwks_url or jwt.discovery",
    ),
    (
        "logout:\n  backchannel_path: /backchannel\n",
        "logout.backchannel_path",
        Some(2),
        "needs jwt.issuer",
    ),
    (
        "logout:\n  backchannel_path: /backchannel\n",
        "logout.backchannel_path",
        Some(2),
        "needs logout.backchannel_audience or jwt.audience",
    ),
];

#[test]
fn blocklist_and_logout_errors() {
    check_rows(ROWS);
}
