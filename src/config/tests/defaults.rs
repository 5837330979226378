// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! Valid files: the value each left-out key takes, and the normalizations `parse` does.

use super::{load, Config};

/// `(yaml, what is checked, the value as text, expected)`.
type DefaultRow = (
    &'static str,
    &'static str,
    fn(&Config) -> String,
    &'static str,
);

pub(super) const COUNT: usize = ROWS.len();

const ROWS: &[DefaultRow] = &[
    ("", "server.listen", |c| c.server.listen.to_string(), "0.0.0.0:8000"),
    ("", "server.tls", |c| format!("{:?}", c.server.tls), "None"),
    ("", "server.max_connections", |c| c.server.max_connections.to_string(), "10000"),
    ("", "server.header_read_timeout", |c| format!("{:?}", c.server.header_read_timeout), "10s"),
    ("", "server.idle_timeout", |c| format!("{:?}", c.server.idle_timeout), "60s"),
    ("", "server.max_header_bytes", |c| c.server.max_header_bytes.to_string(), "16384"),
    ("", "server.shutdown_grace", |c| format!("{:?}", c.server.shutdown_grace), "30s"),
    ("", "server.access_log", |c| c.server.access_log.to_string(), "true"),
    ("", "admin", |c| c.admin.is_some().to_string(), "false"),
    (
        "admin:\n  token: 0123456789abcdef\n",
        "admin.listen",
        |c| c.admin.as_ref().map(|a| a.listen.to_string()).unwrap_or_default(),
        "127.0.0.1:9901",
    ),
    ("", "jwt.algorithms", |c| format!("{:?}", c.jwt.algorithms), "[HS256]"),
    (
        "jwt:\n  algorithms: [HS256, HS256, HS512]\n  secret: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
        "jwt.algorithms, repeats dropped",
        |c| format!("{:?}", c.jwt.algorithms),
        "[HS256, HS512]",
    ),
    ("", "jwt.signing", |c| format!("{:?}", c.jwt.signing.as_ref().map(|s| s.algorithm)), "Some(HS256)"),
    ("", "jwt.jwks_url", |c| format!("{:?}", c.jwt.jwks_url), "None"),
    ("", "jwt.jwks_refresh", |c| format!("{:?}", c.jwt.jwks_refresh), "300s"),
    ("", "jwt.discovery", |c| c.jwt.discovery.to_string(), "false"),
    ("", "jwt.issuer", |c| format!("{:?}", c.jwt.issuer), "None"),
    ("", "jwt.audience", |c| format!("{:?}", c.jwt.audience), "[]"),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  audience: my-api\n",
        "jwt.audience, one string",
        |c| format!("{:?}", c.jwt.audience),
        "[\"my-api\"]",
    ),
    ("", "jwt.leeway", |c| format!("{:?}", c.jwt.leeway), "0ns"),
    ("", "jwt.token_cache_max_bytes", |c| c.jwt.token_cache_max_bytes.to_string(), "67108864"),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 512KiB\n",
        "jwt.token_cache_max_bytes, KiB",
        |c| c.jwt.token_cache_max_bytes.to_string(),
        "524288",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 8 MiB\n",
        "jwt.token_cache_max_bytes, MiB with a space",
        |c| c.jwt.token_cache_max_bytes.to_string(),
        "8388608",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 1000000\n",
        "jwt.token_cache_max_bytes, a number",
        |c| c.jwt.token_cache_max_bytes.to_string(),
        "1000000",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: \"4096\"\n",
        "jwt.token_cache_max_bytes, digits in a string",
        |c| c.jwt.token_cache_max_bytes.to_string(),
        "4096",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 0\n",
        "jwt.token_cache_max_bytes, 0 turns the cache off",
        |c| c.jwt.token_cache_max_bytes.to_string(),
        "0",
    ),
    ("", "jwt.required_typ", |c| format!("{:?}", c.jwt.required_typ), "None"),
    ("", "jwt.token_location", |c| format!("{:?}", c.jwt.token_location), "[Headers]"),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_location: [cookie, header, cookies, query]\n",
        "jwt.token_location, aliases and repeats",
        |c| format!("{:?}", c.jwt.token_location),
        "[Cookies, Headers, Query]",
    ),
    ("", "jwt.header_name", |c| c.jwt.header_name.to_string(), "authorization"),
    ("", "jwt.header_type", |c| c.jwt.header_type.clone(), "Bearer"),
    ("", "jwt.access_cookie_name", |c| c.jwt.access_cookie_name.clone(), "access_token_cookie"),
    ("", "jwt.refresh_cookie_name", |c| c.jwt.refresh_cookie_name.clone(), "refresh_token_cookie"),
    ("", "jwt.query_string_name", |c| c.jwt.query_string_name.clone(), "token"),
    ("", "jwt.csrf.enabled", |c| c.jwt.csrf.enabled.to_string(), "true"),
    ("", "jwt.csrf.header_name", |c| c.jwt.csrf.header_name.to_string(), "x-csrf-token"),
    ("", "jwt.csrf.methods", |c| format!("{:?}", c.jwt.csrf.methods), "[POST, PUT, PATCH, DELETE]"),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  csrf:\n    methods: [post, \" put \"]\n",
        "jwt.csrf.methods, trimmed and upper-cased",
        |c| format!("{:?}", c.jwt.csrf.methods),
        "[POST, PUT]",
    ),
    ("blocklist: {}\n", "blocklist.store", |c| format!("{:?}", c.blocklist.store), "Sqlite"),
    (
        "blocklist: {}\n",
        "blocklist.sqlite_path, beside the file",
        |c| c.blocklist.sqlite_path.strip_prefix(env!("CARGO_MANIFEST_DIR")).map(|p| p.display().to_string()).unwrap_or_default(),
        "revocations.db",
    ),
    (
        "blocklist:\n  sqlite_path: /var/lib/portcullis/r.db\n",
        "blocklist.sqlite_path, absolute",
        |c| c.blocklist.sqlite_path.display().to_string(),
        "/var/lib/portcullis/r.db",
    ),
    ("", "blocklist.key_prefix", |c| c.blocklist.key_prefix.clone(), "portcullis:"),
    ("", "blocklist.cache_max_entries", |c| c.blocklist.cache_max_entries.to_string(), "1000000"),
    ("", "blocklist.on_store_error", |c| format!("{:?}", c.blocklist.on_store_error), "Deny"),
    (
        "blocklist:\n  store: redis\n  redis_url: redis://127.0.0.1:6379\n  redis_sentinel:\n    master_name: main\n    addresses: [\"s1:26379\", \"[::1]:26380\"]\n",
        "blocklist.redis_sentinel",
        |c| format!("{:?}", c.blocklist.redis_sentinel.as_ref().map(|s| &s.addresses)),
        "Some([(\"s1\", 26379), (\"::1\", 26380)])",
    ),
    ("", "logout.path", |c| c.logout.path.clone(), "/logout"),
    ("", "logout.methods", |c| format!("{:?}", c.logout.methods), "[POST]"),
    ("", "logout.revoke_refresh", |c| c.logout.revoke_refresh.to_string(), "true"),
    ("", "logout.forward", |c| c.logout.forward.to_string(), "false"),
    ("", "logout.backchannel_path", |c| format!("{:?}", c.logout.backchannel_path), "None"),
    ("", "logout.backchannel_revokes", |c| format!("{:?}", c.logout.backchannel_revokes), "Session"),
    (
        "jwt:\n  algorithms: [RS256]\n  jwks_url: https://idp.test/jwks\n  issuer: https://idp.test\n  audience: [gw, other]\nlogout:\n  backchannel_path: /backchannel\n",
        "logout.backchannel_audience, from jwt.audience",
        |c| format!("{:?}", c.logout.backchannel_audience),
        "[\"gw\", \"other\"]",
    ),
    ("", "upstreams.app.connect_timeout", |c| format!("{:?}", c.upstreams[0].connect_timeout), "2s"),
    ("", "upstreams.app.timeout", |c| format!("{:?}", c.upstreams[0].timeout), "30s"),
    ("", "upstreams.app.ca_file", |c| format!("{:?}", c.upstreams[0].ca_file), "None"),
    ("", "routes[0].auth", |c| format!("{:?}", c.routes[0].auth), "Access"),
    ("", "routes[0].fresh", |c| c.routes[0].fresh.to_string(), "false"),
    (
        "routes:\n  - prefix: /api/\n    upstream: app\n",
        "routes[0].prefix, trailing slashes dropped",
        |c| c.routes[0].prefix.clone(),
        "/api",
    ),
    (
        "routes:\n  - prefix: /api\n    upstream: app\n    require_claims:\n      roles: admin\n      level: 3\n",
        "routes[0].require_claims, in key order",
        |c| format!("{:?}", c.routes[0].require_claims),
        "[(\"level\", Number(3)), (\"roles\", String(\"admin\"))]",
    ),
    ("", "forward.token", |c| c.forward.token.to_string(), "true"),
    ("", "forward_auth", |c| c.forward_auth.is_some().to_string(), "false"),
    (
        "forward_auth:\n  path: /_auth/\n  trusted_proxies: 10.0.0.0/8\n",
        "forward_auth, a trailing slash and one CIDR",
        |c| c.forward_auth.as_ref().map(|f| format!("{} {:?}", f.path, f.trusted_proxies.iter().map(|c| c.to_string()).collect::<Vec<_>>())).unwrap_or_default(),
        "/_auth [\"10.0.0.0/8\"]",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies: [0.0.0.0/0, \"::/0\"]\n",
        "forward_auth.trusted_proxies, everything is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect::<Vec<_>>().join(", "),
        "forward_auth.trusted_proxies[0] Some(3), forward_auth.trusted_proxies[1] Some(3)",
    ),
    (
        "",
        "forward.identity_headers",
        |c| format!("{:?}", c.forward.identity_headers),
        "[(\"jti\", \"x-auth-token-id\"), (\"sub\", \"x-auth-subject\")]",
    ),
    ("", "forward.strip_headers", |c| c.forward.strip_headers.len().to_string(), "1"),
    // An identity header the patterns miss is stripped all the same.
    (
        "forward:\n  identity_headers:\n    sub: X-User\n  strip_headers: [X-Auth-*]\n",
        "forward.strip_headers, identity headers added",
        |c| c.forward.strip_headers.iter().any(|p| p.matches("x-user")).to_string(),
        "true",
    ),
    (
        "jwt:\n  secret: ${MISSING:-0123456789abcdef0123456789abcdef}\n",
        "${VAR:-default} expansion",
        |c| c.jwt.keys.has_family(&jsonwebtoken::Algorithm::HS256).to_string(),
        "true",
    ),
    // The contract's own example has each of these beside a secret for HS256, or a
    // redis:// URL: said, not refused.
    (
        "jwt:\n  algorithms: [HS256, RS256]\n  secret: 0123456789abcdef0123456789abcdef\n  private_key_file: Cargo.toml\n  jwks_url: https://idp.test/jwks\n",
        "an unusable private key beside a secret is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "jwt.private_key_file Some(4)",
    ),
    (
        "jwt:\n  algorithms: [HS256]\n  secret: 0123456789abcdef0123456789abcdef\n  jwks_url: https://idp.test/jwks\n",
        "an HMAC-only jwks provider beside a secret is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "jwt.algorithms Some(2)",
    ),
    (
        "blocklist:\n  store: redis\n  redis_url: redis://cache:6379\n  redis_ca_file: Cargo.toml\n",
        "redis_ca_file with redis:// is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "blocklist.redis_ca_file Some(4)",
    ),
    (
        "jwt:\n  algorithms: [HS256, RS256]\n  secret: 0123456789abcdef0123456789abcdef\n",
        "an algorithm no key verifies beside one that works is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "jwt.algorithms[1] Some(2)",
    ),
    (
        "jwt:\n  secret: 123456\nadmin:\n  token: 1234\n",
        "a secret and a token YAML reads as numbers are their digits",
        |c| format!("{} {}", c.jwt.keys.has_family(&jsonwebtoken::Algorithm::HS256), c.admin.as_ref().map_or("", |a| a.token.as_str())),
        "true 1234",
    ),
    (
        "admin:\n  listen: 127.0.0.1:9901\n",
        "an admin listener without a token (health and metrics only) is a warning",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "admin Some(1)",
    ),
    (
        "forward_auth:\n  path: /_auth\n",
        "forward_auth.trusted_proxies defaults to loopback",
        |c| c.forward_auth.as_ref().map(|f| format!("{:?}", f.trusted_proxies.iter().map(|c| c.to_string()).collect::<Vec<_>>())).unwrap_or_default(),
        "[\"127.0.0.0/8\", \"::1/128\"]",
    ),
    (
        "server:\n  listen: localhost:8080\n",
        "server.listen, localhost",
        |c| c.server.listen.to_string(),
        "127.0.0.1:8080",
    ),
    (
        "admin:\n  token: secret\n",
        "a short admin token is a warning, not an error",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "admin.token Some(2)",
    ),
    (
        "jwt:\n  secret: short\n",
        "a short secret is a warning, not an error",
        |c| c.warnings.iter().map(|w| format!("{} {:?}", w.path, w.line)).collect(),
        "jwt.secret Some(2)",
    ),
];

#[test]
fn defaults_and_normalizations() {
    let mut failures = Vec::new();
    for &(yaml, what, value, expected) in ROWS {
        match load(yaml) {
            Ok(config) if value(&config) == expected => {}
            Ok(config) => failures.push(format!(
                "{what}: {:?}, expected {expected:?}",
                value(&config)
            )),
            Err(errors) => failures.push(format!("{what}: refused: {errors}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
