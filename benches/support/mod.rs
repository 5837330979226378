//! Helpers shared by the blocklist benches (`blocklist.rs`, `redis.rs`).

use portcullis::auth::verify::{TokenType, VerifiedToken};
use portcullis::clock::now_unix;
use std::time::Duration;

/// This process's resident set (VmRSS), in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The `i`th jti, shaped like a UUID, the common jti format (36 bytes).
pub fn jti(i: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        i,
        i % 0xffff,
        i % 0xfff,
        i % 0xfff,
        i * 7919
    )
}

/// A verified access token of `alice` whose revocation key is `key`.
pub fn token(key: String) -> VerifiedToken {
    VerifiedToken {
        claims: Default::default(),
        token_type: TokenType::Access,
        fresh: false,
        csrf: None,
        sub: Some("alice".into()),
        sid: None,
        iat: Some(now_unix()),
        exp: now_unix() + 3600,
        provider: 0,
        revocation_key: key,
        twin_key: None,
        namespaced: None,
        identity: Vec::new(),
        revocation_memo: Default::default(),
    }
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}
